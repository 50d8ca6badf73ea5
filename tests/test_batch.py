"""SignalBatch's typed contract: observation layouts checked against their queries, kept by moves and
selections, set by the splits and readers; the distributed shard as a typed field."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from test_views import toy_signals

from genfield.datasets.batch import Observations, ProjectionLayout, SignalBatch, ViewLayout
from genfield.datasets.ct import CTSplit
from genfield.datasets.view_split import ViewSplit
from genfield.errors import InputError
from genfield.forward import PointMap
from genfield.forward.ct import ct_queries
from genfield.training import shard


def sinogram_observations(angles: torch.Tensor, d: int, layout=None) -> Observations:
    """CT observations of ``angles`` ``(S, A)`` with ``d`` bins (values: the observation index)."""
    queries = ct_queries(angles, d)
    values = torch.arange(queries.shape[1], dtype=torch.float32).expand(len(angles), -1)[..., None]
    return Observations(queries, values.clone(), layout)


def one_line_error(call) -> str:
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_layout_that_disagrees_with_its_queries_is_refused_in_one_line():
    angles = torch.tensor([[0.1, 0.9, 1.7, 2.5]])
    right = sinogram_observations(angles, 8, ProjectionLayout(4, 8))
    assert right.layout == ProjectionLayout(4, 8)
    # a count that does not match the observations
    message = one_line_error(lambda: sinogram_observations(angles, 8, ProjectionLayout(4, 6)))
    assert "describes 24 observations per signal, the queries hold 32" in message
    # the right count, but units that straddle two projections
    message = one_line_error(lambda: sinogram_observations(angles, 8, ProjectionLayout(2, 16)))
    assert "do not share its angle" in message
    # the right count and constant angles, but half projections (the bins differ from unit to unit)
    message = one_line_error(lambda: sinogram_observations(angles, 8, ProjectionLayout(8, 4)))
    assert "do not share their detector bins" in message
    message = one_line_error(lambda: sinogram_observations(angles, 8, ProjectionLayout(0, 8)))
    assert "positive integer counts" in message
    # views: rays of two cameras in one unit
    batch = ViewSplit(n_context_views=2, rays_per_signal=7, n_samples=8)(toy_signals(), torch.Generator())
    context = batch.context
    assert context.layout == ViewLayout(2, 4, 5)
    message = one_line_error(lambda: Observations(context.queries, context.values, ViewLayout(1, 8, 5)))
    assert "do not share its origin" in message


def test_moves_and_signal_selections_keep_the_layout_and_rebuilt_rows_lose_it():
    angles = torch.rand(3, 5, generator=torch.Generator().manual_seed(0)) * math.pi
    obs = sinogram_observations(angles, 6, ProjectionLayout(5, 6))
    assert obs.to("cpu").layout == obs.layout and obs.select(slice(1, 3)).layout == obs.layout
    assert obs.select(torch.tensor([2, 0])).layout == obs.layout
    batch = SignalBatch("ct", None, obs, obs)
    assert batch.select(slice(0, 1)).context.layout == obs.layout
    assert batch.to("cpu").target.layout == obs.layout
    # the first three projections, rebuilt from rows: no layout unless the new one is given
    rows = Observations(obs.queries[:, :18], obs.values[:, :18])
    assert rows.layout is None
    assert Observations(obs.queries[:, :18], obs.values[:, :18], ProjectionLayout(3, 6)).layout is not None


def test_the_ct_split_and_the_sinogram_reader_set_the_projection_layout(tmp_path):
    from types import SimpleNamespace

    from genfield.kinds import get_kind

    slices = torch.rand(2, 10, 10, 1, generator=torch.Generator().manual_seed(1))
    split = CTSplit(n_context_angles=3, n_detectors=7, n_target_angles=5, n_samples=4)
    batch = split(list(slices), torch.Generator().manual_seed(2))
    assert batch.context.layout == ProjectionLayout(3, 7)
    assert batch.target.layout == ProjectionLayout(5, 7)
    assert CTSplit(n_context_angles=2)(list(slices)).target.layout == ProjectionLayout(10, 10)
    # reconstruct's reader of a measured sinogram: one projection per row
    np.save(tmp_path / "sino.npy", np.random.default_rng(0).random((4, 9)) * 0.5)
    run = SimpleNamespace(data={"name": "ct_phantoms", "resolution": 12})
    options = {"angles": "even:4", "angle_unit": None}
    read = get_kind("ct").read_input(tmp_path / "sino.npy", "sinogram", run, options)
    assert read.context.layout == ProjectionLayout(4, 9)
    torch.testing.assert_close(
        read.context.queries[0, ::9, 0], torch.arange(4, dtype=torch.float32) * math.pi / 4
    )


def test_the_view_split_sets_a_layout_only_where_every_ray_of_the_views_is_kept():
    signals = toy_signals(size=(4, 5))
    whole = ViewSplit(n_context_views=2, n_target_views=3, rays_per_signal=None, n_samples=8)
    batch = whole(signals, torch.Generator().manual_seed(0))
    assert batch.context.layout == ViewLayout(2, 4, 5) and batch.target.layout == ViewLayout(3, 4, 5)
    sampled = ViewSplit(n_context_views=2, n_target_views=1, rays_per_signal=19, context_rays=39)
    batch = sampled(signals, torch.Generator().manual_seed(0))
    assert batch.context.layout is None and batch.target.layout is None  # random rays: no whole views
    enough = ViewSplit(n_context_views=1, n_target_views=1, rays_per_signal=20, context_rays=25)
    batch = enough(signals, torch.Generator().manual_seed(0))
    assert batch.context.layout == ViewLayout(1, 4, 5) and batch.target.layout == ViewLayout(1, 4, 5)


def point_batch(n_signals: int) -> SignalBatch:
    obs = Observations(torch.rand(n_signals, 5, 2), torch.rand(n_signals, 5, 1))
    return SignalBatch("image", PointMap(), obs, obs, [{"name": f"s{i}"} for i in range(n_signals)])


def test_the_shard_is_a_typed_field_that_selections_keep_where_it_has_a_meaning():
    batch = point_batch(6)
    assert batch.shard is None and batch.select(slice(2, 4)).shard is None
    parts = [shard(batch, rank, 3) for rank in range(3)]
    assert [p.shard for p in parts] == [(0, 6), (2, 6), (4, 6)]
    assert all("shard" not in p.extras for p in parts)
    assert parts[2].select(slice(1, 2)).shard == (5, 6)  # a contiguous part of a shard: still placed
    assert parts[2].select(torch.tensor([1, 0])).shard is None  # no place in the global order
    assert parts[1].to("cpu").shard == (2, 6)
    message = one_line_error(
        lambda: SignalBatch("image", PointMap(), batch.context, batch.target, shard=(5, 6))
    )
    assert "(5, 6) does not hold its 6 signals" in message
    assert "(offset, total)" in one_line_error(
        lambda: SignalBatch("image", PointMap(), batch.context, batch.target, shard=3)
    )


def test_a_shard_written_to_extras_still_works_for_one_release():
    batch = point_batch(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = SignalBatch("image", PointMap(), batch.context, batch.target, extras={"shard": (4, 8), "k": 1})
    assert any(issubclass(w.category, DeprecationWarning) and "shard" in str(w.message) for w in caught)
    assert old.shard == (4, 8) and old.extras == {"k": 1}
