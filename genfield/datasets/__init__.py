"""Signals and the one batch structure every route consumes.

* :mod:`~genfield.datasets.batch`: :class:`SignalBatch` and :class:`Observations`.
* :mod:`~genfield.datasets.files` / :mod:`~genfield.datasets.decoding`: what every folder shares
  (listing files, skipping unreadable ones, decoding images, one luminance); atomic writes are
  :func:`genfield.outputs.atomic_write`.
* :mod:`~genfield.datasets.images`: image folders (lazy), :class:`ImageSplit`.
* :mod:`~genfield.datasets.builtin`: every built-in generator (faces, photo crops, glyphs, the one
  random-primitive generator, procedural shapes, ray-cast multi-view scenes); no download.
* :mod:`~genfield.datasets.ct`: ellipse phantoms, sinograms of any image set, :class:`CTSplit`.
* :mod:`~genfield.datasets.shapes`: mesh folders to occupancy / SDF samples (cached), with
  :mod:`~genfield.datasets.meshes`, :mod:`~genfield.datasets.shape_samples` and
  :mod:`~genfield.datasets.shape_split` (:class:`ShapeSplit`).
* :mod:`~genfield.datasets.views`: multi-view scenes, re-exporting :mod:`~genfield.datasets.scenes`,
  :mod:`~genfield.datasets.nerf_synthetic`, :mod:`~genfield.datasets.srn` and
  :mod:`~genfield.datasets.view_split` (:class:`ViewSplit`).
* :mod:`~genfield.datasets.sampling`: train/val/test splits and reproducible meta-batches.

Submodules are imported on use, so ``import genfield`` stays light.
"""

from genfield.datasets.batch import Observations, SignalBatch

__all__ = ["Observations", "SignalBatch"]
