"""``genfield reconstruct``: reconstruct a new signal from its observations with a trained run.

The run's checkpoint carries its resolved config (method, field, data and ``resolved = {kind, head,
in_dim}``), so the model is rebuilt and loaded without the training data. The input file is turned
into the context observations the run was trained on, through the same loaders and forward maps:

* image runs: an image file, resized like the training data; the context is a random
  ``context_fraction`` of its pixels (seeded) or the non-zero pixels of a ``mask`` image. The full
  image is the ground truth: PSNR and SSIM.
* CT runs: a sinogram (``.npy`` ``(A, D)`` line integrals in domain units, rows = angles, or an
  image file with ``input_type=sinogram``) with its ``angles``; or an image of a slice, projected at
  ``angles`` (then the slice is the ground truth: PSNR of the method and of FBP). An angles file
  holds radians in ``[0, 2 pi)`` unless ``angle_unit=deg|rad`` says otherwise; repeated angles are
  refused. ``sinogram_units=skimage`` converts a ``skimage.transform.radon`` sinogram (``(D, A)``
  pixel sums: transposed and times ``2 / N``); values that look like pixel sums get a hint.
* shape runs: a mesh (labelled or surface context, as the run was trained) or a point cloud
  (surface context only); ``n_context`` points are drawn (seeded). The predictive mean is meshed by
  marching cubes; IoU on labelled points and Chamfer distance when a mesh gives the ground truth.
* views runs: a NeRF-synthetic scene folder (or an SRN scene); context views are ``context_views``
  (default: the run's first ``n_context_views``), the test views (or the remaining ones) are
  rendered and scored by PSNR.

Every option is type- and range-checked (:data:`OPTION_RULES`) before any file is read; the
method adapts to the context once (:meth:`~genfield.interface.Reconstructor.condition_on`) and
every rendered view and marching-cubes chunk is predicted from that state, with a progress bar.

Outputs go to ``out`` (default: Hydra's run directory): PNGs of the reconstruction and of the
predictive standard deviation where the method has one, a figure, ``metrics.json``. With ``out=``
Hydra writes nothing else (no ``./outputs``, no ``.hydra``); a call that fails on bad input leaves
no folder it made behind, and changes no file already in ``out``.
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
from genfield.interface import Adapted, Prediction, Reconstructor
from genfield.outputs import check_output_folder, discard_if_empty

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
#: ``input_type=``: what the input file is (``auto``: from its suffix; ``slice`` = an image of a CT slice).
INPUT_TYPES = ("auto", "image", "slice", "sinogram", "mesh", "points", "views")
ANGLE_UNITS = ("rad", "deg")
#: ``sinogram_units=``: ``domain`` line integrals (the image side is 2), or ``skimage`` for a
#: ``skimage.transform.radon`` sinogram (pixel sums, ``(D, A)``), converted by :func:`from_skimage`.
SINOGRAM_UNITS = ("domain", "skimage")
DESCRIBE = {
    "image": "an image file",
    "ct": "a sinogram (.npy) or an image of a slice",
    "shape": "a mesh or point-cloud file (.ply, .obj, .off, .stl, .glb, .xyz, .npy)",
    "views": "a NeRF-synthetic scene folder (transforms*.json + images)",
}


# --------------------------------------------------------------------------------------------------
# Options: every value checked before any work
# --------------------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


#: key -> (accepts, valid range in words, may be null). Hydra parses ``context_fraction=abc`` to the
#: string ``'abc'``, ``downscale=1.5`` to a float: each is refused here, before anything is read.
OPTION_RULES: dict[str, tuple[Callable[[Any], bool], str, bool]] = {
    "steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0", True),
    "num_samples": (lambda v: _is_int(v) and v >= 1, "an integer >= 1", False),
    "seed": (lambda v: _is_int(v) and v >= 0, "an integer >= 0", False),
    "progress": (lambda v: isinstance(v, bool), "true or false", False),
    "out": (lambda v: isinstance(v, str) and v != "", "a folder path", True),
    "mask": (lambda v: isinstance(v, str) and v != "", "an image file", True),
    "context_fraction": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]", True),
    "input_type": (lambda v: v in INPUT_TYPES, f"one of {', '.join(INPUT_TYPES)}", False),
    "angles": (lambda v: isinstance(v, str) and v != "", "a .npy file of angles or even:<A>", True),
    "angle_unit": (lambda v: v in ANGLE_UNITS, f"one of {', '.join(ANGLE_UNITS)}", True),
    "sinogram_scale": (lambda v: _is_number(v) and v > 0, "a finite number > 0", False),
    "sinogram_units": (lambda v: v in SINOGRAM_UNITS, f"one of {', '.join(SINOGRAM_UNITS)}", False),
    "n_context": (lambda v: _is_int(v) and v >= 1, "an integer >= 1", True),
    "n_target": (lambda v: _is_int(v) and v >= 1, "an integer >= 1", True),
    "mesh_resolution": (lambda v: _is_int(v) and 8 <= v <= 1024, "an integer in [8, 1024]", False),
    "context_views": (
        lambda v: isinstance(v, list | tuple) and len(v) > 0 and all(_is_int(i) and i >= 0 for i in v),
        "a non-empty list of view indices >= 0, e.g. [0,3]",
        True,
    ),
    "downscale": (lambda v: _is_int(v) and v >= 1, "an integer >= 1", False),
}


def check_options(cfg: Mapping[str, Any]) -> None:
    """Raise :class:`InputError` (``key=value: expected ...``) for the first option out of range."""
    for key, (accepts, expected, nullable) in OPTION_RULES.items():
        value = cfg.get(key)
        if value is None and nullable:
            continue
        if not accepts(value):
            raise InputError(f"{key}={value!r}: expected {expected}{' (or null)' if nullable else ''}")


def _first(*values: Any) -> Any:
    """The first value that is not ``None`` (an explicit 0 is a value, not a default)."""
    return next((v for v in values if v is not None), None)


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
    """``image``, ``sinogram``, ``mesh``, ``points`` or ``views`` (a folder), from the path, or
    ``forced`` (``input_type=``; ``slice`` is an image) where the file can be one."""
    if forced not in INPUT_TYPES:
        raise InputError(f"input_type={forced!r}: expected one of {', '.join(INPUT_TYPES)}")
    if not path.exists():
        raise InputError(f"input not found: {path}")
    suffix = path.suffix.lower()
    guessed = _guess_input_type(path, suffix, forced)
    wanted = "image" if forced == "slice" else forced
    if forced == "auto" or wanted == guessed:
        return guessed
    possible = {
        "image": suffix in IMAGE_SUFFIXES,
        "sinogram": suffix in (".npy", *IMAGE_SUFFIXES),
        "mesh": suffix in (*MESH_SUFFIXES, ".ply"),
        "points": suffix in (*POINT_SUFFIXES, ".ply", ".npy"),
        "views": path.is_dir(),
    }
    if not possible[wanted]:
        raise InputError(f"input_type={forced} does not fit input {path} (a {guessed} input by its suffix)")
    return wanted


def _guess_input_type(path: Path, suffix: str, forced: str) -> str:
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


def _adapt(run: Run, context: Observations, context_map, cfg: Mapping[str, Any]) -> Adapted:
    """Adapt the run's method to the context once; every later prediction reuses the state."""
    torch.manual_seed(int(cfg["seed"]))
    samples = int(cfg["num_samples"])
    return run.method.condition_on(context, context_map, steps=_steps(cfg), num_samples=samples)


