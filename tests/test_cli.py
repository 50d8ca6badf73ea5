"""The command line: `genfield fit` (the vertical slice), errors and exit codes, Hydra commands."""

import json
import math
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from genfield.cli import main
from genfield.datasets.builtin import load_photo
from genfield.datasets.images import square_image
from genfield.fields.field import FIELD_PRESETS


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "genfield", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory):
    """A built-in 64x64 photograph written as a real PNG file."""
    image = square_image(load_photo("astronaut", grey=False), 64).numpy()
    path = tmp_path_factory.mktemp("images") / "astronaut.png"
    iio.imwrite(path, (image * 255).round().astype(np.uint8))
    return path


def test_fit_reaches_30_db_on_a_builtin_64px_image_with_default_budget(photo_file, tmp_path, capsys):
    main(["fit", str(photo_file), "--out", str(tmp_path)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["psnr"] >= 30.0, metrics
    assert "PSNR" in capsys.readouterr().out
    reconstruction = iio.imread(tmp_path / "reconstruction.png")
    comparison = iio.imread(tmp_path / "comparison.png")
    assert reconstruction.shape == (64, 64, 3)
    assert comparison.shape == (64, 128, 3)
    # the written reconstruction is the one the metrics describe
    truth = iio.imread(photo_file).astype(float) / 255
    mse = ((reconstruction.astype(float) / 255 - truth) ** 2).mean()
    assert abs(-10 * np.log10(mse) - metrics["psnr"]) < 0.5


@pytest.mark.parametrize("field", sorted(FIELD_PRESETS))
def test_fit_builtin_shorthand_and_each_field(tmp_path, field):
    main(["fit", "builtin:camera", "--size", "16", "--steps", "5", "--field", field, "--out", str(tmp_path)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["field"] == field and math.isfinite(metrics["psnr"])


def test_fit_without_size_fits_a_large_image_at_a_working_size_with_a_note(tmp_path, capsys):
    rng = np.random.default_rng(0)
    iio.imwrite(tmp_path / "large.png", (rng.random((300, 320, 3)) * 255).astype(np.uint8))
    main(["fit", str(tmp_path / "large.png"), "--steps", "1", "--out", str(tmp_path / "out")])
    note = capsys.readouterr().err
    assert "is 300 x 320" in note and "GiB at full size" in note and "--size N" in note
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["image_size"] == "256x256"
    assert iio.imread(tmp_path / "out" / "reconstruction.png").shape == (256, 256, 3)


def test_chunked_evaluation_equals_one_call():
    import torch

    from genfield.fields import build_field
    from genfield.fitting import predict_in_chunks

    field = build_field("siren", head="rgb")
    params = field.init_batch(2, seed=0)
    queries = torch.rand(2, 50, 2) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(predict_in_chunks(field, params, queries, chunk=7), field(params, queries))


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "{missing}"], "image file not found"),
        (["fit", "{not_an_image}"], "cannot read image"),
        (["fit", "builtin:nonexistent"], "unknown built-in photograph"),
        (["fit", "{photo}", "--steps", "0"], "--steps must be positive"),
        (["fit", "{photo}", "--compile", "maybe"], "--compile: invalid choice: 'maybe'"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path, photo_file, capsys):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is not a picture")
    names = {"missing": tmp_path / "nope.png", "not_an_image": not_an_image, "photo": photo_file}
    args = [a.format(**names) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_unknown_field_choice_exits_2():
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "builtin:camera", "--field", "nerf"])
    assert exit_info.value.code == 2


def test_train_unknown_method_lists_the_valid_choices(tmp_path):
    result = run_cli("train", "method=nope", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "ibaml" in result.stderr and "ponp" in result.stderr


def test_train_missing_data_folder_names_it_and_exits_2(tmp_path):
    missing = tmp_path / "no-such-folder"
    result = run_cli("train", "data=images", f"data.root={missing}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr
    assert str(missing) in result.stderr


def test_train_cfg_job_prints_the_resolved_config(tmp_path):
    result = run_cli("train", "method=reptile", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert "name: reptile" in result.stdout and "train:" in result.stdout
