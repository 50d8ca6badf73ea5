"""Bad input through the real command line (`genfield.cli.main`, in-process): every case exits with
status 2 and one line naming the key, value or file, with no traceback, before any work -- no file
already in the output folder changes, nothing new appears there or in ``./outputs``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from test_reconstruct import train_run

from genfield.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Inputs, good and bad, written once."""
    root = tmp_path_factory.mktemp("fuzz_inputs")
    rng = np.random.default_rng(0)
    paths = {
        "photo": root / "photo.png",
        "tiny": root / "tiny.png",
        "a_file": root / "a_file.txt",
        "angles_deg": root / "angles_deg.npy",
        "angles_same": root / "angles_same.npy",
        "sino_8x3": root / "sino_8x3.npy",
        "sino_huge": root / "sino_huge.npy",
        "sino_skimage": root / "sino_skimage.npy",
        "sino": root / "sino.npy",
    }
    iio.imwrite(paths["photo"], (rng.random((40, 30, 3)) * 255).astype(np.uint8))
    iio.imwrite(paths["tiny"], (rng.random((8, 8, 3)) * 255).astype(np.uint8))
    paths["a_file"].write_text("not a folder")
    np.save(paths["angles_deg"], np.arange(8) * 22.5)  # degrees: up to 157.5
    np.save(paths["angles_same"], np.array([0.0, 0.4, 0.8, 0.8, 1.6, 2.0, 2.4, 2.8]))
    np.save(paths["sino_8x3"], rng.random((8, 3)))
    np.save(paths["sino_huge"], rng.random((8, 16)) * 1e30)
    np.save(paths["sino_skimage"], rng.random((16, 8)) * 10)  # skimage layout (D, A)
    np.save(paths["sino"], rng.random((8, 16)))
    return paths


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("fuzz_image_run"), ["method=cnp", "data=faces", "data.size=16"])


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory) -> Path:
    return train_run(
        tmp_path_factory.mktemp("fuzz_ct_run"),
        ["method=fomaml", "data=ct_phantoms", "data.resolution=16", "data.n_signals=8", "data.batch_size=4"],
    )


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_and_check(argv: list[str], message: str, out: Path, cwd: Path, capsys) -> str:
    """Run the CLI; assert exit 2, one line with ``message``, no traceback, nothing written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text('{"written": "by an earlier run"}')
    before = snapshot(out)
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert caught.value.code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("genfield: error: "), err
    assert message in lines[0], err
    assert snapshot(out) == before  # nothing changed, nothing added
    assert not (cwd / "outputs").exists()  # no timestamped folder left behind
    return lines[0]


# (arguments after `genfield reconstruct run=<run> input=<photo>`, text the one line must contain)
IMAGE_CASES = [
    (["context_fraction=abc"], "context_fraction='abc': expected a number in (0, 1]"),
    (["context_fraction=0"], "context_fraction=0: expected a number in (0, 1]"),
    (["context_fraction=1.5"], "context_fraction=1.5"),
    (["n_context=0"], "n_context=0: expected an integer >= 1"),
    (["n_target=-3"], "n_target=-3"),
    (["downscale=0"], "downscale=0: expected an integer >= 1"),
    (["downscale=1.5"], "downscale=1.5: expected an integer >= 1"),
    (["sinogram_scale=nan"], "sinogram_scale=nan: expected a finite number > 0"),
    (["sinogram_scale=-2"], "sinogram_scale=-2"),
    (["input_type=bogus"], "input_type='bogus': expected one of auto, image, slice, sinogram"),
    (["num_samples=0"], "num_samples=0: expected an integer >= 1"),
    (["steps=-1"], "steps=-1: expected an integer >= 0"),
    (["steps=abc"], "steps='abc'"),
    (["seed=-1"], "seed=-1"),
    (["mesh_resolution=2"], "mesh_resolution=2: expected an integer in [8, 1024]"),
    (["angle_unit=grad"], "angle_unit='grad': expected one of rad, deg"),
    (["sinogram_units=pixels"], "sinogram_units='pixels': expected one of domain, skimage"),
    (["progress=maybe"], "progress='maybe': expected true or false"),
    (["context_views=[-1]"], "context_views=[-1]"),
    (["out={a_file}/sub"], "is a file, not a folder"),
    (["input={photo}.missing"], "input not found"),
    (["input=/data/tête.png"], "quote a value with spaces, ',', '=' or non-ASCII characters"),
    (["mask={photo}.missing"], "mask file not found"),
]


@pytest.mark.parametrize(("extra", "message"), IMAGE_CASES, ids=[" ".join(c[0]) for c in IMAGE_CASES])
def test_reconstruct_bad_option(image_run, files, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    extra = [e.format(**{k: str(v) for k, v in files.items()}) for e in extra]
    argv = ["reconstruct", f"run={image_run}", f"input={files['photo']}", f"out={out}", *extra]
    if any(e.startswith("out=") for e in extra):
        argv.remove(f"out={out}")
    run_and_check(argv, message.format(**files), out, tmp_path, capsys)


CT_CASES = [
    (["input={sino}", "angles={angles_deg}"], "outside [0, 2 pi) radians: give angle_unit=deg"),
    (["input={sino}", "angles={angles_same}", "angle_unit=rad"], "repeat"),
    (["input={sino}", "angles={angles_same}"], "angle 2 and angle 3 are the same projection angle"),
    (["input={sino_8x3}", "angles=even:8"], "input_type=sinogram"),
    (["input={sino_huge}", "angles=even:8"], "holds values up to"),
    (["input={sino_skimage}", "angles=even:8"], "give sinogram_units=skimage"),
    (["input={sino}", "angles=even:0"], "angles='even:0'"),
    (["input={sino}", "angles={sino}.missing"], "angles file not found"),
    (["input={sino}", "input_type=mesh"], "input_type=mesh does not fit input"),
    (["input={sino}", "angles=even:8", "sinogram_units=skimage"], "rows (angles) but 8 angles"),
]


@pytest.mark.parametrize(("extra", "message"), CT_CASES, ids=[" ".join(c[0]) for c in CT_CASES])
def test_reconstruct_bad_ct_input(ct_run, files, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    extra = [e.format(**{k: str(v) for k, v in files.items()}) for e in extra]
    run_and_check(
        ["reconstruct", f"run={ct_run}", f"out={out}", "num_samples=2", *extra],
        message,
        out,
        tmp_path,
        capsys,
    )


def test_reconstruct_without_out_leaves_no_empty_run_folder(ct_run, files, tmp_path, monkeypatch, capsys):
    """Hydra makes a timestamped folder under ./outputs before the command runs; a failing call removes it."""
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        main(["reconstruct", f"run={ct_run}", f"input={files['sino']}", f"angles={files['angles_same']}"])
    assert caught.value.code == 2
    assert "repeat" in capsys.readouterr().err
    assert not list((tmp_path / "outputs").rglob("*.json")) and not list(
        (tmp_path / "outputs").rglob("*.png")
    )
    assert not any(p.is_dir() and not any(p.iterdir()) for p in (tmp_path / "outputs").rglob("*"))


def test_reconstruct_with_out_writes_nothing_to_outputs(ct_run, files, tmp_path, monkeypatch, capsys):
    """With out=, ./outputs is not needed (here: a file blocks it) and out/ holds the results only."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").write_text("a file where Hydra would make its folder")
    out = tmp_path / "results"
    main(
        [
            "reconstruct",
            f"run={ct_run}",
            f"input={files['sino']}",
            "angles=even:8",
            f"out={out}",
            "num_samples=2",
        ]
    )
    assert (out / "metrics.json").is_file() and (out / "reconstruction.png").is_file()
    assert not (out / ".hydra").exists()
    assert (tmp_path / "outputs").read_text().startswith("a file")


