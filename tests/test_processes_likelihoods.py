"""The neural processes' likelihood parts against torch.distributions, and the measurement channels
each kind's forward map gives the process."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Bernoulli, Normal

from genfield.datasets.batch import Observations
from genfield.fields.field import field_config
from genfield.forward import PointMap
from genfield.forward.ct import ParallelBeamProjection, ct_queries
from genfield.forward.volume import VolumeRenderer
from genfield.processes import build_process
from genfield.processes.likelihoods import BernoulliLikelihood, GaussianLikelihood, build_likelihood

G = torch.Generator().manual_seed(0)


def test_gaussian_log_prob_and_moments():
    mean, y = torch.randn(2, 4, 6, 3, generator=G, dtype=torch.float64)
    std = 0.1 + torch.rand(4, 6, 3, generator=G, dtype=torch.float64)
    likelihood = GaussianLikelihood(3, min_std=0.01)
    expected = Normal(mean, std).log_prob(y).sum(-1)
    torch.testing.assert_close(likelihood.log_prob(mean, std, y), expected)
    # the moments of the equal mixture of K = 2 Gaussians: E[y] and E[y^2] - E[y]^2
    means, stds = torch.stack([mean, y]), torch.stack([std, 2 * std])
    prediction = likelihood.moments(means, stds)
    second = (means.square() + stds.square()).mean(0)
    torch.testing.assert_close(prediction.mean, means.mean(0))
    torch.testing.assert_close(prediction.variance, second - means.mean(0).square())


def test_bernoulli_log_prob_for_hard_and_soft_labels_and_moments():
    logit = 3 * torch.randn(5, 2, generator=G, dtype=torch.float64)
    hard = (torch.rand(5, 2, generator=G) > 0.5).to(torch.float64)
    likelihood = BernoulliLikelihood(2, min_std=0.01)
    torch.testing.assert_close(
        likelihood.log_prob(logit, None, hard), Bernoulli(logits=logit).log_prob(hard).sum(-1)
    )
    soft = torch.rand(5, 2, generator=G, dtype=torch.float64)
    p = torch.sigmoid(logit)
    expected = (soft * p.log() + (1 - soft) * (1 - p).log()).sum(-1)
    torch.testing.assert_close(likelihood.log_prob(logit, None, soft), expected)
    # K = 3 draws of logits: the mixture of Bernoullis is a Bernoulli with the mean probability
    logits = torch.randn(3, 2, 7, 1, generator=G, dtype=torch.float64)
    prediction = likelihood.moments(logits, None)
    probability = torch.sigmoid(logits).mean(0)
    torch.testing.assert_close(prediction.mean, probability)
    torch.testing.assert_close(prediction.variance, Bernoulli(probs=probability).variance)


@pytest.mark.parametrize(
    "head,expected", [("occupancy", "bernoulli"), ("sdf", "gaussian"), ("grey", "gaussian")]
)
def test_auto_likelihood_is_bernoulli_for_occupancy_only(head, expected):
    assert build_likelihood("auto", head, 1, 0.01).name == expected
    assert build_likelihood("gaussian", "occupancy", 1, 0.01).name == "gaussian"  # an explicit choice wins


def _volume_rays(n: int) -> torch.Tensor:
    origins = torch.tensor([0.0, 0.0, 2.5]).expand(1, n, 3)
    directions = torch.nn.functional.normalize(
        torch.randn(1, n, 3, generator=G) * 0.2 + torch.tensor([0, 0, -1.0]), dim=-1
    )
    return torch.cat([origins, directions, torch.full((1, n, 1), 1.0), torch.full((1, n, 1), 4.0)], -1)


@pytest.mark.parametrize(
    "kind,head,in_dim,fmap,queries",
    [
        ("image", "rgb", 2, PointMap(), torch.rand(1, 5, 2) * 2 - 1),
        ("ct", "attenuation", 2, ParallelBeamProjection(n_samples=8), ct_queries(torch.rand(1, 2), 4)),
        ("shape", "occupancy", 3, PointMap(), torch.rand(1, 5, 3) * 2 - 1),
        (
            "views",
            "radiance",
            3,
            VolumeRenderer(n_samples=8, stratified=False),
            _volume_rays(4),
        ),  # one 2 x 2 view
    ],
)
def test_the_process_observes_as_many_channels_as_the_kinds_forward_map_returns(
    kind, head, in_dim, fmap, queries
):
    """The measurement channels come from the kind's forward map: (density, rgb) renders to 3."""
    fc = field_config("siren", in_dim=in_dim, head=head, hidden=8, n_layers=1)
    model = build_process(
        "cnp", fc, kind, width=8, depth=1, tokenizer_options={"patch_size": 1} if kind == "views" else {}
    )
    context = Observations(queries, torch.rand(*queries.shape[:2], 3 if head in ("rgb", "radiance") else 1))
    cond = model.condition(context, None, forward_map=fmap)
    mean, std = model.predict_observations(cond, queries, fmap, 1)
    rendered = fmap(lambda x: model.field_fn(cond)(x)[..., : model.signal_channels], queries)
    assert model.obs_channels == mean.shape[-1] == rendered.shape[-1]
    scale_channels = 0 if head == "occupancy" else rendered.shape[-1]
    assert model.decoder.out_channels == model.signal_channels + scale_channels
    assert (std is None) == (head == "occupancy")