def _progress(cfg: Mapping[str, Any], total: int, what: str, unit: str):
    """A progress bar on stderr (``progress=false``: none)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit=unit, disable=not cfg.get("progress", True), leave=False)


def _progress_over(cfg: Mapping[str, Any], items: Sequence[Any], what: str, unit: str):
    """Iterate ``items`` with a progress bar (``progress=false``: none)."""
    from tqdm import tqdm

    return tqdm(items, desc=what, unit=unit, disable=not cfg.get("progress", True), leave=False)


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
    size = int(_first(run.data.get("size"), 32))
    image = square_image(_read_image(path, grey), size).to(_device(run))
    height, width, channels = image.shape
    pixels = rearrange(image, "h w c -> (h w) c")
    if cfg.get("mask"):
        index = _mask_index(Path(str(cfg["mask"])), path, size).to(image.device)
    else:
        fraction = _first(cfg.get("context_fraction"), run.data.get("context_fraction"), 0.1)
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
def parse_angles(spec: Any, default_count: int | None = None, unit: str | None = None) -> torch.Tensor:
    """Projection angles ``(A,)`` in radians from ``even:<A>`` or a ``.npy`` file.

    A file's angles are radians in ``[0, 2 pi)`` unless ``unit`` says otherwise (``rad``: any
    radians, ``deg``: degrees): degrees taken as radians silently would give a wrong geometry.
    Repeated angles (modulo ``2 pi``) are refused: they add no information and usually mean a
    wrong file or unit.
    """
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
    low, high = float(angles.min()), float(angles.max())
    if unit is None and (low < 0 or high >= 2 * math.pi):
        raise InputError(
            f"angles {path} span [{low:.4g}, {high:.4g}], outside [0, 2 pi) radians: give angle_unit=deg "
            "if they are degrees (angle_unit=rad to use them as radians anyway)"
        )
    if unit == "deg":
        angles = np.radians(angles)
    order = np.argsort(np.mod(angles, 2 * math.pi), kind="stable")
    wrapped = np.mod(angles, 2 * math.pi)[order]
    same = np.flatnonzero(np.diff(wrapped) <= 1e-9 * 2 * math.pi)
    if same.size:
        i, j = sorted(int(k) for k in order[[same[0], same[0] + 1]])
        raise InputError(
            f"angles {path} repeat: angle {i} and angle {j} are the same projection angle "
            f"({float(angles[i]):.6g} and {float(angles[j]):.6g} rad); each projection needs its own angle"
        )
    return torch.as_tensor(angles, dtype=torch.float32)


def from_skimage(sinogram: torch.Tensor) -> torch.Tensor:
    """A ``skimage.transform.radon`` sinogram ``(D, A)`` of an ``N x N`` image (``D = N``, pixel
    sums) in genfield's layout and units: ``(A, D)`` line integrals over a domain of side 2, i.e.
    ``ours = skimage^T * 2 / N`` (see the geometry docstring of :mod:`genfield.forward.ct`)."""
    return rearrange(sinogram, "d a -> a d") * (2.0 / sinogram.shape[0])


#: Beyond this, line integrals of an attenuation image in [0, 1] over a domain of side 2 (at most 2)
#: look like pixel sums: a hint about ``sinogram_units=skimage``.
PLAUSIBLE_LINE_INTEGRAL = 4.0


def _sinogram(path: Path, kind: str, cfg: Mapping[str, Any]) -> torch.Tensor:
    if kind == "sinogram" and path.suffix.lower() == ".npy":
        try:
            array = np.asarray(np.load(path), dtype=np.float64)
        except (OSError, ValueError, TypeError) as error:
            raise InputError(f"cannot read sinogram {path}: {str(error).splitlines()[0]}") from None
    else:
        array = _read_image(path, grey=True)[..., 0].astype(np.float64)
    if array.ndim != 2 or not np.isfinite(array).all():
        raise InputError(f"sinogram {path} must be a finite 2-D array (angles, detectors), got {array.shape}")
    sinogram = torch.as_tensor(array)
    if cfg.get("sinogram_units", "domain") == "skimage":
        sinogram = from_skimage(sinogram)
    sinogram = sinogram * float(cfg.get("sinogram_scale", 1.0))
    top = float(sinogram.abs().max())
    if not top < 1e6:  # float32 field outputs and FBP overflow long before this: refuse, write nothing
        raise InputError(
            f"sinogram {path} holds values up to {top:.3g}; line integrals in domain units are expected "
            "(an image in [0, 1] gives at most 2): rescale it with sinogram_scale="
        )
    return sinogram.float()


def _warn_if_pixel_sums(sinogram: torch.Tensor, path: Path, cfg: Mapping[str, Any]) -> None:
    """A hint on stderr when a sinogram in domain units looks like pixel sums (skimage's units)."""
    top = float(sinogram.abs().max())
    if top > PLAUSIBLE_LINE_INTEGRAL and cfg.get("sinogram_units", "domain") == "domain":
        print(
            f"genfield: warning: sinogram {path} holds values up to {top:.3g}, more than line integrals "
            "of an image in [0, 1] (at most 2); for a skimage.transform.radon sinogram give "
            "sinogram_units=skimage",
            file=sys.stderr,
        )


def reconstruct_ct(run: Run, path: Path, kind: str, cfg: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """A CT slice from a sinogram and its angles, or from the projections of a slice image."""
    from genfield.datasets.ct import SinogramImageDataset
    from genfield.forward.ct import ParallelBeamProjection, ct_queries, fbp, project_image
    from genfield.metrics import psnr, ssim
    from genfield.viz.figures import ct_figure, save_image

    resolution = int(_first(run.data.get("resolution"), 32))
    n_samples = int(_first(run.data.get("n_samples"), resolution))
    truth = None
    if kind == "image":  # a slice: project it at the angles; it is the ground truth
        slice_image = torch.as_tensor(_read_image(path, grey=True))
        truth = SinogramImageDataset([slice_image], resolution=resolution)[0].image  # (R, R, 1)
        default = int(_first(run.data.get("eval_context_angles"), 8))
        angles = parse_angles(cfg.get("angles"), default, cfg.get("angle_unit"))
        n_det = int(_first(run.data.get("n_detectors"), resolution))
        queries = ct_queries(angles[None], n_det)
        values = project_image(truth[None], queries, n_samples)
        sinogram = rearrange(values[0], "(a d) 1 -> a d", d=n_det)
    else:
        sinogram = _sinogram(path, kind, cfg)
        angles = parse_angles(cfg.get("angles"), unit=cfg.get("angle_unit"))
        if len(angles) != sinogram.shape[0]:
            hint = (
                " (a skimage.transform.radon sinogram is (detectors, angles): give sinogram_units=skimage)"
                if len(angles) == sinogram.shape[1]
                else ""
            )
            raise InputError(
                f"sinogram {path} has {sinogram.shape[0]} rows (angles) but {len(angles)} angles "
                f"were given (rows are angles){hint}"
            )
        _warn_if_pixel_sums(sinogram, path, cfg)
        n_det = sinogram.shape[1]
        queries = ct_queries(angles[None], n_det)
        values = rearrange(sinogram, "a d -> 1 (a d) 1")
    device = _device(run)
    projector = ParallelBeamProjection(n_samples=n_samples)
    grid = grid_coords((resolution, resolution), device=device)[None]
    context = Observations(queries.to(device), values.to(device))
    prediction = _adapt(run, context, projector, cfg).predict(grid, PointMap())
    image = rearrange(prediction.mean.detach().cpu(), "1 (h w) 1 -> h w", h=resolution)
    std = prediction.signal_std
    std = None if std is None else rearrange(std.detach().cpu(), "1 (h w) 1 -> h w", h=resolution)
    baseline = fbp(sinogram, angles, output_size=resolution)
    for name, result in (("reconstruction", image), ("FBP", baseline), ("predictive std", std)):
        if result is not None and not bool(torch.isfinite(result).all()):  # check before writing
            raise InputError(
                f"the {name} of {path} is not finite (NaN or inf): the sinogram's values (up to "
                f"{float(sinogram.abs().max()):.3g}) are far from the run's training data; rescale with "
                "sinogram_scale="
            )
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
    n_context = int(_first(cfg.get("n_context"), data.get("n_context"), 300))
    metrics: dict[str, Any] = {"context": context, "target": target}
    truth_mesh = None
    if kind == "mesh":
        batch, truth_mesh = _mesh_batch(path, data, target, context, n_context, cfg)
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
    adapted = _adapt(run, batch.context, batch.forward_map, cfg)  # once: the IoU and every grid chunk
    if truth_mesh is not None:
        prediction = adapted.predict(batch.target.queries, batch.forward_map)
        metrics["iou"] = float(iou(_inside(prediction.mean, target), _inside(batch.target.values, target))[0])
    resolution = int(cfg["mesh_resolution"])
    mesh = _mesh_of_mean(adapted, _device(run), target, _level(target), resolution, cfg, out)
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
    n_target = int(_first(cfg.get("n_target"), data.get("n_target"), 2048))
    n_uniform = int(_first(data.get("n_uniform"), 4096))
    n_near = int(_first(data.get("n_near"), 4096))
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


def _mesh_of_mean(
    adapted: Adapted, device: torch.device, target: str, level: float, resolution: int, cfg, out: Path
):
    """Marching cubes of the predictive mean; ``mesh.ply`` and ``mesh.png``, or ``mesh.txt`` why not.

    The method adapted once (``adapted``); each grid chunk is only a prediction from that state.
    """
    from genfield.viz.meshes import extract_mesh, render_mesh_preview, save_mesh

    bar = _progress(cfg, resolution**3, "marching cubes", "pt")

    def field_fn(points: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(int(cfg["seed"]))  # same seed for every chunk: the same draws of sampling methods
        with torch.no_grad():
            mean = adapted.predict(points[None], PointMap(), variance=False).mean[0]
        bar.update(len(points))
        return mean

    try:
        with bar:
            mesh = extract_mesh(field_fn, resolution, level, kind=target, device=device)
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

    scene, test = load_scene(path, int(cfg["downscale"]))
    chosen = cfg.get("context_views")
    count = int(_first(run.data.get("n_context_views"), 1))
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
        n_samples=int(_first(run.data.get("n_samples"), 64)),
        n_importance=int(_first(run.data.get("n_importance"), 0)),
        stratified=False,
    )
    colours = rearrange(scene.images[views], "v h w c -> 1 (v h w) c").to(device)
    context = Observations(rays(scene, views), colours)
    height, width = test.image_size
    means, stds = [], []
    adapted = _adapt(run, context, renderer, cfg)  # once: every view is rendered from this state
    for k in _progress_over(cfg, targets, "views", "view"):  # one view at a time bounds the memory
        with torch.no_grad():
            prediction = adapted.predict(rays(test, [k]), renderer)
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
    cfg = {**option_defaults(), **cfg}
    check_options(cfg)
    out = Path(out_dir)
    check_output_folder(out, "out")
    checkpoint = find_checkpoint(cfg["run"])
    check_overrides(stored_config(checkpoint), cfg, overrides, str(checkpoint))
    path = Path(str(cfg["input"])).expanduser()
    given = input_type(path, str(cfg.get("input_type") or "auto"))
    run = load_run(checkpoint, resolve_device(str(cfg.get("device") or "auto")))
    if given not in ACCEPTS[run.kind]:
        hint = ""
        if run.kind == "ct" and given == "points":  # an (A, 3) array looks like a point cloud
            hint = " (if it is a sinogram with 3 detector bins, say input_type=sinogram)"
        raise InputError(
            f"input {path} is {'a folder' if given == 'views' else f'a {given} file'}, but run "
            f"{checkpoint} was trained on {run.kind} data ({run.data.get('name')}): give "
            f"{DESCRIBE[run.kind]}{hint}"
        )
    existed = out.exists()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(cfg["seed"]))
    work: dict[str, Callable[[], dict[str, Any]]] = {
        "image": lambda: reconstruct_image(run, path, cfg, out),
        "ct": lambda: reconstruct_ct(run, path, given, cfg, out),
        "shape": lambda: reconstruct_shape(run, path, given, cfg, out),
        "views": lambda: reconstruct_views(run, path, cfg, out),
    }
    try:
        results = work[run.kind]()
    except InputError:
        if not existed:
            discard_if_empty(out)
        raise
    metrics = {
        "run": str(checkpoint),
        "input": str(path),
        "kind": run.kind,
        "method": run.name,
        "steps": _steps(cfg),
        "num_samples": int(cfg["num_samples"]),
        "seed": int(cfg["seed"]),
        **results,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def run(cfg: DictConfig) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    from genfield.builders import plain

    out = Path(str(cfg.out)).expanduser() if cfg.get("out") else run_dir()
    try:
        metrics = reconstruct(plain(cfg), out, list(HydraConfig.get().overrides.task))
    except InputError:
        if cfg.get("out"):
            if not _OUT_EXISTED.get(str(out), False):
                discard_if_empty(out)
        else:  # no empty timestamped folder (nor empty outputs/reconstruct/) per failed call
            discard_if_empty(out, up_to=Path.cwd())
        raise
    scores = ", ".join(
        f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float) and not k.endswith("_max")
    )
    print(f"{metrics['method']} ({metrics['kind']}) on {metrics['input']}: {scores}; outputs in {out}")
    return metrics


@hydra.main(version_base="1.3", config_path="../" + CONFIG_PATH, config_name="reconstruct")
def _hydra_app(cfg: DictConfig) -> None:
    _guard(lambda: run(cfg))


def app() -> None:
    """``genfield reconstruct``: check the overrides, select the run's config groups, then Hydra."""
    sys.argv = [sys.argv[0], *_guard(lambda: prepare_argv(sys.argv[1:]))]
    _hydra_app()


#: Whether each ``out=`` folder existed before Hydra made it (then a failing call never removes it).
_OUT_EXISTED: dict[str, bool] = {}


def prepare_argv(argv: Sequence[str]) -> list[str]:
    """The command line Hydra gets: overrides parsed first (a one-line error naming the bad one),
    the run's groups selected, and with ``out=`` Hydra's run directory *is* ``out`` (checked
    writable first), with no ``.hydra`` subfolder or log file: nothing is written to ``./outputs``
    and a file already in ``out`` is never touched by a failing call."""
    values = override_values(argv)
    argv = with_run_groups(argv)
    out = values.get("out")
    if out and not any(a.startswith("hydra.run.dir=") for a in argv):
        folder = Path(str(out)).expanduser()
        check_output_folder(folder, "out")
        _OUT_EXISTED[str(folder)] = folder.exists()
        quoted = str(folder).replace("'", "\\'")  # Hydra's quoted string: only quotes are escaped
        argv = [*argv, f"hydra.run.dir='{quoted}'", "hydra.output_subdir=null", "hydra/job_logging=stdout"]
    return argv


def override_values(argv: Sequence[str]) -> dict[str, Any]:
    """``{key: value}`` of ``key=value`` overrides as Hydra parses them; a value Hydra cannot parse
    (non-ASCII characters, ``=`` or ``,`` unquoted) is an error saying how to quote it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    values: dict[str, Any] = {}
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
        except HydraException as error:
            key, value = arg.split("=", 1)
            raise InputError(
                f"cannot parse override {arg!r} ({str(error).splitlines()[0]}): quote a value with spaces, "
                f"',', '=' or non-ASCII characters for Hydra, e.g. \"{key}='{value}'\" in the shell"
            ) from None
        if override.is_sweep_override():
            continue
        values[override.get_key_element()] = override.value()
    return values


def option_defaults() -> dict[str, Any]:
    """The options of ``configs/reconstruct.yaml`` (the one home of their defaults)."""
    from omegaconf import OmegaConf

    path = Path(__file__).parent.parent / CONFIG_PATH / "reconstruct.yaml"
    config = OmegaConf.to_container(OmegaConf.load(path))
    return {k: v for k, v in config.items() if k not in ("defaults", "hydra", "run", "input")}
