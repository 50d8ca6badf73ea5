"""``genfield reconstruct``: reconstruct a new signal from its observations with a trained run.

The run's checkpoint carries its resolved config (method, field, data and ``resolved = {kind, head,
in_dim}``), so the model is rebuilt and loaded without the training data. The input file is turned
into the context observations the run was trained on, through the same loaders and forward maps:

* image runs: an image file, resized like the training data; the context is a random
  ``context_fraction`` of its pixels (seeded) or the non-zero pixels of a ``mask`` image. The full
  image is the ground truth: PSNR and SSIM.
* CT runs: a sinogram (``.npy`` ``(A, D)`` line integrals in domain units, rows = angles, or an
  image file with ``input_type=sinogram``) with its ``angles``; or an image of a slice, projected at
  ``angles`` (then the slice is the ground truth: PSNR of the method and of FBP).
* shape runs: a mesh (labelled or surface context, as the run was trained) or a point cloud
  (surface context only); ``n_context`` points are drawn (seeded). The predictive mean is meshed by
  marching cubes; IoU on labelled points and Chamfer distance when a mesh gives the ground truth.
* views runs: a NeRF-synthetic scene folder (or an SRN scene); context views are ``context_views``
  (default: the run's first ``n_context_views``), the test views (or the remaining ones) are
  rendered and scored by PSNR.

Outputs go to ``out`` (default: Hydra's run directory): PNGs of the reconstruction and of the
predictive standard deviation where the method has one, a figure, ``metrics.json``.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from einops import rearrange
from omegaconf import DictConfig

from genfield.app import CONFIG_PATH, _guard, run_dir
from genfield.checkpoint import config_differences, load_checkpoint, stored_config
from genfield.datasets.batch import Observations, SignalBatch
from genfield.errors import InputError
from genfield.fields.coords import grid_coords
from genfield.forward import PointMap
from genfield.interface import Prediction, Reconstructor

CHECKPOINT = Path("checkpoints") / "last.safetensors"
#: The config groups a run is built from, and the key that names the group's option.
GROUPS = {"method": "name", "data": "name", "field": "preset"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
MESH_SUFFIXES = (".obj", ".off", ".stl", ".glb", ".gltf")
POINT_SUFFIXES = (".xyz", ".txt", ".pts")
#: What each run kind accepts (input types from :func:`input_type`).
ACCEPTS = {
    "image": ("image",),
    "ct": ("image", "sinogram"),
    "shape": ("mesh", "points"),
    "views": ("views",),
}
DESCRIBE = {
    "image": "an image file",
    "ct": "a sinogram (.npy) or an image of a slice",
    "shape": "a mesh or point-cloud file (.ply, .obj, .off, .stl, .glb, .xyz, .npy)",
    "views": "a NeRF-synthetic scene folder (transforms*.json + images)",
}


# --------------------------------------------------------------------------------------------------
# The trained run
# --------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """A trained model and the config it was trained with."""

    method: Reconstructor
    config: dict[str, Any]
    checkpoint: Path

    @property
    def kind(self) -> str:
        return self.config["resolved"]["kind"]

    @property
    def data(self) -> dict[str, Any]:
        return self.config.get("data", {})

    @property
    def name(self) -> str:
        return str(self.config["method"].get("name", "method"))


def find_checkpoint(run: str | Path) -> Path:
    """The checkpoint file of a run directory (``checkpoints/last.safetensors``), or ``run`` itself."""
    path = Path(str(run)).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / CHECKPOINT, path / CHECKPOINT.name):
            if candidate.is_file():
                return candidate
        raise InputError(f"no checkpoint in run directory {path} (expected {path / CHECKPOINT})")
    raise InputError(f"run or checkpoint not found: {path}")


def load_run(run: str | Path, device: torch.device | str = "cpu") -> Run:
    """Rebuild a run's method from its checkpoint's stored config and load its weights."""
    from genfield.builders import build_field_for, build_method

    checkpoint = find_checkpoint(run)
    config = stored_config(checkpoint)
    field = build_field_for(config["field"], config["resolved"])
    method = build_method(config["method"], field, config["resolved"])
    load_checkpoint(checkpoint, method, restore_rng=False)
    method = method.to(device)
    if torch.device(device).type == "cuda":
        field.to(device)
    return Run(method.eval(), config, checkpoint)


def override_keys(overrides: Sequence[str]) -> list[str]:
    """The dotted keys of Hydra overrides (``+a.b=1`` -> ``a.b``; group selections -> ``field``)."""
    return [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return "<absent>"
        value = value[part]
    return value


def check_overrides(
    stored: Mapping[str, Any], requested: Mapping[str, Any], overrides: Sequence[str], where: str
) -> None:
    """Raise :class:`InputError` naming every overridden ``method.``/``data.``/``field.`` key whose
    value differs from the run's stored config.

    A group selection (``field=relu_pe``) is compared by name with the run's (``field.preset``);
    the rest of a selected group is the group file's defaults, not something the user asked for,
    so only dotted keys are compared value by value.
    """
    differences: list[str] = []
    for key in dict.fromkeys(override_keys(overrides)):  # each key once, in order
        group = key.split(".", 1)[0]
        if group not in GROUPS:
            continue
        if key == group:
            key = f"{group}.{GROUPS[group]}"
        mine, theirs = _lookup(requested, key), _lookup(stored, key)
        if isinstance(mine, Mapping) and isinstance(theirs, Mapping):
            differences += config_differences(dict(theirs), dict(mine), f"{key}.")
        elif mine != theirs:
            differences.append(f"{key}: {theirs!r} != {mine!r}")
    if differences:
        raise InputError(
            f"checkpoint {where} was trained with another config (stored != given): {'; '.join(differences)}"
        )


def with_run_groups(argv: Sequence[str]) -> list[str]:
    """Select the run's own config groups for overrides like ``field.options.hidden=32``.

    Hydra only accepts an override of a key inside a group that is selected; the run's stored
    config names the groups it was built from, so they are selected for the user (and the values
    are then compared with the stored ones by :func:`check_overrides`).
    """
    argv = list(argv)
    keys = override_keys([a for a in argv if not a.startswith("-")])
    needed = [g for g in GROUPS if g not in keys and any(k.startswith(f"{g}.") for k in keys)]
    runs = [a.split("=", 1)[1] for a in argv if a.startswith("run=")]
    if not needed or not runs:
        return argv
    config = stored_config(find_checkpoint(runs[-1]))
    return [*(f"{g}={config[g][GROUPS[g]]}" for g in needed), *argv]


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------
def input_type(path: Path, forced: str = "auto") -> str:
    """``image``, ``sinogram``, ``mesh``, ``points`` or ``views`` (a folder), from the path."""
    if not path.exists():
        raise InputError(f"input not found: {path}")
    suffix = path.suffix.lower()
    if path.is_dir():
        return "views"
    if suffix == ".npy":
        try:
            shape = np.load(path, mmap_mode="r").shape
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read {path}: {error}") from None
        return "points" if len(shape) == 2 and shape[1] == 3 and forced != "sinogram" else "sinogram"
    if suffix in IMAGE_SUFFIXES:
        return "sinogram" if forced == "sinogram" else "image"
    if suffix in MESH_SUFFIXES:
        return "mesh"
    if suffix in POINT_SUFFIXES:
        return "points"
    if suffix == ".ply":
        return "mesh" if _ply_has_faces(path) else "points"
    raise InputError(f"unknown input type {path} (suffix {suffix!r})")


def _ply_has_faces(path: Path) -> bool:
    """Whether a PLY file's header declares a non-empty face element."""
    with open(path, "rb") as file:
        for raw in file:
            line = raw.decode("ascii", "replace").strip()
            if line.startswith("element face"):
                return int(line.split()[-1]) > 0
            if line == "end_header":
                return False
    return False