FIT_CASES = [
    (["--size", "0"], "--size 0: expected an integer >= 11"),
    (["--size", "8"], "(SSIM's window)"),
    (["--size", "abc"], "fit: argument --size: invalid int value: 'abc'"),
    (["--lr", "nan"], "--lr nan: expected a finite number > 0"),
    (["--lr", "0"], "--lr 0.0: expected a finite number > 0"),
    (["--lr=-1e-3"], "--lr -0.001"),
    (["--lr", "inf"], "--lr inf"),
    (["--steps", "-5"], "--steps must be positive"),
    (["--out", "{a_file}/sub"], "--out={a_file}/sub: {a_file} is a file, not a folder"),
    (["--field", "nerf"], "fit: argument --field: invalid choice: 'nerf'"),
]


@pytest.mark.parametrize(("extra", "message"), FIT_CASES, ids=[" ".join(c[0]) for c in FIT_CASES])
def test_fit_bad_option(files, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    names = {k: str(v) for k, v in files.items()}
    extra = [e.format(**names) for e in extra]
    argv = ["fit", str(files["photo"]), "--steps", "2", *extra]
    if "--out" not in extra:
        argv += ["--out", str(out)]
    run_and_check(argv, message.format(**names), out, tmp_path, capsys)


def test_fit_image_below_ssim_minimum_fails_before_fitting(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    line = run_and_check(["fit", str(files["tiny"]), "--out", str(out)], "is 8 x 8", out, tmp_path, capsys)
    assert str(files["tiny"]) in line and "11 x 11" in line
