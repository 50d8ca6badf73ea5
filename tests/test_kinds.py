"""The data kind as a plugin: the registry, each built-in kind's spec, and a kind added by a test alone.

Every score is checked against an independent NumPy computation of the same metric from the
predicted values, and the toy 1-D kind below is registered from this module only: it runs through
``evaluate``, the process and method builders and ``run_comparison`` without a genfield file naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from einops import rearrange

from genfield.builders import build_data, build_field_for, build_method
from genfield.comparison import load_group, run_comparison
from genfield.datasets.batch import Observations, SignalBatch
from genfield.errors import InputError
from genfield.evaluation import evaluate
from genfield.fields.coords import axis_coords
from genfield.forward import FORWARD_MAPS, PointMap
from genfield.interface import Prediction, Reconstructor
from genfield.kinds import KINDS, KindSpec, get_kind, kind_names, register_kind, unregister_kind
from genfield.kinds.base import make_bundle, option
from genfield.processes import KIND_PRESETS, build_process
from genfield.reports import write_figures

SMALL_FIELD = {"hidden": 16, "n_layers": 2}


def np_psnr(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """PSNR in dB per signal (axis 0) of values in [0, 1], by NumPy."""
    mse = ((pred - truth) ** 2).reshape(len(pred), -1).mean(axis=1)
    return 10 * np.log10(1.0 / mse)


def np_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a & b).sum(1) / (a | b).sum(1)


class FixedPrediction(Reconstructor):
    """A method whose prediction is given: it checks the queries it is asked for, then returns them."""

    def __init__(self, values: torch.Tensor, queries: torch.Tensor | None = None) -> None:
        super().__init__()
        self.values, self.queries = values, queries

    def compute_gradients(self, batch):
        return {}

    def reconstruct(
        self, context, context_map, queries, query_map, *, steps=None, num_samples=16, variance=True
    ):
        assert queries.shape[:2] == self.values.shape[:2]
        if self.queries is not None:
            torch.testing.assert_close(queries, self.queries)
        return Prediction(mean=self.values, variance=torch.full_like(self.values, 0.01))


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------
def test_the_registry_lists_the_four_kinds_and_an_unknown_kind_lists_them():
    assert KINDS == ("image", "ct", "shape", "views")
    assert set(KINDS) <= set(kind_names())
    for name in KINDS:
        assert get_kind(name).name == name
    with pytest.raises(InputError) as error:
        get_kind("mri")
    assert all(name in str(error.value) for name in KINDS) and "'mri'" in str(error.value)
    with pytest.raises(InputError, match="unknown data kind 'mri'.*ct, image, shape, views"):
        build_data({"name": "scans", "kind": "mri"})
    with pytest.raises(InputError, match="already registered"):
        register_kind(get_kind("image"))


def test_kind_presets_and_default_tokenizers_come_from_the_specs():
    from genfield.processes.tokenizers import DEFAULT_TOKENIZER

    assert KIND_PRESETS == {
        ("ponp", "ct"): {"local_features": True, "context_subsample": (1, 20)},
        ("ponp", "image"): {"local_features": True},
        ("ponp", "shape"): {
            "local_features": True,
            "local_options": {"resolution": 16, "channels": (16, 32, 64), "scales": (1.0, 2.0)},
        },
        ("ponp", "views"): {"local_features": True},
    }
    assert DEFAULT_TOKENIZER == {
        "image": "points",
        "ct": "projections",
        "shape": "points",
        "views": "patches",
    }
    field = build_field_for(
        {"preset": "siren", "options": SMALL_FIELD}, {"kind": "ct", "head": "attenuation"}
    )
    ponp = build_process("ponp", field, "ct")
    assert ponp.config.local_features and ponp.config.context_subsample == (1, 20)
    assert type(ponp.local).__name__ == "BackProjectionFeatures"  # the part the ct spec names
    assert build_process("ponp", field, "ct", local_features=False).local is None  # options win


# --------------------------------------------------------------------------------------------------
# The built-in kinds: a tiny bundle each, scored through its spec
# --------------------------------------------------------------------------------------------------
TINY = {
    "faces": {"size": 12, "batch_size": 2, "eval_signals": 2},
    "ct_phantoms": {"resolution": 12, "n_signals": 4, "batch_size": 2, "eval_signals": 2},
    "shapes": {"n_signals": 2, "n_uniform": 256, "n_near": 256, "n_context": 32, "n_target": 64},
    "views": {"n_signals": 8, "n_views": 5, "size": 8, "eval_signals": 1, "n_samples": 8},
}


def _tiny_bundle(name, tmp_path):
    overrides = dict(TINY[name])
    if name in ("shapes", "views"):
        overrides["cache_dir"] = str(tmp_path / "cache")
    return build_data(load_group("data", name, overrides), seed=0)


def _truth_and_prediction(batch: SignalBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The kind's truth at its dense queries, and a prediction off it by a known perturbation."""
    if batch.kind in ("image", "ct"):
        truth = rearrange(batch.ground_truth, "s h w c -> s (h w) c")
    else:
        truth = batch.target.values
    if batch.kind == "shape":  # flip the label of every 7th point
        flip = torch.zeros_like(truth, dtype=torch.bool)
        flip[:, ::7] = True
        inside = truth <= 0 if batch.extras["target"] == "sdf" else truth > 0.5
        return truth, torch.where(flip ^ inside, 1.0, 0.0).to(truth)
    offset = torch.linspace(-0.2, 0.2, truth.shape[1])[None, :, None]
    return truth, truth + offset  # partly outside [0, 1]: the score clamps


