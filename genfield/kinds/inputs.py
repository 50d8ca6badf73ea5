"""What ``genfield reconstruct`` reads, before any kind is involved: the type of an input file.

:func:`input_type` names an input ``image``, ``sinogram``, ``mesh``, ``points`` or ``views`` (a
folder) from its suffix (or ``input_type=``); each kind lists the types it reads
(:attr:`~genfield.kinds.base.KindSpec.accepts`) and reads them
(:meth:`~genfield.kinds.base.KindSpec.read_input`). The small helpers the kinds' readers and
writers share (decoding an image as an :class:`InputError`, a seeded generator, a std image, a
progress bar) live here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genfield.errors import InputError
from genfield.interface import Prediction

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
MESH_SUFFIXES = (".obj", ".off", ".stl", ".glb", ".gltf")
POINT_SUFFIXES = (".xyz", ".txt", ".pts")
#: ``input_type=``: what the input file is (``auto``: from its suffix; ``slice`` = an image of a CT slice).
INPUT_TYPES = ("auto", "image", "slice", "sinogram", "mesh", "points", "views")


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


def read_image_file(path: Path, grey: bool) -> np.ndarray:
    """:func:`~genfield.datasets.images.read_image`; a decoder's error is one :class:`InputError` line."""
    from genfield.datasets.images import read_image

    try:
        return read_image(path, grey=grey)
    except InputError:
        raise
    except Exception as error:  # the decoders raise many types
        raise InputError(f"cannot read image {path}: {str(error).splitlines()[0]}") from None


def seeded(options: Mapping[str, Any]) -> torch.Generator:
    """A CPU generator seeded with ``options["seed"]``: the context draws of one call."""
    return torch.Generator().manual_seed(int(options["seed"]))


def on_cpu(prediction: Prediction) -> Prediction:
    """``prediction``'s mean and variances, detached, on the CPU (for files and figures)."""

    def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().cpu()

    return Prediction(
        cpu(prediction.mean), cpu(prediction.variance), noise_variance=cpu(prediction.noise_variance)
    )


def save_std(path: Path, std: torch.Tensor | None) -> float | None:
    """Write a standard deviation image scaled by its maximum (returned, for metrics.json)."""
    from genfield.viz.figures import save_image

    if std is None:
        return None
    top = float(std.max())
    save_image(path, (std / top if top > 0 else std).clamp(0, 1))
    return top


def progress(options: Mapping[str, Any], what: str, unit: str, total: int | None = None, items=None):
    """A progress bar on stderr over ``items`` or up to ``total`` (``progress=false``: none)."""
    from tqdm import tqdm

    hidden = not options.get("progress", True)
    return tqdm(items, total=total, desc=what, unit=unit, disable=hidden, leave=False)


def finite_or_refuse(images: Iterable[tuple[str, torch.Tensor | None]], where: Path, hint: str) -> None:
    """Refuse (before anything is written) a reconstruction that is NaN or infinite somewhere."""
    for name, image in images:
        if image is not None and not bool(torch.isfinite(image).all()):
            raise InputError(f"the {name} of {where} is not finite (NaN or inf): {hint}")
