"""Shape samples: DeepSDF-style labelled points of a normalised mesh, computed once and cached.

Samples follow DeepSDF (Park et al., 2019) and Occupancy Networks (Mescheder et al., 2019): points
uniform in the cube plus surface points perturbed by Gaussian noise of one or more standard
deviations, each labelled with the occupancy and the signed distance of
:mod:`~genfield.datasets.meshes`. Samples are computed once per mesh and cached on disk
(:class:`ShapeCollection`), so later epochs only read an ``.npz`` file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh

from genfield.datasets.files import one_line
from genfield.datasets.meshes import NonWatertightMeshWarning, inside, unsigned_distance
from genfield.errors import InputError
from genfield.outputs import atomic_write

#: Bumped whenever the sampling or labelling code changes what a cache file holds.
CACHE_VERSION = 2


@dataclass
class ShapeSignal:
    """One shape with its labelled samples.

    Attributes:
        points: ``(P, 3)`` sample points in [-1, 1]^3; the first ``n_uniform`` are uniform in the
            cube, the rest near the surface.
        sdf: ``(P, 1)`` signed distance to the surface, negative inside.
        occupancy: ``(P, 1)`` bool, inside the shape.
        surface_points: ``(Q, 3)`` points sampled uniformly (by area) on the surface.
        mesh: the normalised mesh (ground truth for Chamfer distance and IoU).
        name: the shape's name (a relative path, or ``"<synset>/<id>"`` for ShapeNet).
        n_uniform: how many of ``points`` are uniform; ``None`` if unknown.
    """

    points: torch.Tensor
    sdf: torch.Tensor
    occupancy: torch.Tensor
    surface_points: torch.Tensor
    mesh: trimesh.Trimesh
    name: str
    n_uniform: int | None = None


@dataclass(frozen=True)
class SamplingSpec:
    """How many samples of which kind a shape gets (everything that changes a cache file).

    Args:
        n_uniform: points uniform in the cube [-1, 1]^3.
        n_near: surface points perturbed by isotropic Gaussian noise, split evenly over the
            standard deviations ``near_std`` (DeepSDF uses two scales); clipped to the cube.
        near_std: the noise standard deviations, in units of the [-1, 1] domain.
        n_surface: points on the surface (sparse point-cloud context, Chamfer references).
        padding: normalisation margin; the longest side becomes ``2 (1 - padding)``.
    """

    n_uniform: int = 16384
    n_near: int = 16384
    near_std: tuple[float, ...] = (0.01, 0.05)
    n_surface: int = 4096
    padding: float = 0.1

    def __post_init__(self) -> None:
        stds = (self.near_std,) if isinstance(self.near_std, int | float) else self.near_std
        object.__setattr__(self, "near_std", tuple(float(s) for s in stds))
        for key in ("n_uniform", "n_near", "n_surface"):
            if int(getattr(self, key)) < 0:
                raise InputError(f"{key} must be non-negative, got {getattr(self, key)}")
        if self.n_uniform + self.n_near < 1:
            raise InputError("n_uniform + n_near must be at least 1")
        if not self.near_std or any(not s > 0 or not math.isfinite(s) for s in self.near_std):
            raise InputError(f"near_std must be positive numbers, got {self.near_std}")
        if not 0 <= self.padding < 1:
            raise InputError(f"padding must be in [0, 1), got {self.padding}")


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


def sample_mesh(mesh: trimesh.Trimesh, spec: SamplingSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw and label the samples of one normalised mesh.

    Returns arrays ``points (P, 3)``, ``sdf (P, 1)``, ``occupancy (P, 1)`` (bool) and
    ``surface_points (Q, 3)``, with ``P = n_uniform + n_near``, uniform points first.
    """
    uniform = rng.uniform(-1.0, 1.0, size=(spec.n_uniform, 3))
    base = _sample_surface(mesh, spec.n_near, rng)
    std = np.repeat(spec.near_std, _even_split(spec.n_near, len(spec.near_std)))
    near = np.clip(base + rng.normal(size=base.shape) * std[:, None], -1.0, 1.0)
    surface = _sample_surface(mesh, spec.n_surface, rng)
    points = np.concatenate([uniform, near]).astype(np.float32)

    occupied = inside(mesh, points)
    dist = unsigned_distance(mesh, points)
    sdf = torch.where(occupied, -dist, dist)
    return {
        "points": points,
        "sdf": sdf.numpy()[:, None],
        "occupancy": occupied.numpy()[:, None],
        "surface_points": surface.astype(np.float32),
    }


def _sample_surface(mesh: trimesh.Trimesh, count: int, rng: np.random.Generator) -> np.ndarray:
    if count == 0:
        return np.zeros((0, 3))
    points, _ = trimesh.sample.sample_surface(mesh, count, seed=rng)
    return np.asarray(points, dtype=np.float64)


