"""Build data, fields and methods from (Hydra) config dicts.

``build_data(cfg.data)`` returns a :class:`~genfield.kinds.base.DataBundle` (train / val / test signal
collections and the context/target splits for training and evaluation), built by the data kind's
spec (:mod:`genfield.kinds`); ``build_field_for(cfg.field, bundle)`` gives the field the head and
input dimension of the data kind; ``build_method(cfg.method, field, bundle)`` builds a
meta-learner, a neural process or the random-initialisation baseline behind the one
:class:`~genfield.interface.Reconstructor` interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from genfield.errors import InputError, unknown_name
from genfield.fields.field import Field, build_field
from genfield.interface import Reconstructor
from genfield.kinds import DataBundle, get_kind

__all__ = ["DataBundle", "build_data", "build_field_for", "build_method", "plain", "resolved_data"]


def build_data(cfg: Mapping[str, Any], seed: int = 0) -> DataBundle:
    """The data bundle named by ``cfg['name']``, built by the spec of ``cfg['kind']``."""
    return get_kind(str(cfg.get("kind"))).build_data(cfg, seed)


def resolved_data(data: DataBundle | Mapping[str, Any]) -> dict[str, Any]:
    """``{kind, head, in_dim}`` of a data bundle, or of a run's stored ``config["resolved"]``.

    This is all a model needs from its data, so ``reconstruct`` rebuilds a trained model from the
    checkpoint's metadata without loading the training data.
    """
    if isinstance(data, DataBundle):
        return {"kind": data.kind, "head": data.head, "in_dim": data.in_dim}
    missing = [key for key in ("kind", "head") if key not in data]
    if missing:
        raise InputError(f"resolved data config lacks {missing} (got keys {sorted(data)})")
    kind = str(data["kind"])
    in_dim = data.get("in_dim", get_kind(kind).in_dim)
    return {"kind": kind, "head": str(data["head"]), "in_dim": int(in_dim)}


def build_field_for(cfg: Mapping[str, Any], bundle: DataBundle | Mapping[str, Any]) -> Field:
    """The field named by ``cfg['preset']`` with the head and input dimension of the data kind.

    ``bundle`` is a :class:`DataBundle` or a mapping ``{kind, head, in_dim}`` (a stored run's
    ``config["resolved"]``).
    """
    options = dict(cfg.get("options") or {})
    data = resolved_data(bundle)
    return build_field(str(cfg.get("preset", "siren")), in_dim=data["in_dim"], head=data["head"], **options)


def build_method(
    cfg: Mapping[str, Any], field: Field, bundle: DataBundle | Mapping[str, Any]
) -> Reconstructor:
    """A meta-learner, a neural process or the random-init baseline, by ``cfg['route']``.

    ``bundle`` is a :class:`DataBundle` or a mapping ``{kind, head, in_dim}`` (see
    :func:`build_field_for`).
    """
    name, route = str(cfg.get("name")), str(cfg.get("route", "meta"))
    options = dict(cfg.get("options") or {})
    if route == "meta":
        from genfield.meta import build_meta_learner

        return build_meta_learner(name, field, kind=resolved_data(bundle)["kind"], **options)
    if route == "process":
        from genfield.processes import build_process

        return build_process(name, field, resolved_data(bundle)["kind"], **options)
    if route == "baseline":
        from genfield.fitting import RandomInitFit

        return RandomInitFit(field, **options)
    raise unknown_name("method route", route, ["meta", "process", "baseline"])


def plain(cfg: Any) -> dict[str, Any]:
    """A Hydra/OmegaConf node as plain, resolved Python containers."""
    from omegaconf import OmegaConf

    if isinstance(cfg, dict):
        return cfg
    return OmegaConf.to_container(cfg, resolve=True)
