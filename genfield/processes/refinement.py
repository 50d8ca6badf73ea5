"""Test-time refinement (test-time optimisation, TTO) of a neural process's conditioning.

After the forward pass, Adam refines, for each of the ``B = K * S`` draws, either the latent code
(``"latent"``: the global code ``[r, z]``, or the per-draw decoder weights of a weight-token
conditioner when there is no code) or a per-draw copy of the whole decoder (``"decoder"``), on the
negative log-likelihood of the context measurements only. What is not refined is detached.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from einops import repeat

from genfield.processes.conditioners import Conditioning


def refine(
    cond: Conditioning,
    context_nll: Callable[[Conditioning], torch.Tensor],
    param_ndim: Mapping[str, int],
    draws: int,
    *,
    target: str,
    steps: int,
    lr: float,
) -> Conditioning:
    """``steps`` Adam steps of ``context_nll`` (a scalar, summed over draws) from ``cond``.

    Args:
        param_ndim: each decoder parameter's own dimension; entries of ``cond.params`` with one
            more are per draw already.
        draws: ``B``, the leading dimension of the per-draw entries.
        target: ``"latent"`` or ``"decoder"`` (see the module docstring).
    """
    if steps <= 0:
        return cond
    params = {n: v.detach() for n, v in cond.params.items()}
    code = None if cond.code is None else cond.code.detach()
    tokens = None if cond.tokens is None else cond.tokens.detach()
    per_draw = {n for n, v in params.items() if v.dim() > param_ndim[n]}
    if target == "latent" and code is not None:
        code = code.clone().requires_grad_(True)
        variables = [code]
    elif target == "latent" and per_draw:
        variables = [params[n].requires_grad_(True) for n in params if n in per_draw]
    else:
        params = {
            n: (v if n in per_draw else repeat(v, "... -> b ...", b=draws)).clone().requires_grad_(True)
            for n, v in params.items()
        }
        variables = list(params.values())
    local = None if cond.local is None else cond.local.detach()
    refined = Conditioning(params, code, tokens, local)
    optimizer = torch.optim.Adam(variables, lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = context_nll(refined)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return Conditioning(
        {n: v.detach() for n, v in params.items()},
        None if code is None else code.detach(),
        tokens,
        local,
    )