def _even_split(n: int, parts: int) -> np.ndarray:
    counts = np.full(parts, n // parts)
    counts[: n % parts] += 1
    return counts


def shape_seed(seed: int, name: str) -> np.random.Generator:
    """The sampling generator of shape ``name``: a function of ``(seed, name)`` only, so a shape's
    samples do not depend on its position in a folder."""
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


# --------------------------------------------------------------------------------------------------
# Datasets: one sampling and caching implementation, several sources of meshes
# --------------------------------------------------------------------------------------------------

_ARRAYS = ("points", "sdf", "occupancy", "surface_points", "vertices", "faces")


class ShapeCollection:
    """Base of the shape datasets: turns a source of normalised meshes into :class:`ShapeSignal`.

    Subclasses give :attr:`names`, :meth:`source_key` (a cheap description of the mesh that
    changes when it does: a file's path, modification time and size) and :meth:`load_normalized`.
    Item ``i`` is read from the cache when an entry for (source key, sampling spec, seed, cache
    version) exists; otherwise the mesh is loaded and sampled, and the entry is written atomically
    (a temporary file in the cache folder, then ``os.replace``), so concurrent workers and
    interrupted runs never leave a half-written entry. Entries for other parameters are left in
    place and simply not matched. ``stats`` counts computations and cache hits in this process.

    Args:
        spec: the sampling parameters.
        seed: the sampling seed (each shape's generator is :func:`shape_seed` of it and the name).
        cache_dir: the cache folder (created if needed), or ``None`` to compute every time.
    """

    names: list[str]

    def __init__(self, spec: SamplingSpec, seed: int = 0, cache_dir: str | os.PathLike | None = None):
        self.spec, self.seed = spec, int(seed)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.stats = {"computed": 0, "cache_hits": 0}
        self._warned: set[str] = set()

    def source_key(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def load_normalized(self, index: int) -> trimesh.Trimesh:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """How warnings refer to shape ``index``."""
        return repr(self.names[index])

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[ShapeSignal]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> ShapeSignal:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} shapes")
        return self.signal(index % n)

    def cache_path(self, index: int) -> Path | None:
        """The cache file of shape ``index`` under the current parameters (``None``: no cache)."""
        if self.cache_dir is None:
            return None
        key = {
            "version": CACHE_VERSION,
            "source": self.source_key(index),
            "sampling": asdict(self.spec),
            "seed": self.seed,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", self.names[index])[-80:]
        return self.cache_dir / f"{stem}-{digest}.npz"

    def signal(self, index: int) -> ShapeSignal:
        """Shape ``index``, from the cache when possible."""
        name = self.names[index]
        path = self.cache_path(index)
        arrays = _read_cache(path) if path is not None else None
        if arrays is None:
            mesh = self.load_normalized(index)
            arrays = sample_mesh(mesh, self.spec, shape_seed(self.seed, name))
            arrays["vertices"] = np.asarray(mesh.vertices, dtype=np.float64)
            arrays["faces"] = np.asarray(mesh.faces, dtype=np.int64)
            arrays["watertight"] = np.array(mesh.is_watertight)
            self.stats["computed"] += 1
            if path is not None:
                _write_cache(path, arrays)
        else:
            self.stats["cache_hits"] += 1
        for key in ("points", "sdf", "surface_points"):
            if not np.isfinite(arrays[key]).all():
                raise InputError(f"shape {self.describe(index)} gave non-finite {key}")
        if not bool(arrays["watertight"]) and name not in self._warned:
            self._warned.add(name)
            warnings.warn(
                f"mesh {self.describe(index)} is not watertight; inside/outside comes from the "
                "generalized winding number (>= 0.5) and is a best guess near its holes",
                NonWatertightMeshWarning,
                3,
            )
        return ShapeSignal(
            points=torch.from_numpy(arrays["points"]),
            sdf=torch.from_numpy(arrays["sdf"]),
            occupancy=torch.from_numpy(arrays["occupancy"]),
            surface_points=torch.from_numpy(arrays["surface_points"]),
            mesh=trimesh.Trimesh(arrays["vertices"], arrays["faces"], process=False),
            name=name,
            n_uniform=self.spec.n_uniform,
        )


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            return {key: data[key] for key in (*_ARRAYS, "watertight")}
    except Exception as exc:  # truncated or foreign file: recompute and overwrite
        warnings.warn(f"ignoring unreadable cache file {path}: {one_line(exc)}", stacklevel=3)
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically (:func:`~genfield.outputs.atomic_write`). A cache that cannot be written
    (read-only, disk full) costs speed, not the run: it warns and goes on."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as handle:
            np.savez(handle, **arrays)
    except OSError as exc:
        warnings.warn(f"cannot write cache file {path}: {one_line(exc)}", stacklevel=3)
