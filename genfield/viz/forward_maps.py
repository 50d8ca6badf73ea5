"""Deprecated location: forward maps moved to :mod:`genfield.forward` (re-exported for one release)."""

from genfield.forward import FieldFn, ForwardMap, PointMap, build_forward_map

__all__ = ["FieldFn", "ForwardMap", "PointMap", "build_forward_map"]
