"""Deterministic dataset splits and meta-batch iteration, for datasets of every kind.

Everything random here is a pure function of a seed: :func:`split_indices` of ``(n, fractions,
seed)``, and the batch that :func:`iterate_batches` yields at step ``k`` of ``(seed, k)`` alone.
So a resumed run (``start_step=k``) sees exactly the batches an uninterrupted run sees from step
``k`` on, and batches can be built in DataLoader workers in any order without changing them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from genfield.datasets.batch import SignalBatch
from genfield.errors import InputError

SplitFn = Callable[[list[Any], torch.Generator], SignalBatch]

_EPOCH_STREAM, _SPLIT_STREAM = 0, 1


def derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (NumPy's SeedSequence hashing: nearby keys give
    unrelated streams)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from :func:`derive_seed` of the keys."""
    return torch.Generator().manual_seed(derive_seed(*keys))


def split_indices(
    n: int,
    fractions: Sequence[float] | Mapping[str, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    names: Sequence[str] = ("train", "val", "test"),
) -> dict[str, torch.Tensor]:
    """Split ``range(n)`` at random into named, disjoint parts, deterministically from ``seed``.

    Part ``j`` receives the positions ``[round(n F_{j-1}), round(n F_j))`` of one random
    permutation, ``F_j`` being the cumulative fraction: sizes are within one of ``n * fraction``.
    Fractions summing to less than 1 leave the rest out. Each part is returned sorted (file order,
    friendly to disk reads); shuffling is the iterator's job.

    Args:
        n: number of items.
        fractions: one fraction per part, or a mapping ``name -> fraction`` (``names`` unused).
        seed: the permutation's seed.
        names: the part names when ``fractions`` is a sequence.
    """
    if isinstance(fractions, Mapping):
        names, fractions = list(fractions.keys()), list(fractions.values())
    if len(names) != len(fractions):
        raise InputError(
            f"split names {list(names)} and fractions {list(fractions)} differ in length"
        )
    if any(f < 0 for f in fractions) or sum(fractions) > 1 + 1e-6:
        raise InputError(f"split fractions must be non-negative and sum to at most 1: {fractions}")
    if n < 0:
        raise InputError(f"cannot split a negative number of items ({n})")
    perm = torch.randperm(n, generator=seeded_generator(seed))
    bounds = [0, *(min(n, round(n * c)) for c in itertools.accumulate(fractions))]
    return {
        name: perm[lo:hi].sort().values
        for name, lo, hi in zip(names, bounds[:-1], bounds[1:], strict=True)
    }


class StepBatches:
    """The meta-batch of every training step, as a map-style dataset indexed by step number.

    Step ``k`` falls in epoch ``k // steps_per_epoch``; each epoch visits ``indices`` in a
    permutation drawn from ``(seed, epoch)``, and the split callable draws its context/target
    subsets from a generator seeded by ``(seed, k)``.
    """

    def __init__(
        self,
        dataset: Any,
        split_fn: SplitFn,
        batch_size: int,
        seed: int,
        indices: torch.Tensor | Sequence[int] | None = None,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        if indices is None:
            self.indices = torch.arange(len(dataset))
        else:
            self.indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        count = len(self.indices)
        if count == 0:
            raise InputError("cannot iterate over an empty split (no indices)")
        if drop_last and count < batch_size:
            raise InputError(
                f"batch_size {batch_size} exceeds the {count} signals of the split (drop_last=True)"
            )
        self.dataset, self.split_fn = dataset, split_fn
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.steps_per_epoch = count // batch_size if drop_last else math.ceil(count / batch_size)
        self._cached: tuple[int, torch.Tensor] | None = None

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The dataset indices in the order epoch ``epoch`` visits them."""
        if not self.shuffle:
            return self.indices
        if self._cached is None or self._cached[0] != epoch:  # one permutation per epoch, not step
            gen = seeded_generator(self.seed, _EPOCH_STREAM, epoch)
            self._cached = (epoch, self.indices[torch.randperm(len(self.indices), generator=gen)])
        return self._cached[1]

    def batch_indices(self, step: int) -> torch.Tensor:
        """Dataset indices of the signals of step ``step``."""
        epoch, position = divmod(step, self.steps_per_epoch)
        lo = position * self.batch_size
        return self.epoch_order(epoch)[lo : lo + self.batch_size]

    def __getitem__(self, step: int) -> SignalBatch:
        signals = [self.dataset[i] for i in self.batch_indices(step).tolist()]
        return self.split_fn(signals, seeded_generator(self.seed, _SPLIT_STREAM, step))


def _as_is(batch: SignalBatch) -> SignalBatch:
    return batch


def iterate_batches(
    dataset: Any,
    split_fn: SplitFn,
    batch_size: int,
    seed: int = 0,
    indices: torch.Tensor | Sequence[int] | None = None,
    shuffle: bool = True,
    drop_last: bool = True,
    start_step: int = 0,
    epochs: int | None = None,
    num_workers: int = 0,
) -> Iterator[SignalBatch]:
    """Yield the meta-batches of steps ``start_step, start_step + 1, ...``.

    The batch of step ``k`` is a pure function of ``(seed, k)`` (see :class:`StepBatches`), so
    resuming at ``start_step=k`` continues exactly where an uninterrupted run would be. The iterator
    is infinite when ``epochs`` is ``None``, and otherwise stops after ``epochs`` passes over
    ``indices`` (counted from step 0, so a resumed run stops at the same step).

    Args:
        dataset: any object with ``__len__`` and ``__getitem__`` (images, CT, shapes, scenes).
        split_fn: ``split_fn(signals, generator) -> SignalBatch`` (e.g.
            :class:`~genfield.datasets.images.ImageSplit`).
        batch_size: signals per meta-batch.
        seed: the seed of the epoch permutations and of the context/target draws.
        indices: the dataset indices to draw from (a split); ``None`` means all.
        shuffle: visit each epoch in a fresh random order; otherwise in ``indices`` order.
        drop_last: drop the incomplete last batch of an epoch (every batch then has ``batch_size``).
        start_step: the first step to yield.
        epochs: number of epochs, or ``None`` for an endless stream.
        num_workers: build batches in this many DataLoader worker processes (0: in this process).
            The batches and their order do not depend on it.
    """
    steps = StepBatches(dataset, split_fn, batch_size, seed, indices, shuffle, drop_last)
    if start_step < 0:
        raise InputError(f"start_step must be non-negative, got {start_step}")
    if epochs is None:
        step_numbers: Iterator[int] | range = itertools.count(start_step)
    else:
        step_numbers = range(start_step, epochs * steps.steps_per_epoch)
    if num_workers <= 0:
        return (steps[k] for k in step_numbers)
    loader = DataLoader(
        steps, batch_size=None, sampler=step_numbers, num_workers=num_workers, collate_fn=_as_is
    )
    return iter(loader)
