"""torch.distributed set-up for ``torchrun``: one process per rank, gloo on CPU, NCCL on CUDA.

Under ``torchrun`` the environment carries ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT``; in a multi-task SLURM job started by Hydra's submitit launcher they are
exported from SLURM's variables by submitit's ``TorchDistributedEnvironment``.
:func:`init_distributed` starts the process group from them and does nothing in a plain run. The
trainer (:func:`genfield.training.train`) then works data-parallel, as DistributedDataParallel
does:

* every rank builds the *same* global meta-batch of step ``k`` from ``(seed, k)`` and adapts its
  contiguous share of the signals (:func:`genfield.training.shard`) -- the same split of one global
  order that ``DistributedSampler`` makes, so an ``N``-process run sees exactly the signals of a
  one-process run, and a run may resume on a different number of processes;
* the gradients of every rank are averaged with one flattened all-reduce
  (:func:`genfield.training.all_reduce_gradients`), which equals the full-batch gradient because
  every method's training loss is a mean over signals;
* only rank 0 (:func:`is_main_process`) writes checkpoints, logs, figures and runs validation;
  the other ranks wait for it in the next collective, so the process-group ``timeout`` must exceed
  the longest validation (``GENFIELD_DIST_TIMEOUT_MIN``, 30 minutes by default).

Neural processes go through the same all-reduce as meta-learners rather than
``DistributedDataParallel``: the math is identical (DDP also averages the ranks' gradients and
starts every rank from rank 0's weights, see :func:`broadcast_module`), there is one code path for
every :class:`~genfield.interface.Reconstructor`, and DDP could not serve the meta-learners anyway
-- its hooks see ``forward()`` and ``backward()``, while meta-gradients come from
``torch.autograd.grad`` and implicit solves written into ``.grad``. What DDP would add is overlap of
communication with the backward pass, which matters for large models, not for fields of a few
hundred thousand parameters (one bucket per step here).

Monte-Carlo noise (iBaML's reparameterisation, a latent NP's draws) follows a one-process run
exactly: every rank draws the noise of the *whole* global meta-batch from its generator (the ranks'
generators stay in step because they draw the same amounts) and keeps the rows of its own signals
(:func:`randn_for_shard`, told where they sit by the batch's
:attr:`~genfield.datasets.batch.SignalBatch.shard`, which the method passes down explicitly).
"""

from __future__ import annotations

import atexit
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from genfield.errors import InputError

#: Environment variable that sets the collective timeout in minutes.
TIMEOUT_ENV = "GENFIELD_DIST_TIMEOUT_MIN"


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Initialise the process group when launched by torchrun; return ``(rank, world_size)``.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; ``None`` picks NCCL when CUDA is available, else gloo.
            With NCCL, each process uses the GPU of its ``LOCAL_RANK``.
    """
    _export_submitit_environment()
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_rank() % torch.cuda.device_count())
        minutes = float(os.environ.get(TIMEOUT_ENV, "30"))
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=minutes))
        atexit.register(shutdown_distributed)
    return dist.get_rank(), dist.get_world_size()


def _export_submitit_environment() -> None:
    """Inside a multi-task SLURM job started by submitit (the Hydra launcher in
    ``configs/hydra/launcher/slurm.yaml``), set torchrun's variables from SLURM's."""
    if "RANK" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def shutdown_distributed() -> None:
    """Destroy the process group if one is running (registered at exit by :func:`init_distributed`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the running process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_rank() -> int:
    """This process's index on its node (torchrun's ``LOCAL_RANK``; 0 in a plain run)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Whether this process is rank 0 (always true without a process group)."""
    return world()[0] == 0


def broadcast_module(module: torch.nn.Module, world_size: int) -> None:
    """Copy rank 0's parameters and buffers to every rank (what DDP does when it wraps a model).

    Ranks seed alike and a resumed run loads the same checkpoint, so this usually changes nothing;
    it guarantees that the ranks start identical, after which identical averaged gradients keep
    them so.
    """
    if world_size == 1:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def check_same_on_ranks(value: int, what: str, world_size: int) -> None:
    """Raise :class:`~genfield.errors.InputError` on every rank unless all ranks hold ``value``.

    Used for the step a run resumes from: a rank that cannot see rank 0's checkpoint (an output
    folder that is not on a file system shared by the nodes) would otherwise wait forever in a
    collective that the other ranks never reach.
    """
    if world_size == 1:
        return
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    low = torch.tensor([value], dtype=torch.int64, device=device)
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if int(low) != int(high):
        raise InputError(
            f"ranks disagree on {what} ({int(low)} to {int(high)}): is the run folder on a file "
            "system that every node shares?"
        )


def randn_for_shard(
    draws: int,
    num_signals: int,
    shape: tuple[int, ...],
    shard: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Standard normals ``(draws, num_signals, *shape)`` for the signals of one shard.

    ``shard = (offset, total)`` (:attr:`SignalBatch.shard`, set by :func:`genfield.training.shard`)
    says where this rank's signals sit in the global meta-batch: the noise is drawn for all ``total``
    signals and this rank keeps its rows, so every signal gets the draw it would get in one process
    (the ranks' random states stay in step because every rank draws the same amount).
    """
    offset, total = shard or (0, num_signals)
    noise = torch.randn((draws, total, *shape), generator=generator, dtype=dtype, device=device)
    return noise[:, offset : offset + num_signals]
