"""The data kinds, and the per-kind overrides a method config may hold for them.

One method config (``configs/method/<name>.yaml``) serves every data kind. Where a kind needs other
settings, its ``options`` hold ``by_kind: {kind: {...}}``: overrides applied only when the method is
built for that kind (iBaML's prior and noise on CT, whose summed likelihood over many line integrals
outweighs a prior sized for pixels; PONP's test-time learning rate on CT). Meta-learners and neural
processes read them through the one function here, :func:`options_for_kind`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from genfield.errors import InputError

#: The data kinds a :class:`~genfield.datasets.batch.SignalBatch` can have.
KINDS = ("image", "ct", "shape", "views")


def options_for_kind(options: Mapping[str, Any], kind: str | None, owner: str) -> dict[str, Any]:
    """``options`` without their ``by_kind`` entry, with ``by_kind[kind]`` merged over them.

    ``owner`` names the method family in errors (``"process"``, ``"meta-learner"``). A kind in
    ``by_kind`` that is not one of :data:`KINDS` raises :class:`InputError` (a typo would otherwise
    drop the overrides silently), and so does a non-empty ``by_kind`` with ``kind=None`` (a method
    built without data cannot know which overrides apply).
    """
    options = dict(options)
    by_kind = dict(options.pop("by_kind", None) or {})
    unknown = set(by_kind) - set(KINDS)
    if unknown:
        raise InputError(f"{owner} by_kind has unknown kind(s) {sorted(unknown)}; valid: {KINDS}")
    for name, overrides in by_kind.items():
        if overrides is not None and not isinstance(overrides, Mapping):
            raise InputError(f"{owner} by_kind.{name} must be a mapping of options, got {overrides!r}")
    if by_kind and kind is None:
        raise InputError(f"{owner} by_kind {sorted(by_kind)} needs the data kind to build for (kind=...)")
    return {**options, **dict(by_kind.get(kind) or {})}
