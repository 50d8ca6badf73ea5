"""Deprecated location: moved to :mod:`genfield.forward.volume` (re-exported for one release)."""

from genfield.forward.volume import (  # noqa: F401
    VolumeRenderer,
    camera_rays,
    cube_interval,
    ray_queries,
    sample_pdf,
)
