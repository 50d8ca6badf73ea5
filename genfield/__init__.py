"""genfield: generalizable neural fields.

Two routes turn the observations of a signal into per-signal field parameters (or a distribution over
them) and score them through a forward map: meta-initialization (:mod:`genfield.meta`) and neural
processes (:mod:`genfield.processes`). Both share the fields (:mod:`genfield.fields`), the data
(:mod:`genfield.datasets`) and the rendering layer (:mod:`genfield.viz`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("genfield")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
