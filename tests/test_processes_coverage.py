"""Predictive intervals of the neural processes on held-out signals, before and after test-time
optimisation (TTO): TTO fits the context, and must not make the intervals overconfident off it."""

from __future__ import annotations

import pytest
import torch

from genfield.builders import build_data
from genfield.comparison import load_group
from genfield.datasets.sampling import StepBatches
from genfield.evaluation import dense_queries
from genfield.fields.field import field_config
from genfield.metrics import interval_coverage
from genfield.processes import build_process


def coverage(mean: torch.Tensor, std: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over signals of the masked values' fraction inside the central 90 % Gaussian interval."""
    return float(interval_coverage(mean, std, truth, 0.9, mask[..., None]).mean())


@pytest.fixture(scope="module")
def trained():
    """A small PONP (decoder TTO, as the method config) trained briefly on 16 px faces, 10 % context."""
    data = load_group("data", "faces", {"size": 16, "eval_signals": 8})
    bundle = build_data(data, seed=0)
    fc = field_config("siren", in_dim=2, head="grey", hidden=32, n_layers=2, omega0=10.0)
    torch.manual_seed(0)
    model = build_process(
        "ponp", fc, "image", width=32, heads=2, latent_dim=0, tto_params="decoder", tto_lr=3e-3
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    batches = StepBatches(bundle.train, bundle.train_split, bundle.batch_size, 0)
    for step in range(150):
        optimizer.zero_grad(set_to_none=True)
        model.compute_gradients(batches[step])
        optimizer.step()
    model.eval()
    test = bundle.eval_batch("test", seed=0)
    queries, query_map = dense_queries(test)
    unobserved = torch.cdist(queries, test.context.queries).min(-1).values > 1e-6
    return model, test, queries, query_map, unobserved


def test_tto_keeps_held_out_coverage(trained):
    """Coverage of the unobserved pixels after 20 TTO steps is not below the one pass's by more than
    0.05 (the forward pass's std is kept), while the refined decoder's own std (``adapted``, the old
    behaviour) covers clearly less: the check separates the two."""
    model, test, queries, query_map, unobserved = trained
    truth = test.ground_truth.flatten(1, 2)

    def cover(steps: int, scale: str) -> tuple[float, torch.Tensor]:
        model.config.tto_scale = scale
        torch.manual_seed(0)
        p = model.reconstruct(test.context, test.forward_map, queries, query_map, steps=steps)
        return coverage(p.mean, p.std, truth, unobserved), p.mean

    one_pass, mean0 = cover(0, "nuisance")
    kept, mean_kept = cover(20, "nuisance")
    adapted, mean_adapted = cover(20, "adapted")
    model.config.tto_scale = "nuisance"
    assert 0.5 < one_pass < 1.0
    assert kept >= one_pass - 0.05, (one_pass, kept)
    assert adapted < kept - 0.05, (adapted, kept)
    torch.testing.assert_close(mean_kept, mean_adapted)  # nuisance: the mean's path is unchanged
    assert not torch.allclose(mean_kept, mean0)  # TTO did move the mean


@pytest.mark.parametrize("scale", ["nuisance", "frozen"])
def test_tto_prediction_std_is_the_forward_pass(trained, scale):
    """With the scale kept, the predicted variance after TTO is the one pass's, exactly (one draw)."""
    model, test, queries, query_map, _ = trained
    model.config.tto_scale = scale
    before = model.reconstruct(test.context, test.forward_map, queries, query_map, steps=0)
    after = model.reconstruct(test.context, test.forward_map, queries, query_map, steps=5)
    model.config.tto_scale = "nuisance"
    torch.testing.assert_close(after.variance, before.variance)
    assert (after.mean - before.mean).abs().max() > 1e-4