@pytest.mark.parametrize("name", list(TINY))
def test_each_kind_builds_a_tiny_bundle_and_evaluate_scores_through_its_spec(name, tmp_path):
    bundle = _tiny_bundle(name, tmp_path)
    spec = get_kind(bundle.kind)
    assert bundle.in_dim == spec.in_dim
    batch = bundle.eval_batch("test")
    assert type(batch.forward_map) is FORWARD_MAPS[spec.forward_map]  # the map a process asks for channels
    queries, query_map = spec.dense_queries(batch)
    truth, predicted = _truth_and_prediction(batch)
    evaluation = evaluate(FixedPrediction(predicted), batch)
    value = evaluation.metrics[spec.metric].numpy()
    if spec.metric == "iou":
        np.testing.assert_allclose(value, np_iou(predicted.numpy() > 0.5, truth.numpy() > 0.5), rtol=1e-6)
        assert (value < 1).all()
    else:
        expected = np_psnr(np.clip(predicted.numpy(), 0, 1), truth.numpy())
        np.testing.assert_allclose(value, expected, rtol=1e-5)
    if bundle.kind in ("image", "ct"):  # pixel queries: the grid the data's own observations use
        from genfield.metrics import ssim

        assert isinstance(query_map, PointMap)
        assert queries.shape == (batch.num_signals, truth.shape[1], 2)
        images = predicted.clamp(0, 1).reshape(batch.ground_truth.shape)  # row-major pixels
        torch.testing.assert_close(evaluation.metrics["ssim"], ssim(images, batch.ground_truth))
    if bundle.kind == "image":  # context pixels sit at the dense queries of their index
        index = batch.extras["context_index"]
        picked = torch.gather(queries, 1, index[..., None].expand(-1, -1, 2))
        torch.testing.assert_close(picked, batch.context.queries)
        assert spec.context_mask(batch).sum() == index.numel()
    figures = {"faces": "reconstructions.png", "ct_phantoms": "ct_oracle_0.png", "views": "novel_views.png"}
    written = write_figures(tmp_path / "figures", batch, {"oracle": evaluation.prediction}, max_signals=1)
    if name == "shapes":  # meshes need a field over the domain: a ball of radius 0.5
        assert written == []
        written = write_figures(
            tmp_path / "figures",
            batch,
            {},
            mesh_resolution=16,
            shape_fields={"ball": lambda p: 1.0 - p.norm(dim=-1, keepdim=True)},  # occupancy > 0.5 inside
        )
        figures[name] = "mesh_ball.ply"
    assert figures[name] in {p.name for p in written} and all(p.is_file() for p in written)


