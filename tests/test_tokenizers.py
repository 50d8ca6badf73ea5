"""Tokenizers and CT local features read the observations' typed layout; inference from the query
values is only the fallback for observations built without one, and it is wrong on contexts whose
neighbouring projections share an angle (or whose views are not square)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from test_views import toy_signals

from genfield.datasets.batch import Observations, ProjectionLayout, ViewLayout
from genfield.datasets.ct import CTSplit
from genfield.datasets.view_split import ViewSplit
from genfield.errors import InputError
from genfield.forward.ct import ParallelBeamProjection, ct_queries
from genfield.processes.local import BackProjectionFeatures
from genfield.processes.tokenizers import PatchTokenizer, ProjectionTokenizer


def without_layout(obs: Observations) -> Observations:
    return Observations(obs.queries, obs.values)


def repeated_angle_context(d: int = 6) -> Observations:
    """Two signals whose first two projections share an angle (by construction), with the layout."""
    angles = torch.tensor([[0.5, 0.5, 1.3, 2.4], [0.2, 0.2, 0.2, 2.0]])
    values = torch.rand(2, 4 * d, 1, generator=torch.Generator().manual_seed(0))
    return Observations(ct_queries(angles, d), values, ProjectionLayout(4, d))


def test_projection_tokens_from_the_layout_equal_the_inferred_ones_on_a_normal_batch():
    slices = torch.rand(3, 12, 12, 1, generator=torch.Generator().manual_seed(0))
    batch = CTSplit(n_context_angles=5, n_detectors=10, n_samples=4)(list(slices), torch.Generator())
    assert batch.context.layout == ProjectionLayout(5, 10)
    tokenizer = ProjectionTokenizer(n_bins=16, n_frequencies=3)
    tokens = tokenizer(batch.context)
    assert tokens.shape == (3, 5, 6 + 16)
    torch.testing.assert_close(tokens, tokenizer(without_layout(batch.context)), rtol=0, atol=0)
    assert tokenizer.unit_size(batch.target) == 10


def test_projection_tokens_follow_the_layout_where_inference_from_values_is_wrong():
    d = 6
    context = repeated_angle_context(d)
    tokenizer = ProjectionTokenizer(n_bins=d, n_frequencies=2)
    tokens = tokenizer(context)
    # independently: token a = [sin theta_a, sin 2 theta_a, cos theta_a, cos 2 theta_a, profile_a]
    theta = context.queries[:, ::d, 0]  # (S, A)
    k = torch.tensor([1.0, 2.0])
    phase = theta[..., None] * k
    expected = torch.cat([phase.sin(), phase.cos(), context.values.reshape(2, 4, d)], dim=-1)
    torch.testing.assert_close(tokens, expected)
    # inference counts the first run of equal angles: 2 * d bins, half as many tokens
    inferred = tokenizer(without_layout(context))
    assert inferred.shape[1] == 2 and tokens.shape[1] == 4
    # the configured count agrees with the layout-free path (a second, independent route)
    configured = ProjectionTokenizer(n_bins=d, n_frequencies=2, n_detectors=d)(without_layout(context))
    torch.testing.assert_close(tokens, configured)


def test_back_projection_features_follow_the_layout_where_inference_is_wrong():
    torch.manual_seed(0)
    d = 8
    context = repeated_angle_context(d)
    features = BackProjectionFeatures(1, 8, window=1)
    fmap = ParallelBeamProjection(n_samples=8)
    with torch.no_grad():
        grid = features(context, fmap)
        configured = BackProjectionFeatures(1, 8, window=1, n_detectors=d)
        configured.load_state_dict(features.state_dict())
        reference = configured(without_layout(context), fmap)
        inferred = features(without_layout(context), fmap)
    assert grid.shape == (2, 8, d, d)  # grid side = the detector count
    torch.testing.assert_close(grid, reference)
    assert inferred.shape != grid.shape  # inference took 2 d bins per projection


def test_patch_tokens_read_non_square_views_from_the_layout():
    batch = ViewSplit(n_context_views=2, n_samples=8)(
        toy_signals(size=(4, 6)), torch.Generator().manual_seed(0)
    )
    context = batch.context
    assert context.layout == ViewLayout(2, 4, 6)
    tokens = PatchTokenizer(patch_size=2)(context)
    assert tokens.shape == (3, 2 * 2 * 3, 2 * 2 * 9)
    # independently: token (v, i, j) holds the 2 x 2 pixels of patch (i, j) of view v
    rays = torch.cat([context.queries[..., :6], context.values], dim=-1).reshape(3, 2, 4, 6, 9)
    v, i, j = 1, 1, 2
    expected = rays[:, v, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(3, -1)
    torch.testing.assert_close(tokens[:, v * 6 + i * 3 + j], expected)
    with pytest.raises(InputError, match="24 rays per view is not a square image"):
        PatchTokenizer(patch_size=2)(without_layout(context))


def test_a_configured_size_or_a_layout_of_another_kind_that_disagrees_is_refused():
    context = repeated_angle_context(6)
    with pytest.raises(InputError, match=r"n_detectors=5 disagrees with the observations' ProjectionLayout"):
        ProjectionTokenizer(n_detectors=5)(context)
    with pytest.raises(InputError, match="must be whole views"):
        PatchTokenizer(patch_size=2)(context)
    views = ViewSplit(n_context_views=1, n_samples=8)(toy_signals(size=(4, 6)), torch.Generator()).context
    with pytest.raises(InputError, match=r"image_size=\(6, 4\) disagrees"):
        PatchTokenizer(patch_size=2, image_size=(6, 4))(views)
    with pytest.raises(InputError, match="must be whole projections"):
        ProjectionTokenizer()(views)


def test_a_subsampled_ct_context_is_tokenised_as_its_kept_projections():
    """A process's context subsampling keeps whole projections and says so in the kept layout; its
    tokens are the tokens of the kept projections, as that layout (checked here) gives them."""
    from test_processes_parts import ct_process

    torch.manual_seed(0)
    model = ct_process(context_subsample=(2, 3))
    d, a = 8, 6
    angles = torch.rand(2, a, generator=torch.Generator().manual_seed(1)) * math.pi
    context = Observations(ct_queries(angles, d), torch.rand(2, a * d, 1), ProjectionLayout(a, d))
    kept, _ = model.subsample_context(context, context)
    n_kept = kept.num_observations // d
    assert kept.layout == ProjectionLayout(n_kept, d) and n_kept in (2, 3)
    honest = Observations(kept.queries, kept.values, ProjectionLayout(n_kept, d))  # checked
    torch.testing.assert_close(model.tokenizer(kept), model.tokenizer(honest))
    profiles = rearrange(kept.values, "s (a d) c -> (s a) c d", d=d)
    resampled = F.interpolate(profiles, size=model.tokenizer.n_bins, mode="linear", align_corners=False)
    tail = rearrange(resampled, "(s a) c d -> s a (c d)", s=2)
    torch.testing.assert_close(model.tokenizer(honest)[..., -tail.shape[-1] :], tail)
