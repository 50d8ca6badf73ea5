"""`genfield reconstruct`'s classical baselines: tiny runs, each baseline's files and scores checked
against the library call (or the baseline's own reconstruction) on the very context the run saw."""

import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh
from skimage.restoration import inpaint_biharmonic
from test_reconstruct import metrics_of, options, run_cli, train_run

from genfield.classical import RBF, SART
from genfield.commands.reconstruct import load_run, reconstruct
from genfield.commands.reconstruct_baselines import prepare_baselines
from genfield.commands.reconstruct_options import option_defaults
from genfield.datasets.batch import Observations
from genfield.errors import InputError
from genfield.kinds import get_kind


def psnr(image: np.ndarray, truth: np.ndarray) -> float:
    return float(-10 * np.log10(((np.clip(image, 0, 1) - truth) ** 2).mean()))


def png(path: Path) -> np.ndarray:
    return iio.imread(path).astype(np.float64) / 255.0


def input_batch(run: Path, source: Path, *extra: str):
    """The observations ``reconstruct`` makes of ``source`` (same options, same seed)."""
    cfg = {**option_defaults(), **options(run, source, *extra)}
    loaded = load_run(run)
    spec = get_kind(loaded.kind)
    given = {"image": "image", "ct": "image", "shape": "mesh"}[loaded.kind]
    return spec.read_input(Path(source), given, loaded, cfg), cfg, loaded, spec


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("image_run"), ["method=cnp", "data=faces", "data.size=16"])


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:40, 0:30]
    image = np.stack([rows / 40, cols / 30, 0.5 + 0.2 * rng.random((40, 30))], -1)
    path = tmp_path_factory.mktemp("inputs") / "photo.png"
    iio.imwrite(path, (image * 255).round().astype(np.uint8))
    return path


@pytest.fixture(scope="module")
def image_out(image_run, photo, tmp_path_factory):
    """The default call: every image baseline (biharmonic, gaussian-prior, mean)."""
    out = tmp_path_factory.mktemp("image_out")
    return reconstruct(options(image_run, photo, "context_fraction=0.25"), out), out


def test_biharmonic_file_and_psnr_are_skimage_on_the_same_context(image_run, photo, image_out):
    metrics, out = image_out
    batch, *_ = input_batch(image_run, photo, "context_fraction=0.25")
    truth = batch.ground_truth[0, ..., 0].double().numpy()
    known = np.zeros(16 * 16)
    known[batch.extras["context_index"][0].numpy()] = batch.context.values[0, :, 0].numpy()
    mask = np.ones(16 * 16, bool)
    mask[batch.extras["context_index"][0].numpy()] = False
    direct = inpaint_biharmonic(known.reshape(16, 16), mask.reshape(16, 16))
    written = png(out / "baselines" / "biharmonic" / "reconstruction.png")
    assert np.abs(written - np.clip(direct, 0, 1)).max() <= 0.5 / 255 + 1e-6
    scores = metrics["baselines"]["biharmonic"]
    assert scores["psnr"] == pytest.approx(psnr(direct, truth), abs=1e-3)
    assert metrics == metrics_of(out)


def test_mean_baseline_is_the_mean_of_the_rebuilt_training_faces(image_run, photo, image_out):
    """The run's stored data config (built-in faces at 16 px) is rebuilt for the mean."""
    from genfield.datasets.builtin import builtin_faces

    metrics, out = image_out
    faces = builtin_faces("train", size=16)
    mean = np.mean([np.asarray(faces[i].image)[..., 0] for i in range(len(faces))], axis=0)
    written = png(out / "baselines" / "mean" / "reconstruction.png")
    assert np.abs(written - np.clip(mean, 0, 1)).max() <= 0.5 / 255 + 1e-6
    batch, *_ = input_batch(image_run, photo, "context_fraction=0.25")
    truth = batch.ground_truth[0, ..., 0].double().numpy()
    assert metrics["baselines"]["mean"]["psnr"] == pytest.approx(psnr(mean, truth), abs=1e-3)
    assert (out / "baselines" / "gaussian-prior" / "std.png").is_file()  # it has a posterior variance


def test_results_table_and_verdict_name_the_best(image_out):
    metrics, out = image_out
    table = (out / "results.md").read_text()
    values = {"cnp": metrics["psnr"], **{k: v["psnr"] for k, v in metrics["baselines"].items()}}
    for name, value in values.items():
        assert f"| faces | {name} | {value:.2f} |" in table
    best = max((v, k) for k, v in values.items() if k != "cnp")
    gap = abs(metrics["psnr"] - best[0])
    assert f"best reference {best[1]} (photo.png) {best[0]:.2f} dB" in metrics["verdict"]
    assert f"by {gap:.2f} dB PSNR" in metrics["verdict"] and metrics["verdict"] in table


def test_empty_list_writes_no_baseline(image_run, photo, tmp_path):
    metrics = reconstruct(options(image_run, photo, "baselines=[]"), tmp_path)
    assert "baselines" not in metrics and "verdict" not in metrics
    assert not (tmp_path / "baselines").exists() and not (tmp_path / "results.md").exists()
    assert (tmp_path / "reconstruction.png").is_file()