def test_fbp_baseline_is_a_baseline_object_that_gets_better_with_views():
    from genfield.classical import FBP as FBPBaseline
    from genfield.datasets.ct import CTSplit, PhantomDataset

    phantoms = PhantomDataset(3, 32, seed=5)
    signals = [phantoms[i] for i in range(3)]
    baseline = FBPBaseline()
    assert baseline.fit(phantoms) is baseline
    scores = {}
    for views in (4, 64):
        batch = CTSplit(n_context_angles=views, context_angles="even")(signals)
        prediction = baseline.reconstruct(batch)
        assert prediction.mean.shape == (3, 32 * 32, 1)
        scores[views] = get_kind("ct").score(prediction.mean, batch)["psnr"]
    assert (scores[64] > scores[4] + 5).all() and (scores[64] > 20).all(), scores


# --------------------------------------------------------------------------------------------------
# A kind that only this module knows: 1-D waves observed at points
# --------------------------------------------------------------------------------------------------
@dataclass
class Wave:
    values: torch.Tensor  # (N, 1) in [0, 1]
    name: str


def waves(count: int, n_points: int, seed: int) -> list[Wave]:
    gen = torch.Generator().manual_seed(seed)
    x = axis_coords(n_points)[:, None]
    out = []
    for i in range(count):
        frequency, phase = 1 + 2 * torch.rand(1, generator=gen), 6.28 * torch.rand(1, generator=gen)
        out.append(Wave(0.5 + 0.4 * torch.sin(frequency * 3.14 * x + phase), f"wave{seed}-{i}"))
    return out


@dataclass
class WaveSplit:
    n_context: int = 8

    def __call__(self, signals, generator=None) -> SignalBatch:
        values = torch.stack([s.values for s in signals])  # (S, N, 1)
        s, n = values.shape[:2]
        x = axis_coords(n)[None, :, None].expand(s, -1, -1)
        index = torch.stack([torch.randperm(n, generator=generator)[: self.n_context] for _ in signals])
        index = index.sort(dim=1).values[..., None]
        context = Observations(torch.gather(x, 1, index), torch.gather(values, 1, index))
        return SignalBatch("wave", PointMap(), context, Observations(x, values), ground_truth=values)


class LinearInterpolation:
    """The toy kind's classical baseline: piecewise-linear interpolation of the context."""

    name = "linear"

    def fit(self, train):
        self.seen = len(train)
        return self

    def reconstruct(self, batch: SignalBatch) -> Prediction:
        x, y = batch.context.queries[..., 0].cpu().numpy(), batch.context.values[..., 0].cpu().numpy()
        where = get_kind(batch.kind).dense_queries(batch)[0][..., 0].cpu().numpy()
        mean = np.stack([np.interp(where[s], x[s], y[s]) for s in range(len(x))])[..., None]
        return Prediction(mean=torch.as_tensor(mean, dtype=torch.float32, device=batch.context.values.device))


class WaveKind(KindSpec):
    name = "wave"
    in_dim = 1
    metric = "psnr"
    tokenizer = "points"
    process_defaults = {"cnp": {"width": 24}}
    baselines = (LinearInterpolation,)

    def head(self, cfg, channels):
        return "grey"

    def build_data(self, cfg, seed):
        n_points, count = int(option(cfg, "n_points", 32)), int(option(cfg, "n_signals", 8))
        parts = (waves(count, n_points, seed), waves(4, n_points, seed + 1), waves(4, n_points, seed + 2))
        return make_bundle(cfg, self.name, parts, "grey", WaveSplit(int(option(cfg, "n_context", 8))))

    def score(self, mean, batch):
        from genfield.metrics import psnr

        return {"psnr": psnr(mean.clamp(0, 1), batch.target.values)}


@pytest.fixture
def wave_kind():
    spec = register_kind(WaveKind())
    yield spec
    unregister_kind(spec.name)
    assert "wave" not in kind_names()


WAVES = {"name": "waves", "kind": "wave", "n_points": 32, "n_signals": 8, "n_context": 8}


