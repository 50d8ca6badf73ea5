"""Build data, fields and methods from (Hydra) config dicts: each config names what builds it.

``build_data(cfg.data)`` returns a :class:`~genfield.kinds.base.DataBundle` (train / val / test signal
collections and the context/target splits for training and evaluation), built by the spec of the
data config's ``kind`` (:mod:`genfield.kinds`); ``build_field_for(cfg.field, bundle)`` and
``build_method(cfg.method, field, bundle)`` instantiate the ``_target_`` of the field and method
configs (:mod:`genfield.targets`): a meta-learner, a neural process or the random-initialisation
baseline behind the one :class:`~genfield.interface.Reconstructor` interface. The defaults live in
those signatures. A run config stored before configs named their classes builds by its names.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Mapping
from typing import Any

from genfield.errors import InputError, unknown_name
from genfield.fields.field import Field
from genfield.interface import Reconstructor
from genfield.kinds import DataBundle, get_kind, options_for_kind
from genfield.targets import partial_target

__all__ = [
    "DataBundle",
    "build_data",
    "build_field_for",
    "build_method",
    "method_target",
    "plain",
    "resolved_data",
    "with_targets",
]


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


#: The builder of a field config stored before configs named their classes (no ``_target_``).
FIELD_TARGET = "genfield.fields.build_field"


def build_field_for(cfg: Mapping[str, Any], bundle: DataBundle | Mapping[str, Any]) -> Field:
    """The field ``cfg['_target_']`` builds from preset ``cfg['preset']`` and ``cfg['options']``,
    with the head and input dimension of the data kind.

    ``bundle`` is a :class:`DataBundle` or a mapping ``{kind, head, in_dim}`` (a stored run's
    ``config["resolved"]``).
    """
    data = resolved_data(bundle)
    target = cfg.get("_target_") or FIELD_TARGET
    build = partial_target(target, dict(cfg.get("options") or {}), "field._target_")
    preset = [str(cfg["preset"])] if cfg.get("preset") is not None else []
    return build(*preset, in_dim=data["in_dim"], head=data["head"])


def method_target(cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A method config's ``_target_`` and the options its name fixes.

    A config stored before configs named their classes (a checkpoint's ``config["method"]``
    without ``_target_``) is built as it was then, by its name and route: a meta-learner's class and
    fixed options from :data:`genfield.meta.ESTIMATORS`, :func:`genfield.processes.build_process`,
    or :class:`genfield.fitting.RandomInitFit`.
    """
    if cfg.get("_target_") is not None:
        return cfg["_target_"], {}
    name, route = str(cfg.get("name")), str(cfg.get("route", "meta"))
    if route == "meta":
        from genfield.meta import ESTIMATORS

        if name not in ESTIMATORS:
            raise unknown_name("meta-learner", name, list(ESTIMATORS))
        cls, fixed = ESTIMATORS[name]
        return f"genfield.meta.{cls.__name__}", dict(fixed)  # the public name the yamls use
    if route in ROUTE_TARGETS:
        return ROUTE_TARGETS[route], {}
    raise unknown_name("method route", route, ["meta", *ROUTE_TARGETS])


#: The builders of the other routes' stored configs without ``_target_``.
ROUTE_TARGETS = {"process": "genfield.processes.build_process", "baseline": "genfield.fitting.RandomInitFit"}


def build_method(
    cfg: Mapping[str, Any], field: Field, bundle: DataBundle | Mapping[str, Any]
) -> Reconstructor:
    """The meta-learner, neural process or baseline ``cfg['_target_']`` names, built on ``field``
    with ``cfg['options']`` (``by_kind`` entries of the data kind merged over them).

    A target is called with the field; a neural-process target (``route: process``, a builder of
    named presets such as :func:`genfield.processes.build_process`) with the method's name, the
    field and the data kind, and, if it takes a ``collection`` keyword (a prior fitted to the
    training signals, :func:`genfield.processes.build_prior_residual`), with ``bundle.train`` when
    ``bundle`` is a :class:`DataBundle` (rebuilt from a checkpoint, it gets none). ``bundle`` is a
    :class:`DataBundle` or a mapping ``{kind, head, in_dim}`` (see :func:`build_field_for`).
    """
    name, route = str(cfg.get("name")), str(cfg.get("route", "meta"))
    kind = resolved_data(bundle)["kind"]
    target, fixed = method_target(cfg)
    options = {**fixed, **options_for_kind(cfg.get("options") or {}, kind, f"method {name!r}")}
    if route == "process":
        build = partial_target(target, options, "method._target_", positional=3)
        if isinstance(bundle, DataBundle) and takes_collection(build.func):
            build = functools.partial(build, collection=bundle.train)  # a prior fitted on the collection
        return build(name, field, kind)
    return partial_target(target, options, "method._target_")(field)


def takes_collection(target: Any) -> bool:
    """Whether a method target takes the training collection (a ``collection`` keyword)."""
    return "collection" in inspect.signature(target).parameters


def with_targets(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run config stored before configs named their classes, with the ``_target_`` (and the options
    its method's name fixed) it was built with: what the same run's config holds today, so that
    resuming it compares equal."""
    config = copy.deepcopy(dict(config))
    method, field = config.get("method"), config.get("field")
    if isinstance(method, Mapping) and method.get("_target_") is None and "name" in method:
        target, fixed = method_target(method)
        options = {**fixed, **(method.get("options") or {})}
        config["method"] = {"_target_": target, **method, "options": options}
    if isinstance(field, Mapping) and field.get("_target_") is None:
        config["field"] = {"_target_": FIELD_TARGET, **field}
    return config


def plain(cfg: Any) -> dict[str, Any]:
    """A Hydra/OmegaConf node as plain, resolved Python containers."""
    from omegaconf import OmegaConf

    if isinstance(cfg, dict):
        return cfg
    return OmegaConf.to_container(cfg, resolve=True)
