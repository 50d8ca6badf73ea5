"""Projection angles of CT: drawn for a split (:func:`draw_angles`), or read from a user's spec
(:func:`parse_angles`: ``even:<A>`` or a ``.npy`` file), in radians."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genfield.errors import InputError

ANGLE_SCHEMES = ("random", "even")


def draw_angles(
    scheme: str, n_signals: int, n_angles: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Projection angles ``(S, A)`` in [0, pi), ascending.

    ``"even"``: ``pi k / A`` for every signal; ``"random"``: independent uniform draws per signal.
    """
    if scheme == "even":
        return (torch.arange(n_angles) * (math.pi / n_angles)).expand(n_signals, n_angles).clone()
    if scheme == "random":
        angles = torch.rand(n_signals, n_angles, generator=generator, dtype=torch.float64) * math.pi
        return angles.sort(dim=-1).values.float()
    raise InputError(f"angle scheme {scheme!r} must be one of {', '.join(ANGLE_SCHEMES)}")


def parse_angles(spec: Any, default_count: int | None = None, unit: str | None = None) -> torch.Tensor:
    """Projection angles ``(A,)`` in radians from ``even:<A>`` or a ``.npy`` file.

    A file's angles are radians in ``[0, 2 pi)`` unless ``unit`` says otherwise (``rad``: any
    radians, ``deg``: degrees): degrees taken as radians silently would give a wrong geometry.
    Repeated angles (modulo ``2 pi``) are refused: they add no information and usually mean a
    wrong file or unit. ``spec=None`` is ``even:<default_count>`` where a default is given.
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
        return draw_angles("even", 1, count)[0]
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
    _refuse_repeats(angles, path)
    return torch.as_tensor(angles, dtype=torch.float32)


def _refuse_repeats(angles: np.ndarray, path: Path) -> None:
    """Raise :class:`InputError` naming the first two angles that are one projection (modulo 2 pi)."""
    order = np.argsort(np.mod(angles, 2 * math.pi), kind="stable")
    wrapped = np.mod(angles, 2 * math.pi)[order]
    same = np.flatnonzero(np.diff(wrapped) <= 1e-9 * 2 * math.pi)
    if same.size:
        i, j = sorted(int(k) for k in order[[same[0], same[0] + 1]])
        raise InputError(
            f"angles {path} repeat: angle {i} and angle {j} are the same projection angle "
            f"({float(angles[i]):.6g} and {float(angles[j]):.6g} rad); each projection needs its own angle"
        )
