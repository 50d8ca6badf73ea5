"""genfield.runs (a trained run rebuilt from its checkpoint) and the kinds' reconstruct readers."""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

import genfield
from genfield.builders import build_field_for, build_method, plain
from genfield.checkpoint import save_checkpoint
from genfield.errors import InputError
from genfield.runs import CHECKPOINT, Run, find_checkpoint, load_run

CONFIGS = str(Path(genfield.__file__).parent / "configs")


def run_config(overrides: list[str], kind: str, head: str) -> dict:
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        config = plain(compose("train", overrides=overrides))
    config["resolved"] = {"kind": kind, "head": head, "in_dim": 2}
    return config


def built(config: dict):
    field = build_field_for(config["field"], config["resolved"])
    return build_method(config["method"], field, config["resolved"])


def test_load_run_restores_the_saved_weights_and_config(tmp_path):
    config = run_config(["method=fomaml", "data=faces", "data.size=16"], "image", "grey")
    torch.manual_seed(0)
    method = built(config)
    with torch.no_grad():  # weights no fresh build has
        for p in method.parameters():
            p.add_(torch.randn_like(p))
    save_checkpoint(tmp_path / CHECKPOINT, method, config=config)
    run = load_run(tmp_path)  # the run folder finds checkpoints/last.safetensors
    assert run.checkpoint == tmp_path / CHECKPOINT and (run.kind, run.head, run.name) == (
        "image",
        "grey",
        "fomaml",
    )
    saved, loaded = method.state_dict(), run.method.state_dict()
    assert saved.keys() == loaded.keys()
    for key in saved:
        torch.testing.assert_close(loaded[key], saved[key])
    fresh = built(config).state_dict()
    assert any(not torch.equal(fresh[k], saved[k]) for k in saved if saved[k].is_floating_point())
    assert not run.method.training and run.device.type == "cpu"


def test_find_checkpoint_names_what_is_missing(tmp_path):
    with pytest.raises(InputError, match="run or checkpoint not found"):
        find_checkpoint(tmp_path / "nope")
    with pytest.raises(InputError, match=r"no checkpoint in run directory .*checkpoints/last\.safetensors"):
        find_checkpoint(tmp_path)


def test_ct_slice_reader_projects_as_the_runs_evaluation_split(tmp_path):
    """A slice image read for a CT run gives the context CTSplit's evaluation split makes of the same
    slice: ``eval_context_angles`` even angles, the data's detectors and quadrature."""
    from genfield.datasets.ct import CTSplit, SinogramImageDataset
    from genfield.datasets.images import read_image
    from genfield.kinds import get_kind

    overrides = ["method=fomaml", "data=ct_phantoms", "data.resolution=16", "data.eval_context_angles=5"]
    config = run_config(overrides, "ct", "attenuation")
    slice_image = np.zeros((20, 20), np.uint8)
    slice_image[5:14, 6:11] = 180
    iio.imwrite(tmp_path / "slice.png", slice_image)
    run = Run(built(config), config, tmp_path / "run.safetensors")
    batch = get_kind("ct").read_input(tmp_path / "slice.png", "image", run, {"angles": None, "seed": 0})
    truth = SinogramImageDataset([torch.as_tensor(read_image(tmp_path / "slice.png", grey=True))], 16)[0]
    expected = CTSplit(n_context_angles=5, context_angles="even")([truth])
    torch.testing.assert_close(batch.context.queries, expected.context.queries)
    torch.testing.assert_close(batch.context.values, expected.context.values)
    torch.testing.assert_close(batch.ground_truth, expected.ground_truth)
    assert batch.context.layout.n_detectors == 16 and batch.forward_map.n_samples == 16


def test_normalize_points_centres_the_box_and_refuses_a_single_point():
    from genfield.datasets.shapes import normalize_points

    points = np.random.default_rng(0).normal(size=(200, 3)) * [3.0, 1.0, 0.5] + [10.0, -2.0, 4.0]
    normal = normalize_points(points, padding=0.25)
    low, high = normal.min(0), normal.max(0)
    np.testing.assert_allclose((low + high) / 2, 0.0, atol=1e-12)
    assert np.isclose((high - low).max(), 1.5) and np.argmax(high - low) == 0
    with pytest.raises(InputError, match="no extent"):
        normalize_points(np.ones((4, 3)))


def test_ct_figure_without_a_ground_truth_drops_the_truth_and_error_panels(tmp_path):
    from genfield.viz.figures import ct_figure

    rng = np.random.default_rng(0)
    sinogram, image = rng.random((6, 16)), rng.random((16, 16))
    with_truth = ct_figure(tmp_path / "a.png", sinogram, image, image, image)
    without = ct_figure(tmp_path / "b.png", sinogram, image, image, None)
    with_std = ct_figure(tmp_path / "c.png", sinogram, image, image, None, std=image)
    widths = [iio.imread(p).shape[1] for p in (with_truth, without, with_std)]
    assert widths[1] < widths[2] < widths[0]  # 3 panels < 4 (std) < 5
