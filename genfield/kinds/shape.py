"""Shapes: occupancy or signed distance at 3-D points, scored by the IoU of the predicted inside.

Data configs ``shapes`` (procedural CSG shapes) and ``mesh_folder``. The context is labelled (or
unlabelled surface) points, the target points near and away from the surface
(:class:`~genfield.datasets.shapes.ShapeSplit`); evaluation scores the batch's own target points.
The figure is a marching-cubes mesh (.ply) and a shaded preview per method, from a field over the
domain: one a caller gives, or the method's ``reconstruct`` adapted to the first signal's context.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from genfield.datasets.batch import Observations, SignalBatch
from genfield.datasets.shape_split import SURFACE_LEVEL, inside_by_value
from genfield.errors import InputError
from genfield.forward import PointMap
from genfield.interface import Adapted, Prediction
from genfield.kinds.base import (
    DataBundle,
    KindSpec,
    cache_folder,
    classical,
    given,
    make_bundle,
    option,
    require_folder,
    three_way,
)
from genfield.kinds.inputs import progress, seeded

if TYPE_CHECKING:
    from genfield.classical.base import Baseline


def reconstructed_field(method: Any, batch: SignalBatch) -> Callable[[torch.Tensor], torch.Tensor]:
    """A field over 3-D points ``(P, 3) -> (P, 1)``: ``method`` conditioned once on the first signal's
    context (:meth:`~genfield.interface.Reconstructor.condition_on`), so every chunk of a
    marching-cubes grid reuses the same adapted state."""
    first = batch.select(slice(0, 1))
    adapted = method.condition_on(first.context, first.forward_map)

    def field_fn(points: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return adapted.predict(points[None], PointMap(), variance=False).mean[0]

    return field_fn


def sampling_options(cfg: Mapping[str, Any]) -> dict[str, int]:
    """The sample counts data config ``cfg`` sets (the rest are :class:`SamplingSpec`'s defaults)."""
    return {k: int(cfg[k]) for k in ("n_uniform", "n_near") if cfg.get(k) is not None}


def read_points(path: Path) -> np.ndarray:
    """A point cloud ``(N, 3)`` from ``.npy``, ``.xyz``/``.txt``/``.pts`` text or a ``.ply``."""
    try:
        if path.suffix.lower() == ".npy":
            points = np.load(path)
        elif path.suffix.lower() == ".ply":
            import trimesh

            points = np.asarray(trimesh.load(path, process=False).vertices)
        else:
            points = np.loadtxt(path, ndmin=2)
    except Exception as error:  # numpy and trimesh raise many types
        raise InputError(f"cannot read point cloud {path}: {str(error).splitlines()[0]}") from None
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < 3 or len(points) == 0:
        raise InputError(f"point cloud {path} must be (N, 3) with N >= 1, got {points.shape}")
    if not np.isfinite(points[:, :3]).all():
        raise InputError(f"point cloud {path} holds NaN or infinite coordinates")
    return points[:, :3]


def mesh_signal(path: Path, cfg: Mapping[str, Any], split: Any, seed: int) -> Any:
    """A mesh file normalised and labelled like data config ``cfg``'s shapes, with enough samples
    for ``split``'s half-uniform, half-near draws of the larger of its context and target."""
    from genfield.datasets.shapes import SamplingSpec, ShapeSignal, load_mesh, normalize_mesh, sample_mesh

    mesh = normalize_mesh(load_mesh(path))
    base, need = SamplingSpec(**sampling_options(cfg)), max(split.n_context, split.n_target)
    spec = replace(
        base,
        n_uniform=max(base.n_uniform, need),
        n_near=max(base.n_near, need),
        n_surface=max(base.n_surface, split.n_context),
    )
    arrays = {k: torch.from_numpy(v) for k, v in sample_mesh(mesh, spec, np.random.default_rng(seed)).items()}
    return ShapeSignal(**arrays, mesh=mesh, name=path.name, n_uniform=spec.n_uniform)


def mesh_of_mean(adapted: Adapted, device: torch.device, target: str, out: Path, options: Mapping[str, Any]):
    """Marching cubes of the predictive mean; ``mesh.ply`` and ``mesh.png``, or ``mesh.txt`` why not.

    The method adapted once (``adapted``); each grid chunk is only a prediction from that state.
    """
    from genfield.viz.meshes import extract_mesh, render_mesh_preview, save_mesh

    resolution = int(options["mesh_resolution"])
    bar = progress(options, "marching cubes", "pt", total=resolution**3)

    def field_fn(points: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(int(options["seed"]))  # every chunk: the same draws of sampling methods
        with torch.no_grad():
            mean = adapted.predict(points[None], PointMap(), variance=False).mean[0]
        bar.update(len(points))
        return mean

    try:
        with bar:
            mesh = extract_mesh(field_fn, resolution, SURFACE_LEVEL[target], kind=target, device=device)
    except ValueError as error:  # the level set is not crossed: say so, keep the other outputs
        (out / "mesh.txt").write_text(f"{error}\n")
        print(f"genfield: no mesh: {error}", file=sys.stderr)
        return None
    save_mesh(mesh, out / "mesh.ply")
    render_mesh_preview(mesh, out / "mesh.png")
    return mesh


def mesh_metrics(
    adapted: Adapted, device: torch.device, batch: SignalBatch, out: Path, options: Mapping[str, Any]
) -> dict[str, Any]:
    """:func:`mesh_of_mean` written into ``out``; the Chamfer distance of its mesh to a mesh input, or
    to the input points, and the mesh's file name (None where the level set is not crossed)."""
    from genfield.metrics import chamfer_distance, chamfer_points

    truth, seed = batch.metadata[0].get("mesh"), int(options["seed"])
    mesh = mesh_of_mean(adapted, device, batch.extras["target"], out, options)
    metrics: dict[str, Any] = {}
    if mesh is not None and truth is not None:
        metrics["chamfer"] = chamfer_distance(mesh, truth, n_points=4096, seed=seed)
    elif mesh is not None:
        import trimesh

        samples, _ = trimesh.sample.sample_surface(mesh, 4096, seed=seed)
        reference = torch.as_tensor(batch.extras["input_points"], dtype=torch.float64)[:20_000]
        metrics["chamfer_to_input_points"] = float(chamfer_points(torch.as_tensor(samples), reference))
    metrics["mesh"] = None if mesh is None else "mesh.ply"
    return metrics


class ShapeKind(KindSpec):
    name = "shape"
    in_dim = 3
    metric = "iou"
    tokenizer = "points"
    local_features = "set_convolution"
    #: PONP reads a 16^3 grid of set-convolution features (Convolutional Occupancy Networks' volume
    #: encoder); a 32^3 grid costs 8x per step
    process_defaults = MappingProxyType(
        {
            "ponp": {
                "local_features": True,
                "local_options": {"resolution": 16, "channels": (16, 32, 64), "scales": (1.0, 2.0)},
            }
        }
    )
    #: the mean shape from at most 32 training shapes: its cost is reading them
    baselines = (classical("rbf"), classical("nearest"), classical("mean-shape", max_shapes=32))
    accepts = ("mesh", "points")
    describe = "a mesh or point-cloud file (.ply, .obj, .off, .stl, .glb, .xyz, .npy)"

    def head(self, cfg: Mapping[str, Any], channels: int) -> str:
        from genfield.datasets.shapes import ShapeSplit

        return str(option(cfg, "target", ShapeSplit.target))  # the split's default target

    def build_data(self, cfg: Mapping[str, Any], seed: int) -> DataBundle:
        from genfield.datasets.shapes import MeshFolder

        sampling, cache = sampling_options(cfg), cache_folder(cfg, "shapes")
        if cfg["name"] == "shapes":
            from genfield.datasets.builtin.shapes import ProceduralShapes

            n, evals = int(option(cfg, "n_signals", 64)), max(int(option(cfg, "eval_signals", 8)), 4)
            parts = tuple(
                ProceduralShapes(count, seed=seed + offset, cache_dir=cache, **sampling)
                for count, offset in ((n, 0), (evals, 1_000_003), (evals, 2_000_003))
            )
        else:
            folder = MeshFolder(require_folder(cfg), cache_dir=cache, **sampling)
            parts = three_way(folder, cfg, seed)
        return make_bundle(cfg, self.name, parts, self.head(cfg, 1), *self.splits(cfg))

    def splits(self, cfg: Mapping[str, Any]) -> tuple[Callable, Callable]:
        from genfield.datasets.shapes import ShapeSplit

        split = ShapeSplit(target=self.head(cfg, 1), **given(cfg, "n_context", "context", "n_target"))
        return split, split

    def read_input(self, path: Path, given: str, run: Any, options: Mapping[str, Any]) -> SignalBatch:
        """A mesh sampled and split as the run's data (labelled or surface context), or a point cloud
        (surface context only); ``n_context`` points drawn with the seed."""
        from genfield.datasets.shapes import normalize_points

        split = self.splits(run.data)[1]
        n_context, n_target = (option(options, k, getattr(split, k)) for k in ("n_context", "n_target"))
        split = replace(split, n_context=int(n_context), n_target=int(n_target))
        if given == "mesh":
            return split([mesh_signal(path, run.data, split, int(options["seed"]))], seeded(options))
        if split.context != "surface":
            raise InputError(
                f"run {run.checkpoint} was trained on labelled context (points with inside/outside "
                f"values); the point cloud {path} gives only surface points: give a mesh file, or "
                "use a run trained with data.context=surface"
            )
        points = normalize_points(read_points(path))
        pick = torch.randperm(len(points), generator=seeded(options))[: split.n_context]
        queries = torch.as_tensor(points, dtype=torch.float32)[pick][None]
        observed = Observations(queries, torch.full((1, len(pick), 1), SURFACE_LEVEL[split.target]))
        extras = {"target": split.target, "context": "surface", "input_points": points}
        return SignalBatch("shape", PointMap(), observed, observed, [{"name": path.name}], extras=extras)

    def write_outputs(
        self,
        out: Path,
        batch: SignalBatch,
        adapted: Adapted,
        run: Any,
        options: Mapping[str, Any],
        references: Mapping[str, Prediction] | None = None,  # in out/baselines/, not in this figure
    ) -> dict[str, Any]:
        """``mesh.ply`` and ``mesh.png`` of the predictive mean; IoU on the labelled targets and the
        Chamfer distance to a mesh input, or to the input points."""
        from genfield.metrics import iou

        target, truth = batch.extras["target"], batch.metadata[0].get("mesh")
        metrics: dict[str, Any] = {"context": batch.extras["context"], "target": target}
        metrics["n_context"] = batch.context.num_observations
        if truth is not None:
            mean = adapted.predict(batch.target.queries.to(run.device), batch.forward_map).mean.cpu()
            truth_inside = inside_by_value(batch.target.values, target)
            metrics["iou"] = float(iou(inside_by_value(mean, target), truth_inside)[0])
        return {**metrics, **mesh_metrics(adapted, run.device, batch, out, options)}

    def write_baseline(
        self,
        out: Path,
        batch: SignalBatch,
        baseline: Baseline,
        prediction: Prediction,
        options: Mapping[str, Any],
    ) -> dict[str, Any]:
        """``mesh.ply`` and ``mesh.png`` of the baseline's field over the domain
        (:class:`~genfield.classical.shapes.BaselineField`); IoU where the mesh is known, Chamfer."""
        from genfield.classical.shapes import BaselineField

        metrics = {}
        if batch.metadata[0].get("mesh") is not None:
            metrics["iou"] = float(self.score(prediction.mean, batch)["iou"][0])
        field = BaselineField(baseline, batch)
        return {**metrics, **mesh_metrics(field, torch.device("cpu"), batch, out, options)}

    def score(self, mean: torch.Tensor, batch: SignalBatch) -> dict[str, torch.Tensor]:
        from genfield.metrics import iou

        target = batch.extras.get("target", "occupancy")
        return {"iou": iou(inside_by_value(mean, target), inside_by_value(batch.target.values, target))}

    def write_figures(
        self,
        out: Path,
        batch: SignalBatch,
        predictions: Mapping[str, Prediction],
        *,
        max_signals: int = 4,
        mesh_resolution: int = 64,
        field_fns: Mapping[str, Callable] | None = None,
        methods: Mapping[str, Any] | None = None,
    ) -> list[Path]:
        from genfield.viz.meshes import extract_mesh, render_mesh_preview, save_mesh

        if field_fns is None:
            field_fns = {name: reconstructed_field(m, batch) for name, m in (methods or {}).items()}
        target = batch.extras.get("target", "occupancy")
        written: list[Path] = []
        for name, field_fn in field_fns.items():
            try:
                mesh = extract_mesh(
                    field_fn,
                    resolution=mesh_resolution,
                    level=SURFACE_LEVEL[target],
                    kind=target,
                )
            except ValueError as error:  # the level set was not crossed: say so, keep going
                (out / f"mesh_{name}.txt").write_text(str(error))
                continue
            written.append(save_mesh(mesh, out / f"mesh_{name}.ply"))
            written.append(render_mesh_preview(mesh, out / f"mesh_{name}.png"))
        return written