def test_the_figure_draws_the_baselines_beside_the_method(image_run, photo, tmp_path, image_out):
    alone = reconstruct(options(image_run, photo, "context_fraction=0.25", "baselines=[]"), tmp_path)
    with_baselines, out = image_out
    narrow, wide = (png(Path(m["figure"][0])) for m in (alone, with_baselines))
    assert narrow.shape[0] == wide.shape[0]
    # biharmonic adds reconstruction and error columns, the mean too, gaussian-prior also its std
    assert wide.shape[1] > 2 * narrow.shape[1]


def test_unknown_or_other_kind_names_exit_2_before_the_input_is_read(image_run, tmp_path):
    missing_input = tmp_path / "never_read.png"  # the baseline check comes first
    result = run_cli(
        f"run={image_run}", f"input={missing_input}", "baselines=[nope]", f"out={tmp_path / 'o'}"
    )
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert "'nope' is not a baseline; valid for image runs: biharmonic, gaussian-prior, mean" in line
    assert not (tmp_path / "o").exists()
    valid = "valid for image runs: biharmonic, gaussian-prior, mean"
    with pytest.raises(InputError, match=f"'sart' runs on other data kinds; {valid}"):
        reconstruct(options(image_run, missing_input, "baselines=[sart]"), tmp_path / "o")
    with pytest.raises(InputError, match="baselines='biharmonic': expected a list"):
        reconstruct(options(image_run, missing_input, "baselines=biharmonic"), tmp_path / "o")
    with pytest.raises(InputError, match=r"baselines=\['mean', 'mean'\]: expected a list of distinct"):
        reconstruct(options(image_run, missing_input, "baselines=[mean,mean]"), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_no_context_pixel_named_baseline_is_an_error_a_default_one_is_skipped(image_run, photo, capsys):
    batch, cfg, run, spec = input_batch(image_run, photo)
    batch.context = Observations(batch.context.queries[:, :0], batch.context.values[:, :0])
    batch.extras["context_index"] = batch.extras["context_index"][:, :0]
    with pytest.raises(
        InputError, match=r"baselines=\[biharmonic\] cannot run on .*photo.png: .*one context pixel"
    ):
        prepare_baselines(run, spec, batch, {**cfg, "baselines": ["biharmonic"]})
    capsys.readouterr()
    prepared = prepare_baselines(run, spec, batch, {**cfg, "baselines": None})
    assert "biharmonic" not in [b.name for b, _ in prepared]
    assert (
        "baseline biharmonic skipped: biharmonic inpainting needs at least one context pixel"
        in capsys.readouterr().err
    )


def test_training_data_that_is_gone_skips_the_learned_baselines(photo, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        iio.imwrite(folder / f"{i}.png", (rng.random((20, 20, 3)) * 255).astype(np.uint8))
    run = train_run(tmp_path / "run", ["method=cnp", "data=images", f"data.root={folder}", "data.size=16"])
    shutil.rmtree(folder)
    capsys.readouterr()
    metrics = reconstruct(options(run, photo, "baselines=[mean,biharmonic]"), tmp_path / "out")
    assert list(metrics["baselines"]) == ["biharmonic"]
    err = capsys.readouterr().err
    expected = "baseline mean skipped: the run's training data 'images' cannot be rebuilt"
    assert f"{expected} (data folder not found: {folder})" in err


# -- CT --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ct_run(tmp_path_factory):
    return train_run(
        tmp_path_factory.mktemp("ct_run"),
        ["method=fomaml", "data=ct_phantoms", "data.resolution=16", "data.n_signals=8", "data.batch_size=4"],
    )


@pytest.fixture(scope="module")
def slice_png(tmp_path_factory) -> Path:
    image = np.zeros((16, 16), np.uint8)
    image[4:12, 5:10] = 200
    path = tmp_path_factory.mktemp("slice") / "slice.png"
    iio.imwrite(path, image)
    return path


def test_ct_sart_and_fbp_files_and_scores(ct_run, slice_png, tmp_path):
    metrics = reconstruct(options(ct_run, slice_png, "angles=even:6", "baselines=[sart,fbp]"), tmp_path)
    assert list(metrics["baselines"]) == ["sart-5", "fbp"]
    batch, *_ = input_batch(ct_run, slice_png, "angles=even:6")
    direct = SART().reconstruct(batch).mean[0, :, 0].reshape(16, 16).double().numpy()
    written = png(tmp_path / "baselines" / "sart-5" / "reconstruction.png")
    assert np.abs(written - np.clip(direct, 0, 1)).max() <= 0.5 / 255 + 1e-6
    truth = batch.ground_truth[0, ..., 0].double().numpy()
    assert metrics["baselines"]["sart-5"]["psnr"] == pytest.approx(psnr(direct, truth), abs=1e-3)
    # the FBP baseline is the FBP the CT outputs already hold
    assert np.array_equal(
        png(tmp_path / "baselines" / "fbp" / "reconstruction.png"), png(tmp_path / "fbp.png")
    )
    assert metrics["baselines"]["fbp"]["psnr"] == pytest.approx(metrics["psnr_fbp"], abs=1e-4)
    assert metrics["figure"] == str(tmp_path / "reconstructions.png")  # the slice beside SART's and FBP's
    assert png(tmp_path / "reconstructions.png").shape[1] > png(tmp_path / "ct.png").shape[1] / 2


def test_ct_sinogram_without_truth_writes_baselines_without_scores(ct_run, tmp_path):
    np.save(tmp_path / "sino.npy", np.random.default_rng(2).random((5, 16)).astype(np.float32))
    cfg = options(ct_run, tmp_path / "sino.npy", "angles=even:5", "baselines=[sart,gaussian-prior]")
    metrics = reconstruct(cfg, tmp_path / "out")
    assert metrics["baselines"]["sart-5"] == {"folder": "baselines/sart-5"}  # no ground truth, no score
    assert png(tmp_path / "out" / "baselines" / "gaussian-prior" / "reconstruction.png").shape == (16, 16)
    assert not (tmp_path / "out" / "results.md").exists() and "verdict" not in metrics


def test_sart_from_one_angle_exits_2_and_changes_nothing_in_out(ct_run, slice_png, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "reconstruction.png").write_bytes(b"kept")
    result = run_cli(f"run={ct_run}", f"input={slice_png}", "angles=even:1", "baselines=[sart]", f"out={out}")
    assert result.returncode == 2, result.stderr
    assert "baselines=[sart] cannot run on" in result.stderr and "at least 2 context angles" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["reconstruction.png"]
    assert (out / "reconstruction.png").read_bytes() == b"kept"


# -- shapes ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shape_run(tmp_path_factory):
    return train_run(
        tmp_path_factory.mktemp("shape_run"),
        [
            "method=fomaml",
            "data=shapes",
            "data.n_signals=4",
            "data.n_uniform=256",
            "data.n_near=256",
            "data.n_context=64",
            "data.n_target=128",
            "data.batch_size=2",
            "data.eval_signals=1",
        ],
    )


def test_shape_baselines_write_meshes_and_their_iou(shape_run, tmp_path):
    from genfield.metrics import iou

    source = tmp_path / "box.ply"
    trimesh.creation.box(extents=(1.0, 0.6, 0.8)).export(source)
    extra = ("n_context=200", "n_target=1024", "mesh_resolution=20")
    metrics = reconstruct(options(shape_run, source, *extra), tmp_path / "out")
    assert list(metrics["baselines"]) == ["rbf", "nearest", "mean-shape"]
    batch, *_ = input_batch(shape_run, source, *extra)
    mean = RBF().reconstruct(batch).mean
    direct = iou(mean > 0.5, batch.target.values > 0.5)  # occupancy: inside above 0.5
    assert metrics["baselines"]["rbf"]["iou"] == pytest.approx(float(direct[0]), abs=1e-6)
    mesh = trimesh.load(tmp_path / "out" / "baselines" / "rbf" / "mesh.ply")
    assert len(mesh.faces) > 0 and metrics["baselines"]["rbf"]["chamfer"] > 0
    assert "| shapes | rbf |" in (tmp_path / "out" / "results.md").read_text()


def test_rbf_from_three_points_exits_2(shape_run, tmp_path):
    source = tmp_path / "box.ply"
    trimesh.creation.box().export(source)
    result = run_cli(
        f"run={shape_run}", f"input={source}", "n_context=3", "baselines=[rbf]", f"out={tmp_path / 'o'}"
    )
    assert result.returncode == 2, result.stderr
    assert "baselines=[rbf] cannot run on" in result.stderr and "at least 4 context points" in result.stderr
    assert not (tmp_path / "o").exists()


# -- views -----------------------------------------------------------------------------------------
def test_nearest_view_from_one_context_view_is_that_view_at_every_pose(tmp_path):
    """With one context view, ``nearest-view`` writes that view for every rendered pose, scored
    against each test view."""
    from genfield.datasets.views import NerfSyntheticScene

    data = tmp_path / "views_data"
    views = ["data=views", "data.size=16", "data.n_signals=8", "data.n_views=4", "data.n_samples=8"]
    extra = ["data.rays_per_signal=64", "data.batch_size=2", "data.eval_signals=1", f"data.cache_dir={data}"]
    run = train_run(tmp_path / "run", ["method=cnp", *views, *extra])
    scene = data / "scene_0003"
    metrics = reconstruct(options(run, scene, "context_views=[1]"), tmp_path / "out")
    context = NerfSyntheticScene(scene, "train").load().images[1].double().numpy()
    test = NerfSyntheticScene(scene, "test").load().images.double().numpy()
    scores = metrics["baselines"]["nearest-view"]
    for k in metrics["rendered_views"]:
        written = png(tmp_path / "out" / "baselines" / "nearest-view" / f"view_{k:03d}.png")
        assert np.abs(written - context).max() <= 0.5 / 255 + 1e-6
        assert scores["psnr_per_view"][k] == pytest.approx(psnr(context, test[k]), abs=1e-3)
    assert "| views | nearest-view |" in (tmp_path / "out" / "results.md").read_text()
