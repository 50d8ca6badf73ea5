"""Novel views and turntable videos of radiance fields, rendered through the volume renderer.

Cameras follow the renderer's convention (:mod:`genfield.forward.volume`: NeRF / OpenGL, the camera
looks down its ``-z``, ``y`` up). :func:`~genfield.forward.volume.look_at` builds camera-to-world matrices;
:func:`orbit_poses` puts ``n`` of them on a circle around the origin; :func:`render_view` renders
one image through any forward map, in chunks of rays under ``torch.no_grad``; :func:`turntable`
writes the orbit as a GIF or MP4. Rays come from :func:`genfield.forward.volume.camera_rays` and are
clipped to the world cube by :func:`genfield.forward.volume.ray_queries`, so views and training rays
are made the same way.

The default camera sees the whole cube ``[-1, 1]^3``: at distance ``radius`` its field of view is
the cone around the cube's circumscribed sphere (radius ``sqrt 3``), with a 5% margin.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from einops import rearrange

from genfield.errors import InputError, unknown_name
from genfield.forward.volume import (  # noqa: F401  (look_at: re-exported, its home before forward/)
    CUBE_RADIUS,
    UP_AXES,
    VolumeRenderer,
    camera_rays,
    look_at,
    ray_queries,
)
from genfield.viz.figures import to_uint8

RayRenderer = Callable[[torch.Tensor], torch.Tensor]
VIDEO_FORMATS = (".gif", ".mp4")


def orbit_poses(
    n: int,
    radius: float = 4.0,
    elevation: float = 30.0,
    up: str = "z",
    start_azimuth: float = 0.0,
) -> torch.Tensor:
    """``n`` cameras ``(n, 4, 4)`` evenly spaced on a circle around ``up``, looking at the origin.

    ``elevation`` (degrees) lifts the circle above the horizontal plane; azimuth 0 is the horizontal
    axis after ``up`` (``+x`` for z-up, ``+z`` for y-up); it increases counter-clockwise seen from
    above.
    """
    if up not in UP_AXES:
        raise unknown_name("up axis", up, list(UP_AXES))
    axes = {"z": (0, 1, 2), "y": (2, 0, 1), "x": (1, 2, 0)}[up]  # (h1, h2, up) axis indices
    azimuth = torch.deg2rad(start_azimuth + 360.0 * torch.arange(n, dtype=torch.float32) / n)
    el = math.radians(elevation)
    eye = torch.zeros(n, 3)
    eye[:, axes[0]] = radius * math.cos(el) * torch.cos(azimuth)
    eye[:, axes[1]] = radius * math.cos(el) * torch.sin(azimuth)
    eye[:, axes[2]] = radius * math.sin(el)
    return look_at(eye, up=up)


def default_focal(size: int, radius: float) -> float:
    """The focal length (pixels) at which a camera at ``radius`` sees the whole cube, 5% margin."""
    if radius <= CUBE_RADIUS:
        raise InputError(
            f"camera radius {radius} is inside the cube's bounding sphere ({CUBE_RADIUS:.3f})"
        )
    half_angle = math.asin(CUBE_RADIUS / radius) * 1.05
    return 0.5 * size / math.tan(half_angle)


def as_ray_renderer(
    field_fn: Callable[[torch.Tensor], torch.Tensor] | None, renderer: Callable | None
) -> RayRenderer:
    """A function ``rays (N, 8) -> rgb (N, 3+)`` from a forward map and a field, or a ray function.

    With a ``field_fn`` the renderer is a forward map called as ``renderer(field_fn, rays)``
    (default: a :class:`VolumeRenderer`); a renderer with a ``deterministic()`` method is switched
    to it (midpoint samples), so frames do not flicker. Without a ``field_fn`` the renderer
    already is a ray function.
    """
    if field_fn is None:
        if renderer is None:
            raise InputError("turntable: give a field_fn, a renderer, or both")
        return renderer
    renderer = (renderer if renderer is not None else VolumeRenderer()).deterministic()
    return lambda rays: renderer(field_fn, rays)


def render_view(
    render: RayRenderer,
    c2w: torch.Tensor,
    focal: float,
    height: int,
    width: int | None = None,
    near: float = 0.0,
    far: float = 1e4,
    chunk: int = 4096,
) -> torch.Tensor:
    """Render one pinhole view ``(H, W, 3)`` with ``render`` (rays ``(N, 8)`` -> ``(N, >=3)``).

    Rays are clipped to the world cube (and to ``[near, far]``) and rendered ``chunk`` at a time
    under ``torch.no_grad``. The device is the camera's: put ``c2w`` where the field lives.
    """
    width = width or height
    origins, directions = camera_rays(c2w, focal, height, width)
    rays = ray_queries(origins, directions, near, far)
    with torch.no_grad():
        colours = torch.cat([render(part)[..., :3] for part in rays.split(chunk, dim=0)], dim=0)
    return rearrange(colours, "(h w) c -> h w c", h=height, w=width)


def save_video(
    path: str | os.PathLike, frames: torch.Tensor | np.ndarray, fps: float = 12.0
) -> Path:
    """Write frames ``(T, H, W, 3)`` in [0, 1] as a looping GIF (Pillow) or an H.264 MP4 (ffmpeg).

    A GIF stores identical consecutive frames once (Pillow merges them and adds their durations),
    so a scene that does not change between frames plays the same but has fewer stored frames.
    An MP4 frame of odd height or width gets its last row or column repeated (yuv420p needs even
    sizes).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_FORMATS:
        raise InputError(
            f"save_video {path}: unknown video format; use one of {', '.join(VIDEO_FORMATS)}"
        )
    video = to_uint8(frames)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise InputError(f"save_video {path}: frames must be (T, H, W, 3), got {video.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        iio.imwrite(path, video, extension=".gif", duration=1000.0 / fps, loop=0)
    else:  # yuv420p needs even sizes: repeat the last row / column where one is odd
        pad = ((0, 0), (0, video.shape[1] % 2), (0, video.shape[2] % 2), (0, 0))
        video = np.pad(video, pad, mode="edge")
        iio.imwrite(path, video, plugin="FFMPEG", fps=fps, macro_block_size=2)
    return path


def turntable(
    path: str | os.PathLike,
    field_fn: Callable[[torch.Tensor], torch.Tensor] | None,
    renderer: Callable | None = None,
    n_frames: int = 36,
    size: int = 64,
    radius: float = 4.0,
    elevation: float = 30.0,
    focal: float | None = None,
    up: str = "z",
    fps: float = 12.0,
    chunk: int = 4096,
    device: torch.device | str | None = None,
) -> Path:
    """Render an orbit of ``n_frames`` views around the origin and write it as a GIF or MP4.

    Args:
        path: ``.gif`` or ``.mp4`` (the suffix picks the format).
        field_fn: world points ``(M, 3)`` -> ``(M, 4)`` = (density, r, g, b), e.g. a radiance
            field's ``field.bind(params)``; ``None`` when ``renderer`` is a ray function.
        renderer: a forward map such as :class:`VolumeRenderer` (default), or with
            ``field_fn=None`` a function ``rays (N, 8) -> rgb (N, 3)``.
        n_frames: frames in one full turn.
        size: frame height and width in pixels.
        radius, elevation: the camera circle (world units; degrees above the horizontal plane).
        focal: focal length in pixels; default: the whole cube in view (:func:`default_focal`).
        up: the world's up axis, the turntable's axis (``"z"``: Blender / NeRF-synthetic).
        fps: frames per second of the file.
        chunk: rays per renderer call.
        device: where the rays are made (the field's device).

    Returns:
        The path written.
    """
    if n_frames < 1 or size < 1:
        raise InputError(f"turntable: n_frames and size must be positive, got {n_frames}, {size}")
    render = as_ray_renderer(field_fn, renderer)
    focal = focal if focal is not None else default_focal(size, radius)
    poses = orbit_poses(n_frames, radius, elevation, up).to(device)
    frames = torch.stack([render_view(render, c2w, focal, size, chunk=chunk) for c2w in poses])
    return save_video(path, frames.cpu(), fps)

