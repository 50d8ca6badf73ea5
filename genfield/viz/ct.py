"""Deprecated location: moved to :mod:`genfield.forward.ct` (re-exported for one release)."""

from genfield.forward.ct import (  # noqa: F401
    ParallelBeamProjection,
    as_sinogram,
    backproject,
    ct_queries,
    fbp,
    filter_sinogram,
    fourier_filter,
    image_field,
    project_image,
    ray_points,
)
