"""Post-hoc std calibration (genfield.calibration) and the neural processes' stored factor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from genfield.calibration import calibrate, coverage, std_scale, truth_and_mask
from genfield.datasets.images import ImageSignal, ImageSplit
from genfield.errors import InputError
from genfield.fields import build_field
from genfield.fields.field import field_config
from genfield.fitting import RandomInitFit
from genfield.interface import Prediction
from genfield.processes import build_process


def image_batch(images: torch.Tensor, fraction: float, seed: int = 0):
    signals = [ImageSignal(image, f"img{i}", tuple(image.shape[:2])) for i, image in enumerate(images)]
    return ImageSplit(context_fraction=fraction)(signals, torch.Generator().manual_seed(seed))


def _overconfident(batch, true_std: float, seed: int) -> Prediction:
    """A prediction whose errors on the counted pixels have std ``true_std`` and report std 1."""
    truth, _ = truth_and_mask(batch)
    noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(seed))
    return Prediction(mean=truth - true_std * noise, variance=torch.ones_like(truth))


def test_std_scale_is_the_quantile_of_the_standardised_errors_over_the_unobserved_pixels():
    torch.manual_seed(0)
    batch = image_batch(torch.rand(3, 12, 12, 1), 0.2)
    prediction = Prediction(mean=torch.rand(3, 144, 1), variance=torch.rand(3, 144, 1) + 0.1)
    truth, mask = truth_and_mask(batch)
    ratio = ((truth - prediction.mean).abs() / prediction.std).numpy()
    reference = np.quantile(ratio[mask.expand_as(truth).numpy()], 0.8) / norm.ppf(0.9)
    assert std_scale(prediction, batch, level=0.8) == pytest.approx(reference, rel=1e-6)
    # the context pixels do not count: a huge error there leaves the factor alone
    spoiled = prediction.mean.clone()
    spoiled[~mask.expand_as(truth)] += 100.0
    again = std_scale(Prediction(mean=spoiled, variance=prediction.variance), batch, level=0.8)
    assert again == pytest.approx(reference, rel=1e-6)


def test_an_overconfident_std_is_scaled_to_cover_held_out_draws():
    torch.manual_seed(0)
    validation, test = (image_batch(torch.rand(8, 32, 32, 1), 0.1, seed) for seed in (0, 1))
    factor = std_scale(_overconfident(validation, 2.5, seed=0), validation)
    assert factor == pytest.approx(2.5, rel=0.05)
    held_out = _overconfident(test, 2.5, seed=1)
    assert coverage(held_out, test).mean() < 0.6  # as reported: far below 0.9
    fixed = Prediction(mean=held_out.mean, variance=held_out.variance * factor**2)
    assert coverage(fixed, test).mean() == pytest.approx(0.9, abs=0.02)
    with pytest.raises(InputError, match="with a variance"):
        std_scale(Prediction(mean=held_out.mean), test)


def test_a_process_stores_its_factor_and_old_checkpoints_load_with_one():
    torch.manual_seed(0)
    fc = field_config("siren", in_dim=2, head="grey", hidden=16, n_layers=2)
    options = {
        "width": 16,
        "depth": 1,
        "latent_dim": 0,
        "local_options": {"resolution": 8, "channels": [4, 8]},
    }
    model = build_process("ponp", fc, "image", **options)
    batch = image_batch(torch.rand(2, 8, 8, 1), 0.3)
    from genfield.evaluation import evaluate

    before = evaluate(model, batch, steps=0).prediction
    factor = calibrate(model, batch)
    assert factor == pytest.approx(std_scale(before, batch), rel=1e-5)
    after = evaluate(model, batch, steps=0).prediction
    torch.testing.assert_close(after.mean, before.mean)
    torch.testing.assert_close(after.variance, before.variance * factor**2)
    state = {k: v for k, v in model.state_dict().items() if k != "std_scale"}  # written before it existed
    fresh = build_process("ponp", fc, "image", **options)
    fresh.std_scale.fill_(3.0)
    fresh.load_state_dict(state)
    assert float(fresh.std_scale) == 1.0
    fresh.load_state_dict(model.state_dict())
    assert float(fresh.std_scale) == pytest.approx(factor)
    # a method without a learned std is left alone
    assert calibrate(RandomInitFit(build_field("siren", head="grey", hidden=8), steps=1), batch) is None


def test_genfield_train_writes_the_calibrated_factor_into_its_checkpoint(tmp_path):
    from hydra import compose, initialize_config_dir
    from safetensors.torch import load_file

    import genfield
    from genfield.commands.train import run_train

    configs = str(Path(genfield.__file__).parent / "configs")
    overrides = ["method=cnp", "data=faces", "data.size=16", "train.steps=2", "train.progress=false"]
    overrides += ["device=cpu", "eval.figure=false", "eval.num_samples=2"]
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        summary = run_train(compose("train", overrides=overrides), out_dir=tmp_path)
    assert summary["std_scale"] is not None and summary["std_scale"] > 0
    stored = load_file(str(tmp_path / "checkpoints" / "last.safetensors"))
    assert float(stored["model/std_scale"]) == pytest.approx(summary["std_scale"])


def test_calibration_at_a_step_count_reads_the_prediction_after_those_steps():
    from genfield.evaluation import evaluate

    torch.manual_seed(0)
    fc = field_config("siren", in_dim=2, head="grey", hidden=16, n_layers=2)
    model = build_process(
        "cnp", fc, "image", width=16, depth=1, tto_steps=3, tto_lr=0.05, tto_params="decoder"
    )
    batch = image_batch(torch.rand(2, 8, 8, 1), 0.3)
    factors = {}
    for steps in (0, 3):
        model.std_scale.fill_(1.0)  # the prediction as the model makes it
        reference = std_scale(evaluate(model, batch, steps=steps).prediction, batch)
        factors[steps] = calibrate(model, batch, steps=steps)
        assert factors[steps] == pytest.approx(reference, rel=1e-5)
        assert float(model.std_scale) == pytest.approx(factors[steps])
    assert factors[0] != pytest.approx(factors[3], rel=1e-3)  # test-time steps change the spread
