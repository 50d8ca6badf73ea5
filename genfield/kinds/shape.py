"""Shapes: occupancy or signed distance at 3-D points, scored by the IoU of the predicted inside.

Data configs ``shapes`` (procedural CSG shapes) and ``mesh_folder``. The context is labelled (or
unlabelled surface) points, the target points near and away from the surface
(:class:`~genfield.datasets.shapes.ShapeSplit`); evaluation scores the batch's own target points.
The figure is a marching-cubes mesh (.ply) and a shaded preview per method, from a field over the
domain: one a caller gives, or the method's ``reconstruct`` adapted to the first signal's context.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from genfield.datasets.batch import SignalBatch
from genfield.datasets.shape_split import SURFACE_LEVEL, inside_by_value
from genfield.forward import PointMap
from genfield.interface import Prediction
from genfield.kinds.base import (
    DataBundle,
    KindSpec,
    classical,
    make_bundle,
    option,
    require_folder,
    three_way,
)


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


class ShapeKind(KindSpec):
    name = "shape"
    in_dim = 3
    metric = "iou"
    tokenizer = "points"
    #: the mean shape from at most 32 training shapes: its cost is reading them
    baselines = (classical("rbf"), classical("nearest"), classical("mean-shape", max_shapes=32))

    def head(self, cfg: Mapping[str, Any], channels: int) -> str:
        return str(option(cfg, "target", "occupancy"))

    def build_data(self, cfg: Mapping[str, Any], seed: int) -> DataBundle:
        from genfield.datasets.shapes import MeshFolder, ShapeSplit

        sampling = {k: cfg[k] for k in ("n_uniform", "n_near") if cfg.get(k) is not None}
        cache = cfg.get("cache_dir")
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
        split = ShapeSplit(
            target=self.head(cfg, 1),
            n_context=int(option(cfg, "n_context", 300)),
            context=str(option(cfg, "context", "labelled")),
            n_target=int(option(cfg, "n_target", 2048)),
        )
        return make_bundle(cfg, self.name, parts, self.head(cfg, 1), split)

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
