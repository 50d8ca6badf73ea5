"""torch.distributed set-up for ``torchrun``: one process per rank, gloo on CPU, NCCL on CUDA.

Under ``torchrun`` the environment carries ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`init_distributed` starts the process group from them (and does nothing in a plain run). The
trainer then shards each meta-batch over ranks and all-reduces gradients
(:func:`genfield.training.all_reduce_gradients`); only rank 0 writes checkpoints, logs and figures.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed() -> tuple[int, int]:
    """Initialise the process group when launched by torchrun; return ``(rank, world_size)``."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
