"""Configs that name their classes: a group entry's ``_target_`` and the options its signature takes.

A method or field config (``configs/method/*.yaml``, ``configs/field/*.yaml``) names the class or
function that builds it in ``_target_``, Hydra's convention (``hydra.utils.instantiate``), so each
default lives once, in that signature, and the builders only instantiate::

    _target_: genfield.meta.MAML
    options: {inner_steps: 5, inner_lr: 0.3}

:func:`partial_target` gives ``functools.partial(MAML, inner_steps=5, inner_lr=0.3)``, to be called
with the field. A dotted path that imports nothing, or an option the signature does not take, is one
:class:`~genfield.errors.InputError` line naming the key and the value.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from genfield.errors import InputError

__all__ = ["accepted_options", "built_class", "check_options", "dotted_path", "locate", "partial_target"]


def dotted_path(obj: Callable) -> str:
    """The ``_target_`` naming ``obj`` (``module.qualname``)."""
    return f"{obj.__module__}.{obj.__qualname__}"


def _import(path: str) -> Any:
    """The object at dotted ``path``: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        module = ".".join(parts[:split])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name is None or not module.startswith(error.name):
                raise  # a module that exists but fails to import: its own error, not a bad path
            continue
        return functools.reduce(getattr, parts[split:], obj)
    raise ModuleNotFoundError(path)


def locate(path: Any, key: str) -> Callable:
    """The class or function at the dotted ``path``; anything else raises :class:`InputError`."""
    if not isinstance(path, str) or "." not in path:
        raise InputError(
            f"{key}={path!r}: expected a dotted path to a class or function (e.g. genfield.meta.MAML)"
        )
    try:
        obj = _import(path)
    except (ImportError, AttributeError):
        raise InputError(
            f"{key}={path!r}: no class or function of that name imports (e.g. genfield.meta.MAML)"
        ) from None
    if not callable(obj):
        raise InputError(f"{key}={path!r}: names a {type(obj).__name__}, not a class or function")
    return obj


def _keywords(function: Callable, skip: int) -> tuple[set[str], bool]:
    """The keyword-capable parameters of ``function`` after its first ``skip``, and whether it
    takes ``**options``."""
    params = list(inspect.signature(function).parameters.values())[skip:]
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def accepted_options(target: Callable, positional: int = 1) -> set[str] | None:
    """The keyword options ``target`` takes after its first ``positional`` arguments, or None for a
    function that takes any (``**options``: it names unknown ones itself).

    A class's ``**options`` pass to its base class, so the bases' ``__init__`` keywords count too
    (``MAML(field, *, first_order, **options)`` takes ``inner_lr`` from ``MetaLearner``).
    """
    if not inspect.isclass(target):
        names, open_ended = _keywords(target, positional)
        return None if open_ended else names
    accepted: set[str] = set()
    for klass in target.__mro__:
        if "config_class" in vars(klass):  # options validated once by a dataclass (IBaMLConfig)
            accepted |= {f.name for f in dataclasses.fields(klass.config_class)}
        if "__init__" in vars(klass):
            names, open_ended = _keywords(vars(klass)["__init__"], 1 + positional)  # self, field
            accepted |= names
            if not open_ended:
                break
    return accepted - {"config"}  # a learner's option dataclass is set field by field


def check_options(path: Any, options: Iterable[str], key: str, positional: int = 1) -> None:
    """Every option names a parameter of the class or function at ``path`` (its ``positional``
    leading arguments excepted); else one :class:`InputError` line naming ``key`` and the options."""
    accepted = accepted_options(locate(path, key), positional)
    unknown = set(options) - accepted if accepted is not None else set()
    if unknown:
        raise InputError(f"{key}={path!r} takes no option(s) {sorted(unknown)}; valid: {sorted(accepted)}")


def partial_target(path: Any, options: Mapping[str, Any], key: str, positional: int = 1) -> functools.partial:
    """``hydra.utils.instantiate({"_target_": path, **options}, _partial_=True)`` as plain Python
    values, after checking that ``path`` imports and that its signature takes every option."""
    from hydra.utils import instantiate

    check_options(path, options, key, positional)
    return instantiate({"_target_": path, **options}, _partial_=True, _convert_="all")


def built_class(target: Callable) -> type:
    """The class ``target`` builds: the class itself, or a builder function's return annotation."""
    if inspect.isclass(target):
        return target
    returned = typing.get_type_hints(target).get("return")
    if not inspect.isclass(returned):
        raise InputError(f"{dotted_path(target)} names no class it returns (annotate its return type)")
    return returned
