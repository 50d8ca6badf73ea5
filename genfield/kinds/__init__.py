"""The data kinds as plugins: one :class:`~genfield.kinds.base.KindSpec` per kind, in a registry.

``get_kind(batch.kind)`` gives everything kind-specific (field input dimension and head, data
building, dense evaluation queries, scoring, figures, neural-process defaults, classical baselines).
The four built-in kinds are registered here; a new kind is one module with a ``KindSpec`` subclass,
registered with :func:`register_kind`, plus its data yaml files.
"""

from genfield.kinds.base import (
    DataBundle,
    KindSpec,
    classical,
    get_kind,
    given_over_by_kind,
    kind_names,
    options_for_kind,
    register_kind,
    unregister_kind,
)
from genfield.kinds.ct import CTKind
from genfield.kinds.image import ImageKind
from genfield.kinds.shape import ShapeKind
from genfield.kinds.views import ViewsKind

for _spec in (ImageKind(), CTKind(), ShapeKind(), ViewsKind()):
    register_kind(_spec)

#: The built-in data kinds (:func:`kind_names` also lists kinds registered later).
KINDS: tuple[str, ...] = kind_names()

__all__ = [
    "KINDS",
    "CTKind",
    "DataBundle",
    "ImageKind",
    "KindSpec",
    "ShapeKind",
    "ViewsKind",
    "classical",
    "get_kind",
    "kind_names",
    "given_over_by_kind",
    "options_for_kind",
    "register_kind",
    "unregister_kind",
]