def _read_image(path: Path, grey: bool) -> np.ndarray:
    from genfield.datasets.images import read_image

    try:
        return read_image(path, grey=grey)
    except InputError:
        raise
    except Exception as error:  # the decoders raise many types
        raise InputError(f"cannot read image {path}: {str(error).splitlines()[0]}") from None


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _save_std(path: Path, std: torch.Tensor | None) -> float | None:
    """Write a standard deviation image scaled by its maximum (returned, for metrics.json)."""
    from genfield.viz.figures import save_image

    if std is None:
        return None
    top = float(std.max())
    save_image(path, (std / top if top > 0 else std).clamp(0, 1))
    return top


def _predict(
    run: Run, context: Observations, context_map, queries, query_map, cfg, variance: bool = True
) -> Prediction:
    torch.manual_seed(int(cfg["seed"]))
    steps = cfg.get("steps")
    return run.method.reconstruct(
        context,
        context_map,
        queries,
        query_map,
        steps=None if steps is None else int(steps),
        num_samples=int(cfg["num_samples"]),
        variance=variance,
    )


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------
def reconstruct_image(run: Run, path: Path, cfg: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """An image from a random fraction of its pixels or from a mask's pixels."""
    from genfield.datasets.images import square_image
    from genfield.evaluation import as_images, evaluate
    from genfield.reports import write_figures
    from genfield.viz.figures import save_image

    grey = run.config["resolved"]["head"] == "grey"
    size = int(run.data.get("size") or 32)
    image = square_image(_read_image(path, grey), size).to(_device(run))
    height, width, channels = image.shape
    pixels = rearrange(image, "h w c -> (h w) c")
    if cfg.get("mask"):
        index = _mask_index(Path(str(cfg["mask"])), path, size).to(image.device)
    else:
        fraction = cfg.get("context_fraction") or run.data.get("context_fraction") or 0.1
        if not 0 < float(fraction) <= 1:
            raise InputError(f"context_fraction must be in (0, 1], got {fraction}")
        count = max(1, round(float(fraction) * height * width))
        index = torch.randperm(height * width, generator=_generator(cfg["seed"]))[:count]
        index = index.to(image.device)
    coords = grid_coords((height, width), device=image.device)
    batch = SignalBatch(
        kind="image",
        forward_map=PointMap(),
        context=Observations(coords[index][None], pixels[index][None]),
        target=Observations(coords[None], pixels[None]),
        metadata=[{"name": path.name}],
        ground_truth=image[None],
        extras={"image_size": (height, width), "context_index": index[None]},
    )
    torch.manual_seed(int(cfg["seed"]))
    steps = None if cfg.get("steps") is None else int(cfg["steps"])
    evaluation = evaluate(run.method, batch, steps=steps, num_samples=int(cfg["num_samples"]))
    prediction = evaluation.prediction
    save_image(out / "reconstruction.png", as_images(prediction.mean.detach(), image[None])[0].clamp(0, 1))
    std = prediction.signal_std
    std_max = _save_std(out / "std.png", None if std is None else as_images(std.detach(), image[None])[0])
    figures = write_figures(out, batch.to("cpu"), {run.name: _cpu(prediction)})
    return {
        "psnr": float(evaluation.metrics["psnr"][0]),
        "ssim": float(evaluation.metrics["ssim"][0]),
        "n_context": int(index.numel()),
        "image_size": [height, width],
        "std_max": std_max,
        "figure": [str(f) for f in figures],
    }


def _mask_index(mask_path: Path, image_path: Path, size: int) -> torch.Tensor:
    """Flat indices of the observed (non-zero) pixels of a mask, cropped and resized like the image."""
    from genfield.datasets.images import square_image

    if not mask_path.is_file():
        raise InputError(f"mask file not found: {mask_path}")
    mask = _read_image(mask_path, grey=True)
    image_shape = _read_image(image_path, grey=True).shape[:2]
    if mask.shape[:2] != image_shape:
        raise InputError(
            f"mask {mask_path} is {mask.shape[0]} x {mask.shape[1]} but image {image_path} is "
            f"{image_shape[0]} x {image_shape[1]}"
        )
    observed = square_image((mask > 0).astype(np.float32), size)[..., 0] >= 0.5
    index = torch.nonzero(observed.flatten()).flatten()
    if index.numel() == 0:
        raise InputError(f"mask {mask_path} observes no pixel (after resizing to {size} x {size})")
    return index


# --------------------------------------------------------------------------------------------------
# CT
# --------------------------------------------------------------------------------------------------
def parse_angles(spec: Any, default_count: int | None = None) -> torch.Tensor:
    """Projection angles ``(A,)`` in radians from ``even:<A>`` or a ``.npy`` file of radians."""
    if spec is None:
        if default_count is None:
            raise InputError("a sinogram needs its angles: angles=<file.npy of radians> or angles=even:<A>")
        spec = f"even:{default_count}"
    text = str(spec)
    if text.startswith("even:"):
        try:
            count = int(text[5:])
        except ValueError:
            count = 0
        if count < 1:
            raise InputError(f"angles={text!r}: expected even:<positive number of angles>")
        return torch.arange(count, dtype=torch.float32) * (math.pi / count)
    path = Path(text).expanduser()
    if not path.is_file():
        raise InputError(f"angles file not found: {path} (or use angles=even:<A>)")
    try:
        angles = np.asarray(np.load(path), dtype=np.float64)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read angles {path}: {error}") from None
    if angles.ndim != 1 or angles.size == 0 or not np.isfinite(angles).all():
        raise InputError(f"angles {path} must be a non-empty 1-D array of finite radians, got {angles.shape}")
    return torch.as_tensor(angles, dtype=torch.float32)


def _sinogram(path: Path, kind: str, cfg: Mapping[str, Any]) -> torch.Tensor:
    if kind == "sinogram" and path.suffix.lower() == ".npy":
        array = np.asarray(np.load(path), dtype=np.float32)
    else:
        array = _read_image(path, grey=True)[..., 0]
    if array.ndim != 2 or not np.isfinite(array).all():
        raise InputError(f"sinogram {path} must be a finite 2-D array (angles, detectors), got {array.shape}")
    return torch.as_tensor(array) * float(cfg.get("sinogram_scale", 1.0))


def reconstruct_ct(run: Run, path: Path, kind: str, cfg: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """A CT slice from a sinogram and its angles, or from the projections of a slice image."""
    from genfield.datasets.ct import SinogramImageDataset
    from genfield.forward.ct import ParallelBeamProjection, ct_queries, fbp, project_image
    from genfield.metrics import psnr, ssim
    from genfield.viz.figures import ct_figure, save_image

    resolution = int(run.data.get("resolution") or 32)
    n_samples = int(run.data.get("n_samples") or resolution)
    truth = None
    if kind == "image":  # a slice: project it at the angles; it is the ground truth
        slice_image = torch.as_tensor(_read_image(path, grey=True))
        truth = SinogramImageDataset([slice_image], resolution=resolution)[0].image  # (R, R, 1)
        default = int(run.data.get("eval_context_angles") or 8)
        angles = parse_angles(cfg.get("angles"), default)
        n_det = int(run.data.get("n_detectors") or resolution)
        queries = ct_queries(angles[None], n_det)
        values = project_image(truth[None], queries, n_samples)
        sinogram = rearrange(values[0], "(a d) 1 -> a d", d=n_det)
    else:
        sinogram = _sinogram(path, kind, cfg)
        angles = parse_angles(cfg.get("angles"))
        if len(angles) != sinogram.shape[0]:
            raise InputError(
                f"sinogram {path} has {sinogram.shape[0]} rows (angles) but {len(angles)} angles "
                f"were given (rows are angles: transpose a (detectors, angles) array)"
            )
        n_det = sinogram.shape[1]
        queries = ct_queries(angles[None], n_det)
        values = rearrange(sinogram, "a d -> 1 (a d) 1")
    device = _device(run)
    projector = ParallelBeamProjection(n_samples=n_samples)
    grid = grid_coords((resolution, resolution), device=device)[None]
    context = Observations(queries.to(device), values.to(device))
    prediction = _predict(run, context, projector, grid, PointMap(), cfg)
    image = rearrange(prediction.mean.detach().cpu(), "1 (h w) 1 -> h w", h=resolution)
    std = prediction.signal_std
    std = None if std is None else rearrange(std.detach().cpu(), "1 (h w) 1 -> h w", h=resolution)
    baseline = fbp(sinogram, angles, output_size=resolution)
    save_image(out / "reconstruction.png", image.clamp(0, 1))
    save_image(out / "fbp.png", baseline.clamp(0, 1))
    std_max = _save_std(out / "std.png", std)
    metrics: dict[str, Any] = {
        "n_angles": len(angles),
        "n_detectors": n_det,
        "resolution": resolution,
        "std_max": std_max,
    }
    if truth is not None:
        slices = torch.stack([image.clamp(0, 1), baseline.clamp(0, 1)])[..., None]
        reference = truth[None].expand(2, -1, -1, -1)
        metrics.update(
            dict(zip(("psnr", "psnr_fbp"), psnr(slices, reference).tolist(), strict=True)),
            **dict(zip(("ssim", "ssim_fbp"), ssim(slices, reference).tolist(), strict=True)),
        )
        ct_figure(out / "ct.png", sinogram, baseline, image, truth, std, angles, data_range=1.0)
    else:
        _ct_panels(out / "ct.png", sinogram, angles, baseline, image, std)
    return metrics


def _ct_panels(path: Path, sinogram, angles, baseline, image, std) -> Path:
    """sinogram | FBP | reconstruction (| std) when no ground truth is known."""
    from matplotlib.figure import Figure

    from genfield.viz.figures import save_figure

    panels = [("FBP", baseline, "gray"), ("reconstruction", image, "gray")]
    if std is not None:
        panels.append(("predictive std", std, "magma"))
    figure = Figure(figsize=(3.0 * (len(panels) + 1), 3.2), layout="constrained")
    axes = figure.subplots(1, len(panels) + 1)
    degrees = np.degrees(angles.numpy())
    axes[0].imshow(
        sinogram.numpy(),
        cmap="gray",
        aspect="auto",
        interpolation="nearest",
        extent=(-1.0, 1.0, float(degrees.max()), float(degrees.min())),
    )
    axes[0].set_title(f"sinogram ({sinogram.shape[0]} views)", fontsize=9)
    axes[0].set_ylabel("angle (degrees)", fontsize=8)
    for ax, (title, panel, cmap) in zip(axes[1:], panels, strict=True):
        shown = ax.imshow(panel.numpy(), cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        figure.colorbar(shown, ax=ax, shrink=0.8)
    return save_figure(figure, path)


# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------
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
    points = points[:, :3]
    if not np.isfinite(points).all():
        raise InputError(f"point cloud {path} holds NaN or infinite coordinates")
    return points


def normalize_points(points: np.ndarray, padding: float = 0.1) -> np.ndarray:
    """Centre the bounding box and scale its longest side to ``2 (1 - padding)`` (as meshes are)."""
    low, high = points.min(0), points.max(0)
    extent = float((high - low).max())
    if extent <= 0:
        raise InputError("the point cloud has no extent (all points coincide)")
    return (points - (low + high) / 2) * (2.0 * (1.0 - padding) / extent)


def reconstruct_shape(run: Run, path: Path, kind: str, cfg: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """A shape from sparse points of a mesh or a point cloud; marching cubes of the mean."""
    from genfield.metrics import iou

    data = run.data
    target = str(data.get("target") or "occupancy")
    context = str(data.get("context") or "labelled")
    n_context = int(cfg.get("n_context") or data.get("n_context") or 300)
    metrics: dict[str, Any] = {"context": context, "target": target}
    truth_mesh = None
    if kind == "mesh":
        batch, truth_mesh = _mesh_batch(path, data, target, context, n_context, cfg)
        prediction = _predict(
            run, batch.context, batch.forward_map, batch.target.queries, batch.forward_map, cfg
        )
        metrics["iou"] = float(iou(_inside(prediction.mean, target), _inside(batch.target.values, target))[0])
    else:
        if context != "surface":
            raise InputError(
                f"run {run.checkpoint} was trained on labelled context (points with inside/outside "
                f"values); the point cloud {path} gives only surface points: give a mesh file, or "
                "use a run trained with data.context=surface"
            )
        points = torch.as_tensor(normalize_points(read_points(path)), dtype=torch.float32)
        pick = torch.randperm(len(points), generator=_generator(cfg["seed"]))[:n_context]
        on_surface = 0.5 if target == "occupancy" else 0.0
        observed = Observations(points[pick][None], torch.full((1, len(pick), 1), on_surface))
        batch = SignalBatch("shape", PointMap(), observed, observed, extras={"target": target})
    metrics["n_context"] = batch.context.num_observations
    batch = batch.to(_device(run))
    resolution = int(cfg.get("mesh_resolution") or 64)
    mesh = _mesh_of_mean(run, batch, target, _level(target), resolution, cfg, out)
    if mesh is not None:
        from genfield.metrics import chamfer_distance, chamfer_points

        if truth_mesh is not None:
            metrics["chamfer"] = chamfer_distance(mesh, truth_mesh, n_points=4096, seed=int(cfg["seed"]))
        else:
            import trimesh

            samples, _ = trimesh.sample.sample_surface(mesh, 4096, seed=int(cfg["seed"]))
            reference = torch.as_tensor(normalize_points(read_points(path)), dtype=torch.float64)
            metrics["chamfer_to_input_points"] = float(
                chamfer_points(torch.as_tensor(samples), reference[:20_000])
            )
    metrics["mesh"] = None if mesh is None else "mesh.ply"
    return metrics


def _mesh_batch(path: Path, data, target: str, context: str, n_context: int, cfg):
    """Labelled samples of a mesh (normalised and sampled like the training data), split as the run was."""
    from genfield.datasets.shapes import (
        SamplingSpec,
        ShapeSignal,
        ShapeSplit,
        load_mesh,
        normalize_mesh,
        sample_mesh,
    )

    mesh = normalize_mesh(load_mesh(path))
    n_target = int(cfg.get("n_target") or data.get("n_target") or 2048)
    n_uniform = int(data.get("n_uniform") or 4096)
    n_near = int(data.get("n_near") or 4096)
    # enough samples for the split's half-uniform, half-near draws of the larger of the two sets
    need = max(n_context, n_target)
    spec = SamplingSpec(
        n_uniform=max(n_uniform, need), n_near=max(n_near, need), n_surface=max(4096, n_context)
    )
    arrays = sample_mesh(mesh, spec, np.random.default_rng(int(cfg["seed"])))
    signal = ShapeSignal(
        points=torch.from_numpy(arrays["points"]),
        sdf=torch.from_numpy(arrays["sdf"]),
        occupancy=torch.from_numpy(arrays["occupancy"]),
        surface_points=torch.from_numpy(arrays["surface_points"]),
        mesh=mesh,
        name=path.name,
        n_uniform=spec.n_uniform,
    )
    split = ShapeSplit(target=target, context=context, n_context=n_context, n_target=n_target)
    return split([signal], _generator(cfg["seed"])), mesh


def _level(target: str) -> float:
    """The iso-level of a shape's predictive mean: 0 for an SDF, 0.5 for occupancy.

    Every route predicts occupancy as a probability: the neural processes return the Bernoulli
    mean ``sigmoid(logit)``, and the meta-learners regress the 0/1 labels (MSE), so their field
    output is a probability estimate too; 0.5 is also the value of surface context points.
    """
    return 0.0 if target == "sdf" else 0.5


def _inside(values: torch.Tensor, target: str) -> torch.Tensor:
    """Inside flags of predicted or labelled values, at :func:`_level`."""
    return values <= _level(target) if target == "sdf" else values > _level(target)


def _mesh_of_mean(run: Run, batch: SignalBatch, target: str, level: float, resolution: int, cfg, out: Path):
    """Marching cubes of the predictive mean; ``mesh.ply`` and ``mesh.png``, or ``mesh.txt`` why not."""
    from genfield.viz.meshes import extract_mesh, render_mesh_preview, save_mesh

    def field_fn(points: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # same seed for every chunk: the same draws of stochastic methods
            return _predict(
                run, batch.context, batch.forward_map, points[None], PointMap(), cfg, variance=False
            ).mean[0]

    try:
        mesh = extract_mesh(field_fn, resolution, level, kind=target, device=_device(run))
    except ValueError as error:  # the level set is not crossed: say so, keep the other outputs
        (out / "mesh.txt").write_text(f"{error}\n")
        print(f"genfield: no mesh: {error}", file=sys.stderr)
        return None
    save_mesh(mesh, out / "mesh.ply")
    render_mesh_preview(mesh, out / "mesh.png")
    return mesh


# --------------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------------
def load_scene(folder: Path, downscale: int = 1) -> tuple[Any, Any | None]:
    """``(context scene, test scene or None)`` of a NeRF-synthetic (or SRN) scene folder."""
    from genfield.datasets.views import NerfSyntheticScene, SRNScene

    if (folder / "intrinsics.txt").is_file():
        return SRNScene(folder).load(), None
    listed = sorted(p.name for p in folder.glob("transforms*.json"))
    if not listed:
        scenes = sorted(d.name for d in folder.iterdir() if d.is_dir() and any(d.glob("transforms*.json")))
        if scenes:
            raise InputError(
                f"input {folder} holds {len(scenes)} scenes; give one scene folder, e.g. {folder / scenes[0]}"
            )
        raise InputError(f"no transforms*.json in {folder} (a NeRF-synthetic scene folder is expected)")
    context = NerfSyntheticScene(folder, "train", downscale=downscale).load()
    for split in ("test", "val"):
        if (folder / f"transforms_{split}.json").is_file():
            return context, NerfSyntheticScene(folder, split, downscale=downscale).load()
    return context, None


def reconstruct_views(run: Run, path: Path, cfg: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """Novel views of a scene from some of its views."""
    from genfield.forward.volume import VolumeRenderer, ray_queries
    from genfield.metrics import psnr
    from genfield.viz.figures import image_grid, save_image

    scene, test = load_scene(path, int(cfg.get("downscale") or 1))
    chosen = cfg.get("context_views")
    count = int(run.data.get("n_context_views") or 1)
    views = list(range(count)) if chosen is None else [int(v) for v in chosen]
    bad = [v for v in views if not 0 <= v < scene.num_views]
    if bad or not views:
        raise InputError(f"context_views {views} must be indices in [0, {scene.num_views}) of {path}")
    if test is None:  # no test split: the remaining views are the novel ones
        rest = [v for v in range(scene.num_views) if v not in views]
        if not rest:
            raise InputError(f"scene {path} has no views left to render besides context_views {views}")
        test, targets = scene, rest
    else:
        targets = list(range(test.num_views))
    device = _device(run)

    def rays(signal, index: list[int]) -> torch.Tensor:
        origins, directions = signal.rays(torch.tensor(index))
        queries = ray_queries(origins, directions, signal.near, signal.far, clip_to_cube=True)
        return rearrange(queries, "v n q -> 1 (v n) q").to(device)

    renderer = VolumeRenderer(
        n_samples=int(run.data.get("n_samples") or 64),
        n_importance=int(run.data.get("n_importance") or 0),
        stratified=False,
    )
    colours = rearrange(scene.images[views], "v h w c -> 1 (v h w) c").to(device)
    context = Observations(rays(scene, views), colours)
    height, width = test.image_size
    means, stds = [], []
    for k in targets:  # one view at a time bounds the memory of the ray samples
        with torch.no_grad():
            prediction = _predict(run, context, renderer, rays(test, [k]), renderer, cfg)
        mean = rearrange(prediction.mean.cpu(), "1 (h w) c -> h w c", h=height).clamp(0, 1)
        means.append(mean)
        save_image(out / f"view_{k:03d}.png", mean)
        if prediction.signal_std is not None:
            std = rearrange(prediction.signal_std.cpu(), "1 (h w) c -> h w c", h=height).mean(-1)
            stds.append(std)
            _save_std(out / f"std_{k:03d}.png", std)
    rendered, truth = torch.stack(means), test.images[targets]
    scores = psnr(rendered, truth)
    image_grid(
        out / "novel_views.png",
        truth,
        None,
        {run.name: rendered},
        {run.name: torch.stack(stds)[..., None].expand_as(rendered)} if stds else None,
        max_signals=4,
    )
    return {
        "psnr": float(scores.mean()),
        "psnr_per_view": [round(float(s), 4) for s in scores],
        "context_views": views,
        "rendered_views": targets,
        "image_size": [height, width],
    }


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------
def _device(run: Run) -> torch.device:
    return next(iter(run.method.parameters()), torch.empty(0)).device


def _steps(cfg: Mapping[str, Any]) -> int | None:
    return None if cfg.get("steps") is None else int(cfg["steps"])


def _cpu(prediction: Prediction) -> Prediction:
    def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().cpu()

    return Prediction(
        cpu(prediction.mean), cpu(prediction.variance), noise_variance=cpu(prediction.noise_variance)
    )


def reconstruct(cfg: Mapping[str, Any], out_dir: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Reconstruct ``cfg['input']`` with the run ``cfg['run']``; write files to ``out_dir``.

    ``cfg`` holds the options of ``genfield/configs/reconstruct.yaml`` (and any ``method``,
    ``data``, ``field`` groups selected); ``overrides`` are the command-line overrides, whose
    ``method.``/``data.``/``field.`` keys must agree with the run's stored config. Returns the
    metrics written to ``metrics.json``. Bad input raises :class:`~genfield.errors.InputError`.
    """
    from genfield.training import resolve_device

    if cfg.get("run") in (None, "???", ""):
        raise InputError("run=<run directory or checkpoint file> is required")
    if cfg.get("input") in (None, "???", ""):
        raise InputError("input=<file or folder> is required")
    checkpoint = find_checkpoint(cfg["run"])
    check_overrides(stored_config(checkpoint), cfg, overrides, str(checkpoint))
    path = Path(str(cfg["input"])).expanduser()
    given = input_type(path, str(cfg.get("input_type") or "auto"))
    run = load_run(checkpoint, resolve_device(str(cfg.get("device") or "auto")))
    if given not in ACCEPTS[run.kind]:
        raise InputError(
            f"input {path} is {'a folder' if given == 'views' else f'a {given} file'}, but run "
            f"{checkpoint} was trained on {run.kind} data ({run.data.get('name')}): give "
            f"{DESCRIBE[run.kind]}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(cfg["seed"]))
    work: dict[str, Callable[[], dict[str, Any]]] = {
        "image": lambda: reconstruct_image(run, path, cfg, out),
        "ct": lambda: reconstruct_ct(run, path, given, cfg, out),
        "shape": lambda: reconstruct_shape(run, path, given, cfg, out),
        "views": lambda: reconstruct_views(run, path, cfg, out),
    }
    metrics = {
        "run": str(checkpoint),
        "input": str(path),
        "kind": run.kind,
        "method": run.name,
        "steps": _steps(cfg),
        "num_samples": int(cfg["num_samples"]),
        "seed": int(cfg["seed"]),
        **work[run.kind](),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def run(cfg: DictConfig) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    from genfield.builders import plain

    out = Path(str(cfg.out)) if cfg.get("out") else run_dir()
    metrics = reconstruct(plain(cfg), out, list(HydraConfig.get().overrides.task))
    scores = ", ".join(
        f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float) and not k.endswith("_max")
    )
    print(f"{metrics['method']} ({metrics['kind']}) on {metrics['input']}: {scores}; outputs in {out}")
    return metrics


@hydra.main(version_base="1.3", config_path="../" + CONFIG_PATH, config_name="reconstruct")
def _hydra_app(cfg: DictConfig) -> None:
    _guard(lambda: run(cfg))


def app() -> None:
    """``genfield reconstruct``: select the run's config groups for dotted overrides, then Hydra."""
    sys.argv = [sys.argv[0], *_guard(lambda: with_run_groups(sys.argv[1:]))]
    _hydra_app()
