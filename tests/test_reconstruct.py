"""`genfield reconstruct`: tiny runs trained in-process, then each kind of input file, for real."""

import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh
from hydra import compose, initialize_config_dir

import genfield
from genfield.app import run_train
from genfield.builders import plain
from genfield.checkpoint import save_checkpoint
from genfield.commands.reconstruct import (
    find_checkpoint,
    from_skimage,
    load_run,
    parse_angles,
    reconstruct,
    with_run_groups,
)
from genfield.datasets.meshes import inside
from genfield.errors import InputError
from genfield.forward.ct import ct_queries, fbp, project_image

CONFIGS = str(Path(genfield.__file__).parent / "configs")
QUIET = ["train.steps=2", "train.progress=false", "device=cpu", "eval.figure=false", "eval.num_samples=2"]


def compose_config(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(name, overrides=overrides)


def train_run(folder: Path, overrides: list[str]) -> Path:
    run_train(compose_config("train", [*overrides, *QUIET]), out_dir=folder)
    return folder


def options(run: Path, source: Path, *extra: str) -> dict:
    return plain(compose_config("reconstruct", [f"run={run}", f"input={source}", "num_samples=2", *extra]))


def metrics_of(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("image_run")
    return train_run(folder, ["method=cnp", "data=faces", "data.size=16"])


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct_run")
    return train_run(
        folder,
        ["method=fomaml", "data=ct_phantoms", "data.resolution=16", "data.n_signals=8", "data.batch_size=4"],
    )


@pytest.fixture(scope="module")
def shape_run(tmp_path_factory):
    """Surface (point-cloud) context, so both a mesh and a point cloud are valid inputs."""
    folder = tmp_path_factory.mktemp("shape_run")
    return train_run(
        folder,
        [
            "method=fomaml",
            "data=shapes",
            "data.context=surface",
            "data.n_signals=4",
            "data.n_uniform=256",
            "data.n_near=256",
            "data.n_context=64",
            "data.n_target=128",
            "data.batch_size=2",
            "data.eval_signals=1",
        ],
    )


@pytest.fixture(scope="module")
def views_data(tmp_path_factory):
    return tmp_path_factory.mktemp("views_data")


@pytest.fixture(scope="module")
def views_run(tmp_path_factory, views_data):
    folder = tmp_path_factory.mktemp("views_run")
    return train_run(
        folder,
        [
            "method=cnp",
            "data=views",
            "data.size=16",
            "data.n_signals=8",
            "data.n_views=4",
            "data.n_samples=8",
            "data.rays_per_signal=64",
            "data.batch_size=2",
            "data.eval_signals=1",
            f"data.cache_dir={views_data}",
        ],
    )


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A 40 x 30 RGB image file (not square, not the training size)."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:40, 0:30]
    image = np.stack([rows / 40, cols / 30, 0.5 + 0.2 * rng.random((40, 30))], -1)
    path = tmp_path_factory.mktemp("inputs") / "photo.png"
    iio.imwrite(path, (image * 255).round().astype(np.uint8))
    return path


# -- images ----------------------------------------------------------------------------------------
def test_image_from_a_context_fraction(image_run, photo, tmp_path):
    metrics = reconstruct(options(image_run, photo, "context_fraction=0.25"), tmp_path)
    assert metrics == metrics_of(tmp_path)
    assert metrics["kind"] == "image" and metrics["n_context"] == round(0.25 * 16 * 16)
    assert {"psnr", "ssim"} <= set(metrics) and np.isfinite(metrics["psnr"])
    assert iio.imread(tmp_path / "reconstruction.png").shape == (16, 16)  # faces: a grey run
    assert iio.imread(tmp_path / "std.png").shape == (16, 16)  # cnp has a predictive variance
    assert (tmp_path / "reconstructions.png").is_file()
    # the PSNR is that of the written reconstruction against the resized input
    from genfield.datasets.images import read_image, square_image

    truth = square_image(read_image(photo, grey=True), 16).numpy()[..., 0]
    written = iio.imread(tmp_path / "reconstruction.png") / 255.0
    assert abs(-10 * np.log10(((written - truth) ** 2).mean()) - metrics["psnr"]) < 0.2


def test_image_from_a_mask_observes_exactly_its_pixels(image_run, photo, tmp_path):
    mask = np.zeros((40, 30), np.uint8)
    mask[5:35, :15] = 255  # the left half of the centre crop (rows 5..34)
    iio.imwrite(tmp_path / "mask.png", mask)
    metrics = reconstruct(options(image_run, photo, f"mask={tmp_path / 'mask.png'}"), tmp_path / "out")
    assert metrics["n_context"] == 16 * 8


def test_ibaml_std_image_is_low_where_the_mask_observed(photo, tmp_path):
    """iBaML's linearized-Laplace predictive through the CLI: observe the left half, and the written
    std image is darker there than on the right half."""
    run = train_run(tmp_path / "run", ["method=ibaml", "data=faces", "data.size=16"])
    mask = np.zeros((40, 30), np.uint8)
    mask[5:35, :15] = 255  # the left half of the centre crop
    iio.imwrite(tmp_path / "mask.png", mask)
    reconstruct(options(run, photo, f"mask={tmp_path / 'mask.png'}"), tmp_path / "out")
    std = iio.imread(tmp_path / "out" / "std.png").astype(float)
    assert std.shape == (16, 16)
    assert std[:, :8].mean() < 0.9 * std[:, 8:].mean(), (std[:, :8].mean(), std[:, 8:].mean())


# -- CT --------------------------------------------------------------------------------------------
def test_ct_from_a_slice_image_scores_method_and_fbp(ct_run, tmp_path):
    slice_image = np.zeros((16, 16), np.uint8)
    slice_image[4:12, 5:10] = 200
    iio.imwrite(tmp_path / "slice.png", slice_image)
    metrics = reconstruct(options(ct_run, tmp_path / "slice.png", "angles=even:6"), tmp_path / "out")
    assert metrics["n_angles"] == 6 and metrics["n_detectors"] == 16
    assert {"psnr", "psnr_fbp", "ssim", "ssim_fbp"} <= set(metrics)
    for name in ("reconstruction.png", "fbp.png"):
        assert iio.imread(tmp_path / "out" / name).shape == (16, 16)
    assert (tmp_path / "out" / "ct.png").is_file()
    assert not (tmp_path / "out" / "std.png").exists()  # fomaml has no predictive variance
    # fbp.png is the FBP of the slice's projections at those angles (an independent computation)
    truth = torch.as_tensor(slice_image / 255.0, dtype=torch.float32)
    from genfield.datasets.ct import disc_mask

    truth = truth * disc_mask(16)
    angles = parse_angles("even:6")
    sinogram = project_image(truth[None], ct_queries(angles, 16), 16).reshape(6, 16)
    expected = fbp(sinogram, angles, output_size=16).clamp(0, 1).numpy()
    assert np.abs(iio.imread(tmp_path / "out" / "fbp.png") / 255.0 - expected).max() <= 1 / 255 + 1e-6


def test_ct_from_a_sinogram_npy_with_an_angles_file(ct_run, tmp_path):
    angles = np.sort(np.random.default_rng(1).uniform(0, np.pi, 5))
    np.save(tmp_path / "angles.npy", angles)
    np.save(tmp_path / "sino.npy", np.random.default_rng(2).random((5, 16)).astype(np.float32))
    run_options = options(ct_run, tmp_path / "sino.npy", f"angles={tmp_path / 'angles.npy'}")
    metrics = reconstruct(run_options, tmp_path / "out")
    assert metrics["n_angles"] == 5 and "psnr" not in metrics  # no ground truth
    for name in ("reconstruction.png", "fbp.png", "ct.png", "metrics.json"):
        assert (tmp_path / "out" / name).is_file()
    with pytest.raises(InputError, match="4 angles"):
        reconstruct(options(ct_run, tmp_path / "sino.npy", "angles=even:4"), tmp_path / "bad")
    with pytest.raises(InputError, match="needs its angles"):
        reconstruct(options(ct_run, tmp_path / "sino.npy"), tmp_path / "bad")


# -- shapes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_shape_from_a_mesh_writes_a_mesh_and_iou(shape_run, tmp_path, suffix):
    source = tmp_path / f"box{suffix}"
    trimesh.creation.box(extents=(1.0, 0.6, 0.8)).export(source)
    run_options = options(shape_run, source, "n_context=64", "n_target=2048", "mesh_resolution=20")
    metrics = reconstruct(run_options, tmp_path / "out")
    assert metrics["n_context"] == 64
    # the reported IoU (the predicted inside at the target points) against a count of our own: the
    # box normalised to half-sides (0.9, 0.54, 0.72) as truth, the inside of the written mesh (the
    # same mean at the same level) as prediction, at points drawn like the targets (half uniform,
    # half near the surface at both noise scales)
    half = np.array([0.9, 0.54, 0.72])
    rng = np.random.default_rng(0)
    surface, _ = trimesh.sample.sample_surface(trimesh.creation.box(extents=2 * half), 50_000, seed=rng)
    near = surface + rng.normal(size=surface.shape) * np.repeat([0.01, 0.05], 25_000)[:, None]
    points = np.concatenate([rng.uniform(-1, 1, (50_000, 3)), np.clip(near, -1, 1)])
    truth = np.all(np.abs(points) <= half, axis=1)
    predicted = inside(trimesh.load(tmp_path / "out" / "mesh.ply"), points).numpy()
    counted = (truth & predicted).sum() / (truth | predicted).sum()
    assert abs(metrics["iou"] - counted) < 0.05, (metrics["iou"], counted)
    assert metrics["mesh"] == "mesh.ply" and metrics["chamfer"] > 0
    assert len(trimesh.load(tmp_path / "out" / "mesh.ply").faces) > 0
    assert iio.imread(tmp_path / "out" / "mesh.png").shape[0] == 256


def test_shape_from_a_point_cloud(shape_run, tmp_path):
    points = trimesh.sample.sample_surface(trimesh.creation.icosphere(), 300, seed=0)[0]
    np.savetxt(tmp_path / "cloud.xyz", points)
    np.save(tmp_path / "cloud.npy", points)
    for source in ("cloud.xyz", "cloud.npy"):
        out = tmp_path / source.replace(".", "_")
        metrics = reconstruct(options(shape_run, tmp_path / source, "mesh_resolution=16"), out)
        assert metrics["n_context"] == 64 and "iou" not in metrics
        assert metrics["chamfer_to_input_points"] > 0 and (out / "mesh.ply").is_file()


def test_point_cloud_for_a_labelled_run_says_so(shape_run, tmp_path):
    """A run trained on labelled context cannot read a point cloud (its stored config says so)."""
    from safetensors.torch import load_file

    from genfield.checkpoint import read_checkpoint_metadata

    checkpoint = find_checkpoint(shape_run)
    meta = read_checkpoint_metadata(checkpoint)
    meta["config"]["data"]["context"] = "labelled"
    run = load_run(checkpoint)
    labelled = save_checkpoint(tmp_path / "labelled.safetensors", run.method, config=meta["config"])
    assert load_file(str(labelled))
    np.savetxt(tmp_path / "cloud.xyz", np.random.default_rng(0).random((100, 3)))
    with pytest.raises(InputError, match="trained on labelled context.*give a mesh"):
        reconstruct(options(labelled, tmp_path / "cloud.xyz"), tmp_path / "out")


# -- views -----------------------------------------------------------------------------------------
def test_views_render_the_test_views_of_a_scene(views_run, views_data, tmp_path):
    scene = views_data / "scene_0003"  # builtin_views wrote it: transforms_{train,test}.json + PNGs
    metrics = reconstruct(options(views_run, scene, "context_views=[1]"), tmp_path)
    assert metrics["context_views"] == [1] and metrics["rendered_views"] == [0, 1, 2, 3]
    assert len(metrics["psnr_per_view"]) == 4 and np.isfinite(metrics["psnr"])
    assert iio.imread(tmp_path / "view_002.png").shape == (16, 16, 3)
    assert iio.imread(tmp_path / "std_002.png").shape == (16, 16)
    assert (tmp_path / "novel_views.png").is_file()
    with pytest.raises(InputError, match="holds 8 scenes"):
        reconstruct(options(views_run, views_data), tmp_path / "bad")


# -- bad input -------------------------------------------------------------------------------------
def test_input_of_the_wrong_kind_is_a_clear_error(image_run, shape_run, photo, tmp_path):
    trimesh.creation.box().export(tmp_path / "box.obj")
    with pytest.raises(InputError, match="is a mesh file, but run .* trained on image data"):
        reconstruct(options(image_run, tmp_path / "box.obj"), tmp_path / "out")
    with pytest.raises(InputError, match="is a image file, but run .* trained on shape data"):
        reconstruct(options(shape_run, photo), tmp_path / "out")
    with pytest.raises(InputError, match="input not found: .*nope.png"):
        reconstruct(options(image_run, tmp_path / "nope.png"), tmp_path / "out")


def test_overrides_that_differ_from_the_run_name_the_keys(image_run, photo, tmp_path):
    argv = with_run_groups([f"run={image_run}", f"input={photo}", "field.options.hidden=8"])
    assert argv[0] == "field=siren"  # the run's own group is selected for the dotted override
    given = ["field.options.hidden=8"]
    same = [f"field.options.hidden={int(load_run(image_run).config['field']['options']['hidden'])}"]
    cfg = options(image_run, photo, "field=siren", same[0])
    reconstruct(cfg, tmp_path / "same", overrides=same)  # agreeing overrides are fine
    cfg = options(image_run, photo, "field=siren", given[0])
    with pytest.raises(InputError, match=r"field\.options\.hidden: 64 != 8"):
        reconstruct(cfg, tmp_path / "out", overrides=given)
    cfg = options(image_run, photo, "field=relu_pe")
    with pytest.raises(InputError, match=r"field\.preset: 'siren' != 'relu_pe'"):
        reconstruct(cfg, tmp_path / "out", overrides=["field=relu_pe"])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "genfield", "reconstruct", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_missing_checkpoint_and_differing_field_exit_2(image_run, photo, tmp_path):
    missing = run_cli(f"run={tmp_path / 'no_such_run'}", f"input={photo}", f"out={tmp_path}")
    assert missing.returncode == 2, missing.stderr
    assert f"run or checkpoint not found: {tmp_path / 'no_such_run'}" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    differs = run_cli(f"run={image_run}", f"input={photo}", "field.options.hidden=8", f"out={tmp_path}")
    assert differs.returncode == 2, differs.stderr
    assert "field.options.hidden: 64 != 8" in differs.stderr


# -- adapt once ------------------------------------------------------------------------------------
def counting(monkeypatch, cls, name: str) -> list[int]:
    """Count the calls of a real method of ``cls`` (it still runs)."""
    calls: list[int] = []
    original = getattr(cls, name)

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


def test_views_adapt_once_for_every_rendered_view(views_run, views_data, tmp_path, monkeypatch):
    from genfield.processes.models import ConditionedProcess, NeuralProcess

    encodings = counting(monkeypatch, NeuralProcess, "condition")  # the CNP's adaptation: encode C
    renders = counting(monkeypatch, ConditionedProcess, "predict")
    metrics = reconstruct(options(views_run, views_data / "scene_0003", "context_views=[1]"), tmp_path)
    assert len(metrics["rendered_views"]) == 4
    assert len(encodings) == 1 and len(renders) == 4


def test_shape_adapts_once_for_iou_and_every_marching_cubes_chunk(shape_run, tmp_path, monkeypatch):
    from genfield.meta.explicit import InitLearner
    from genfield.meta.learner import MetaLearner

    source = tmp_path / "box.obj"
    trimesh.creation.box(extents=(1.0, 0.6, 0.8)).export(source)
    inner_loops = counting(monkeypatch, InitLearner, "adapt")
    predictions = counting(monkeypatch, MetaLearner, "predict")
    # 48^3 grid points are two chunks of marching cubes (65536 points each), plus the IoU's targets
    reconstruct(options(shape_run, source, "mesh_resolution=48", "progress=false"), tmp_path / "out")
    assert len(inner_loops) == 1 and len(predictions) == 3


@pytest.mark.parametrize("which", ["image_run", "ct_run"])
def test_condition_on_predicts_what_reconstruct_does_in_any_number_of_chunks(which, request):
    """One adaptation, then predictions in chunks, equal a single reconstruct call (CNP, FOMAML)."""
    run = load_run(request.getfixturevalue(which))
    from genfield.forward import PointMap

    gen = torch.Generator().manual_seed(0)
    context = genfield.datasets.batch.Observations(
        torch.rand(1, 40, 2, generator=gen) * 2 - 1, torch.rand(1, 40, 1, generator=gen)
    )
    if run.config["resolved"]["head"] == "rgb":
        context = genfield.datasets.batch.Observations(context.queries, context.values.expand(-1, -1, 3))
    queries = torch.rand(1, 100, 2, generator=gen) * 2 - 1
    torch.manual_seed(3)
    whole = run.method.reconstruct(context, PointMap(), queries, PointMap(), num_samples=2)
    torch.manual_seed(3)
    adapted = run.method.condition_on(context, PointMap(), num_samples=2)
    parts = [adapted.predict(q, PointMap()).mean for q in queries.split(30, dim=1)]
    torch.testing.assert_close(torch.cat(parts, dim=1), whole.mean)


def test_default_adapted_falls_back_to_reconstruct_with_the_same_draws():
    """The interface's default ``condition_on`` predicts through ``reconstruct``, every call under
    the seed of the first: chunks of a stochastic method (an NP's latent draws) agree with one call."""
    from genfield.fields import build_field
    from genfield.forward import PointMap
    from genfield.interface import Deferred, Reconstructor
    from genfield.processes.models import build_process

    torch.manual_seed(0)
    model = build_process("np", build_field("siren", head="grey"), "image", width=16, latent_dim=4)
    torch.nn.init.normal_(model.to_modulation.weight)  # let the latent draws change the field
    gen = torch.Generator().manual_seed(0)
    context = genfield.datasets.batch.Observations(
        torch.rand(1, 30, 2, generator=gen) * 2 - 1, torch.rand(1, 30, 1, generator=gen)
    )
    queries = torch.rand(1, 50, 2, generator=gen) * 2 - 1
    first = model.reconstruct(context, PointMap(), queries, PointMap(), num_samples=3).mean
    second = model.reconstruct(context, PointMap(), queries, PointMap(), num_samples=3).mean
    assert not torch.allclose(first, second)  # unseeded calls draw differently
    deferred = Reconstructor.condition_on(model, context, PointMap(), num_samples=3)
    assert isinstance(deferred, Deferred)
    whole = deferred.predict(queries, PointMap()).mean
    parts = torch.cat([deferred.predict(q, PointMap()).mean for q in queries.split(20, dim=1)], dim=1)
    torch.testing.assert_close(parts, whole)


# -- CT units and angles ---------------------------------------------------------------------------
def test_angles_in_degrees_need_the_unit_and_are_converted(tmp_path):
    degrees = np.array([0.0, 30.0, 60.0, 90.0, 135.0])
    np.save(tmp_path / "deg.npy", degrees)
    with pytest.raises(
        InputError, match=r"span \[0, 135\], outside \[0, 2 pi\) radians: give angle_unit=deg"
    ):
        parse_angles(str(tmp_path / "deg.npy"))
    converted = parse_angles(str(tmp_path / "deg.npy"), unit="deg")
    torch.testing.assert_close(converted, torch.as_tensor(np.radians(degrees), dtype=torch.float32))
    as_radians = parse_angles(str(tmp_path / "deg.npy"), unit="rad")  # taken as they are
    torch.testing.assert_close(as_radians, torch.as_tensor(degrees, dtype=torch.float32))


def test_repeated_angles_are_refused_modulo_two_pi(tmp_path):
    np.save(tmp_path / "wrap.npy", np.array([0.5, 1.0, 0.5 + 2 * np.pi]))
    with pytest.raises(InputError, match="angle 0 and angle 2 are the same"):
        parse_angles(str(tmp_path / "wrap.npy"), unit="rad")
    np.save(tmp_path / "deg.npy", np.array([10.0, 370.0]))
    with pytest.raises(InputError, match="angle 0 and angle 1"):
        parse_angles(str(tmp_path / "deg.npy"), unit="deg")
    np.save(tmp_path / "half.npy", np.array([0.0, np.pi]))  # opposite views are distinct projections
    assert len(parse_angles(str(tmp_path / "half.npy"))) == 2


def test_skimage_sinogram_units_match_our_projector():
    """``from_skimage`` of ``skimage.transform.radon`` equals :func:`project_image` (odd N: same centre)."""
    from skimage.transform import radon

    n = 33
    rows, cols = np.mgrid[0:n, 0:n]
    image = ((rows - 14) ** 2 + (cols - 18) ** 2 < 60).astype(np.float64) * 0.8
    image += ((rows - 20) ** 2 / 4 + (cols - 12) ** 2 < 16) * 0.3
    angles = np.linspace(0, np.pi, 12, endpoint=False)
    theirs = from_skimage(torch.as_tensor(radon(image, theta=np.degrees(angles), circle=True)))
    ours = project_image(torch.as_tensor(image)[None], ct_queries(torch.as_tensor(angles), n), n).reshape(
        12, n
    )
    assert theirs.shape == (12, n)
    torch.testing.assert_close(theirs, ours, atol=1e-9, rtol=1e-9)  # same rays, same samples


def test_skimage_sinogram_through_reconstruct_gives_the_fbp_of_its_slice(ct_run, tmp_path):
    """The README's sinogram route with sinogram_units=skimage: FBP as bright as the slice."""
    from skimage.transform import radon

    n = 16
    rows, cols = np.mgrid[0:n, 0:n]
    image = ((rows - 7.5) ** 2 + (cols - 7.5) ** 2 < 20).astype(np.float64) * 0.7
    angles = np.linspace(0, np.pi, 16, endpoint=False)
    np.save(tmp_path / "angles.npy", angles)
    np.save(tmp_path / "sk.npy", radon(image, theta=np.degrees(angles), circle=True))  # (D, A)
    cfg = options(ct_run, tmp_path / "sk.npy", f"angles={tmp_path / 'angles.npy'}", "sinogram_units=skimage")
    reconstruct(cfg, tmp_path / "out")
    fbp_png = iio.imread(tmp_path / "out" / "fbp.png") / 255.0
    centre = (rows - 7.5) ** 2 + (cols - 7.5) ** 2 < 9  # away from the blurred rim
    assert abs(fbp_png[centre].mean() - 0.7) < 0.1  # not 16 / 2 = 8 times too bright (clipped at 1)


def test_ibaml_condition_on_keeps_the_posterior_for_chunked_mean_and_variance():
    from genfield.fields import build_field
    from genfield.forward import PointMap
    from genfield.meta.ibaml import IBaML

    torch.manual_seed(0)
    learner = IBaML(build_field("siren", head="grey", hidden=16), inner_steps=3)
    gen = torch.Generator().manual_seed(0)
    context = genfield.datasets.batch.Observations(
        torch.rand(1, 20, 2, generator=gen) * 2 - 1, torch.rand(1, 20, 1, generator=gen)
    )
    queries = torch.rand(1, 30, 2, generator=gen) * 2 - 1
    torch.manual_seed(1)
    whole = learner.reconstruct(context, PointMap(), queries, PointMap(), num_samples=4)
    torch.manual_seed(1)
    adapted = learner.condition_on(context, PointMap(), num_samples=4)
    parts = [adapted.predict(q, PointMap()) for q in queries.split(10, dim=1)]
    torch.testing.assert_close(torch.cat([p.mean for p in parts], dim=1), whole.mean)
    torch.testing.assert_close(torch.cat([p.variance for p in parts], dim=1), whole.variance)
    assert float(whole.variance.min()) > 0  # a real predictive variance, not zeros on both sides
