"""Re-exports :mod:`genfield.datasets.builtin.shapes`, the built-in shapes' home (kept for one release)."""

from genfield.datasets.builtin.primitives import PRIMITIVES, primitive
from genfield.datasets.builtin.shapes import GENERATOR_VERSION, OPERATIONS, ProceduralShapes, random_shape

__all__ = ["GENERATOR_VERSION", "OPERATIONS", "PRIMITIVES", "ProceduralShapes", "primitive", "random_shape"]