def test_a_kind_registered_by_a_test_runs_through_evaluate_and_the_builders(wave_kind):
    from genfield.fitting import RandomInitFit

    bundle = build_data(WAVES)
    assert bundle.in_dim == 1 and bundle.head == "grey"
    batch = bundle.eval_batch("test", count=3)
    field = build_field_for({"preset": "siren", "options": SMALL_FIELD}, bundle)
    evaluation = evaluate(RandomInitFit(field, lr=1e-2), batch, steps=30)
    expected = np_psnr(evaluation.prediction.mean.clamp(0, 1).numpy(), batch.target.values.numpy())
    np.testing.assert_allclose(evaluation.metrics["psnr"].numpy(), expected, rtol=1e-5)
    # the kind's process defaults and a method config's by_kind both reach the new kind
    assert build_process("cnp", field, "wave").config.width == 24
    assert build_process("cnp", field, "wave", by_kind={"wave": {"width": 20}}).config.width == 20
    with pytest.raises(InputError, match="by_kind has unknown kind"):
        build_process("cnp", field, "wave", by_kind={"wavez": {}})


def test_a_kind_registered_by_a_test_runs_through_run_comparison(wave_kind, tmp_path):
    methods = ["fomaml", "cnp", "random_init"]
    budget = load_group("budget", "tiny")
    rows = run_comparison(
        [WAVES], methods, "siren", budget, tmp_path, device="cpu", field_overrides=SMALL_FIELD, progress=False
    )
    assert {r.kind for r in rows} == {"wave"}
    classical = [r for r in rows if r.route == "classical"]
    assert [(r.method, r.setting) for r in classical] == [("linear", "linear")]
    # the baseline's row is the PSNR of np.interp on the same test batch, computed here
    bundle = build_data({**WAVES, "eval_signals": budget["eval_signals"]})
    batch = bundle.eval_batch("test")
    x, y = batch.context.queries[..., 0].numpy(), batch.context.values[..., 0].numpy()
    grid = batch.target.queries[..., 0].numpy()
    interp = np.stack([np.interp(grid[s], x[s], y[s]) for s in range(len(x))])[..., None]
    assert classical[0].value == pytest.approx(np_psnr(interp, batch.target.values.numpy()).mean(), rel=1e-5)
    # each method's rows are its own settings under the budget
    for name in methods:
        method = build_method(
            load_group("method", name),
            build_field_for({"preset": "siren", "options": SMALL_FIELD}, bundle),
            bundle,
        )
        assert [(r.setting, r.steps) for r in rows if r.method == name] == method.settings(budget)
    assert all(np.isfinite(r.value) for r in rows)
    assert "## wave (PSNR" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "waves_psnr_vs_steps.png").is_file()


def test_compare_on_ct_scores_the_fbp_baseline_row_like_fbp_of_the_context(tmp_path):
    from genfield.forward.ct import fbp

    budget = {**load_group("budget", "tiny"), "random_init_steps": 2}
    data = {"resolution": 12, "n_signals": 4, "eval_context_angles": 6}
    rows = run_comparison(
        ["ct_phantoms"],
        ["random_init"],
        "siren",
        budget,
        tmp_path,
        device="cpu",
        data_overrides={"ct_phantoms": data},
        field_overrides=SMALL_FIELD,
        progress=False,
    )
    assert [(r.method, r.route, r.setting) for r in rows] == [
        ("gaussian-prior", "classical", "gaussian-prior"),
        ("sart-5", "classical", "sart-5"),
        ("fbp", "classical", "fbp"),
        ("mean", "classical", "mean"),
        ("random_init", "baseline", "fit 2"),
    ]
    bundle = build_data({**load_group("data", "ct_phantoms", data), "eval_signals": budget["eval_signals"]})
    batch = bundle.eval_batch("test")
    angles, n_det = batch.extras["context_angles"], batch.context.layout.n_detectors
    sinogram = batch.context.values[..., 0].reshape(batch.num_signals, angles.shape[1], n_det)
    image = fbp(sinogram, angles, output_size=12).clamp(0, 1).numpy()
    expected = np_psnr(image, batch.ground_truth[..., 0].numpy()).mean()
    assert next(r for r in rows if r.method == "fbp").value == pytest.approx(expected, rel=1e-5)
    assert (tmp_path / "ct_phantoms" / "ct_random_init_0.png").is_file()
