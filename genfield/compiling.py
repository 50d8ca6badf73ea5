"""``torch.compile`` where it pays: first-order losses of fields, compiled once and reused.

What is compiled is a *loss* (forward map, field, error): Dynamo captures it, AOTAutograd derives
its backward, and Inductor fuses both, so ``loss.backward()`` or ``torch.autograd.grad`` on its
output runs compiled kernels too. Only first-order work is compiled: Inductor's graphs do not
support double backward, so MAML's backpropagation through its inner steps and the implicit
methods' Hessian-vector products stay eager.

Compiling costs seconds to tens of seconds per input shape on a CPU and saves a fraction of every
call (``benchmarks/bench_compile.py``), so it pays only on long runs. ``compile="auto"`` (the
default everywhere) decides by the eager time already spent or about to be spent
(:data:`COMPILE_WORTH_SECONDS`); ``True`` and ``False`` force it. A machine that cannot compile
(no C++ compiler, an unsupported backend) warns once and runs eagerly: compiling is an
optimisation, never a reason for a run to fail.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from genfield.errors import InputError

#: ``compile="auto"`` compiles once eager work would take (a fit) or has taken (a meta-learner's
#: inner loops) longer than this: compiling takes tens of seconds on a CPU.
COMPILE_WORTH_SECONDS = 120.0


def check_compile(compile: Any, owner: str = "fit") -> None:
    """A one-line :class:`InputError` unless ``compile`` is ``True``, ``False`` or ``"auto"``."""
    if not (compile is True or compile is False or compile == "auto"):  # not 1, 0 or "on"
        raise InputError(f"{owner} compile must be true, false or 'auto', got {compile!r}")


def compiled_loss(loss: Callable[..., torch.Tensor], what: str = "fitting") -> Callable[..., torch.Tensor]:
    """``loss`` through ``torch.compile`` (Inductor, static shapes), or ``loss`` itself, with one
    warning naming ``what`` runs without it, where this machine cannot compile."""
    compiled = torch.compile(loss, dynamic=False)
    state = {"eager": False, "probed": False}

    def run(*args: Any) -> torch.Tensor:
        if not state["eager"]:
            try:
                if not state["probed"]:  # Inductor compiles the backward at its first call
                    probe_backward(compiled(*args), args)
                    state["probed"] = True
                return compiled(*args)
            except Exception as error:  # noqa: BLE001 - Inductor raises many types
                state["eager"] = True
                message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                warnings.warn(f"torch.compile failed, {what} without it: {message}", stacklevel=2)
        return loss(*args)

    return run


def probe_backward(out: Any, args: tuple) -> None:
    """Differentiate ``out`` once in the tensors of ``args`` that require grad (a trial call, its
    result dropped), so that a backward the compiler cannot build fails inside
    :func:`compiled_loss`'s fallback rather than in the caller's ``backward``."""
    wrt = [t for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor) and t.requires_grad]
    if isinstance(out, torch.Tensor) and out.requires_grad and wrt:
        torch.autograd.grad(out.sum(), wrt, allow_unused=True)


class CompiledWhenWorth:
    """Losses run eagerly or compiled, as ``compile`` (``True``, ``False`` or ``"auto"``) decides.

    ``compiled(loss, *args)`` calls ``loss(*args)``, through its own ``torch.compile`` once the
    decision is made (one compilation per loss function, reused). With ``"auto"`` the callers time
    their loops over the losses (:meth:`timing`); once those loops have taken
    :data:`COMPILE_WORTH_SECONDS` in total, every later call is compiled. A meta-learner's inner
    loops are the loops: a training run long enough to pay for the compilation compiles, a test or
    a demo never does. The timing reads the host clock only (no device synchronisation).
    """

    def __init__(self, compile: bool | str, what: str) -> None:
        check_compile(compile, what)
        self.mode, self.what = compile, what
        self.eager_seconds = 0.0
        self.is_compiled = compile is True
        self._compiled: dict[Callable[..., Any], Callable[..., Any]] = {}

    def __call__(self, loss: Callable[..., Any], *args: Any) -> Any:
        if not self.is_compiled:
            return loss(*args)
        if loss not in self._compiled:
            self._compiled[loss] = compiled_loss(loss, self.what)
        return self._compiled[loss](*args)

    @contextmanager
    def timing(self) -> Iterator[None]:
        """Count the wall time of the enclosed eager loop towards ``"auto"``'s decision."""
        if self.mode != "auto" or self.is_compiled:
            yield
            return
        began = time.perf_counter()
        yield
        self.eager_seconds += time.perf_counter() - began
        self.is_compiled = self.eager_seconds > COMPILE_WORTH_SECONDS
