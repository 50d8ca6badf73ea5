"""Signals and the one batch structure every route consumes.

* :mod:`~genfield.datasets.batch`: :class:`SignalBatch` and :class:`Observations`.
* :mod:`~genfield.datasets.images`: image folders (lazy), :class:`ImageSplit`.
* :mod:`~genfield.datasets.builtin`: built-in faces and natural-image crops (no download).
* :mod:`~genfield.datasets.ct`: ellipse phantoms, sinograms of any image set, :class:`CTSplit`.
* :mod:`~genfield.datasets.shapes` / :mod:`~genfield.datasets.procedural_shapes`: meshes to
  occupancy / SDF samples (cached), procedural shapes, :class:`ShapeSplit`.
* :mod:`~genfield.datasets.views`: NeRF-synthetic and SRN scenes, built-in ray-cast views,
  :class:`ViewSplit`.
* :mod:`~genfield.datasets.sampling`: train/val/test splits and reproducible meta-batches.

Submodules are imported on use, so ``import genfield`` stays light.
"""

from genfield.datasets.batch import Observations, SignalBatch

__all__ = ["Observations", "SignalBatch"]
