"""Measure the peak memory and time of a piece of work, on CUDA and on the CPU.

On CUDA the peak is ``torch.cuda.max_memory_allocated`` (everything the caching allocator handed
out). The CPU has no such counter, so there the peak is the live maximum of the bytes autograd saves
for backward (a ``saved_tensors_hooks`` account): the activation memory that grows with inner steps,
batch size and context size, which is what the memory comparisons in genfield are about. Work that
saves nothing for backward (pure inference under ``no_grad``) reads zero on the CPU.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch


class SavedTensorAccount:
    """Live and peak bytes of the tensors autograd holds for backward."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def _pack(self, tensor: torch.Tensor):
        account, size = self, tensor.numel() * tensor.element_size()

        class Held:
            def __init__(self) -> None:
                self.tensor = tensor
                account.live += size
                account.peak = max(account.peak, account.live)

            def __del__(self) -> None:
                account.live -= size

        return Held()

    @contextmanager
    def hooks(self):
        hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda held: held.tensor)
        with hooks:
            _ACTIVE_HOOKS.append(hooks)
            try:
                yield self
            finally:
                _ACTIVE_HOOKS.pop()


#: The saved-tensor hooks of the accounts now open, innermost last.
_ACTIVE_HOOKS: list[torch.autograd.graph.saved_tensors_hooks] = []


@contextmanager
def accounts_suspended():
    """Lift the open accounts' saved-tensor hooks for a block, then put them back.

    ``torch.func`` transforms (``vmap``, ``jacrev``) refuse to run under saved-tensor hooks, so work
    that uses them inside :func:`measure` (iBaML's linearized-Laplace Jacobians) runs unaccounted:
    those Jacobians are not saved for backward anyway, so the CPU peak loses nothing it counts."""
    suspended = list(_ACTIVE_HOOKS)
    for hooks in reversed(suspended):
        hooks.__exit__(None, None, None)
    try:
        yield
    finally:
        for hooks in suspended:
            hooks.__enter__()


@dataclass
class Measurement:
    peak_bytes: float = 0.0
    seconds: float = 0.0
    method: str = ""

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20


@contextmanager
def measure(device: torch.device | str = "cpu"):
    """``with measure(device) as m: work()`` fills ``m.peak_bytes``, ``m.seconds`` and ``m.method``."""
    cuda = torch.device(device).type == "cuda"
    result = Measurement(
        method="torch.cuda.max_memory_allocated" if cuda else "peak bytes saved for backward"
    )
    account = SavedTensorAccount()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    with account.hooks():
        yield result
    if cuda:
        torch.cuda.synchronize()
        result.peak_bytes = float(torch.cuda.max_memory_allocated())
    else:
        result.peak_bytes = float(account.peak)
    result.seconds = time.perf_counter() - began
