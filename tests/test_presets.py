"""Every experiment preset trains for 2 steps at a tiny size; `compare` at test size; `demo` composes."""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import genfield
from genfield.app import run_train

CONFIGS = Path(genfield.__file__).parent / "configs"
PRESETS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
TINY = {
    "image": ["data.size=8", "data.batch_size=2", "data.eval_signals=2"],
    "ct": ["data.resolution=8", "data.n_signals=4", "data.batch_size=2", "data.eval_signals=2"],
    "shape": [
        "data.n_signals=2",
        "data.n_uniform=256",
        "data.n_near=256",
        "data.n_context=32",
        "data.n_target=64",
        "data.batch_size=2",
        "data.eval_signals=2",
    ],
    "views": [
        "data.n_signals=8",
        "data.n_views=5",
        "data.size=8",
        "data.batch_size=2",
        "data.eval_signals=1",
        "data.rays_per_signal=32",
        "data.n_samples=8",
    ],
}
SMALL_NETWORK = ["field.options.hidden=16", "field.options.n_layers=2"]


def compose_train(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("image_folder")
    rng = np.random.default_rng(0)
    for i in range(10):
        iio.imwrite(folder / f"im{i}.png", rng.integers(0, 255, (12, 12, 3), dtype=np.uint8))
    return folder


@pytest.mark.parametrize("preset", PRESETS)
def test_every_experiment_preset_trains_two_steps(preset, tmp_path, image_folder):
    kind = compose_train([f"experiment={preset}"]).data.kind
    overrides = [
        f"experiment={preset}",
        "train.steps=2",
        "train.val_every=1",
        "train.progress=false",
        "eval.num_samples=2",
        f"data.cache_dir={tmp_path / 'cache'}" if kind in ("shape", "views") else None,
        f"data.root={image_folder}" if preset.startswith("images") else None,
        *TINY[kind],
        *SMALL_NETWORK,
    ]
    cfg = compose_train([o for o in overrides if o])
    summary = run_train(cfg, out_dir=tmp_path)
    assert summary["steps"] == 2
    assert (tmp_path / "checkpoints" / "last.safetensors").is_file()
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "metrics.csv").is_file()
    metric = "test_iou" if kind == "shape" else "test_psnr"
    assert np.isfinite(summary[metric]), summary


def test_compare_at_test_size_writes_a_row_per_method(tmp_path):
    from genfield.comparison import load_group, run_comparison

    methods = ["fomaml", "ibaml", "cnp", "random_init"]
    rows = run_comparison(
        ["faces"],
        methods,
        "siren",
        load_group("budget", "tiny"),
        tmp_path,
        data_overrides={"faces": {"size": 8}},
        field_overrides={"hidden": 16, "n_layers": 2},
        progress=False,
    )
    classical = ["biharmonic", "gaussian-prior", "mean"]  # the image kind's baselines, same test faces
    assert {r.method for r in rows} == set(methods) | set(classical)
    assert {r.route for r in rows if r.method in classical} == {"classical"}
    table = (tmp_path / "results.md").read_text()
    for method in methods + classical:
        assert f"| faces | {method} |" in table
    csv_lines = (tmp_path / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(rows)
    assert (tmp_path / "faces" / "reconstructions.png").is_file()
    assert (tmp_path / "faces_psnr_vs_steps.png").is_file()


def test_demo_config_names_existing_methods_and_data():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("demo")
    for method in cfg.methods:
        assert (CONFIGS / "method" / f"{method}.yaml").is_file()
    assert list(cfg.datasets) == ["glyphs"] and {"ibaml", "ponp", "random_init"} <= set(cfg.methods)
    assert set(cfg.budget.method_steps) <= set(cfg.methods)


def test_an_explicit_method_option_reaches_the_kinds_whose_by_kind_entry_sets_it():
    """``train method.options.obs_noise=...``: iBaML's image entry holds its own noise, which would
    otherwise win over the value given on the command line."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from genfield.app import given_over_by_kind_overrides
    from genfield.kinds import options_for_kind

    argv = ["method=ibaml", "data=faces", "method.options.obs_noise=0.02", "method.options.mc_samples=4"]
    extra = given_over_by_kind_overrides("train", argv)
    assert extra == ["method.options.by_kind.image.obs_noise=0.02"]
    with initialize_config_module("genfield.configs", version_base="1.3"):
        options = OmegaConf.to_container(compose("train", overrides=[*argv, *extra]).method.options)
    built = options_for_kind(options, "image", "meta-learner")
    assert built["obs_noise"] == 0.02 and built["mc_samples"] == 4
    assert given_over_by_kind_overrides("train", ["method=ibaml"]) == []
