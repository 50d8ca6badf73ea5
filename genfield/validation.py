"""One validation pass over a command's config before any work: types and ranges of every key.

Hydra parses ``train.steps=abc`` into the string ``'abc'`` and ``resume=no`` into ``'no'``; left
alone they end as tracebacks deep in training, or worse as a silent substitution (``bool('no')`` is
true). Each command's config is checked here against a small schema -- a table of
``key -> (predicate, valid range in words)`` -- and the first bad value becomes one line::

    train.steps='abc': expected an integer >= 1

Group keys (``data.*``, ``field.options.*``, ``method.options.*``, also under ``by_kind``) are
checked by their leaf name wherever they occur, so a data or method config only lists what it
uses. Keys the schema does not know pass unchecked (the builders name unknown options). A ``_target_``
(the class or function a method or field config names) must import.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from genfield.errors import InputError


@dataclass(frozen=True)
class Rule:
    """A predicate on a value and the valid range it stands for, in words."""

    accepts: Callable[[Any], bool]
    expected: str
    nullable: bool = False

    def check(self, key: str, value: Any) -> None:
        if value is None and self.nullable:
            return
        if not self.accepts(value):
            null = " (or null)" if self.nullable else ""
            raise InputError(f"{key}={value!r}: expected {self.expected}{null}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int) -> Rule:
    return Rule(lambda v: _is_int(v) and v >= minimum, f"an integer >= {minimum}")


def number(low: float, *, strict: bool = True, high: float | None = None) -> Rule:
    def accepts(v: Any) -> bool:
        above = _is_number(v) and (v > low if strict else v >= low)
        return above and (high is None or v <= high)

    if high is not None:
        return Rule(accepts, f"a number in {'(' if strict else '['}{low:g}, {high:g}]")
    return Rule(accepts, f"a finite number {'>' if strict else '>='} {low:g}")


def nullable(rule: Rule) -> Rule:
    return Rule(rule.accepts, rule.expected, nullable=True)


BOOLEAN = Rule(lambda v: isinstance(v, bool), "true or false")
COUNT, COUNT0 = integer(1), integer(0)
POSITIVE, NONNEGATIVE = number(0), number(0, strict=False)
FRACTION = number(0, high=1)
TEXT = Rule(lambda v: isinstance(v, str) and v != "", "a name")


def _split_fractions(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) == 3
        and all(_is_number(f) and f >= 0 for f in value)
        and sum(value) <= 1 + 1e-6
    )


def _step_list(minimum: int) -> Rule:
    def accepts(v: Any) -> bool:
        values = v if isinstance(v, list | tuple) else [v]
        return bool(values) and all(_is_int(s) and s >= minimum for s in values)

    return Rule(accepts, f"an integer >= {minimum} or a non-empty list of them")


#: data.*, field.options.*, method.options.*: checked by leaf name wherever the key occurs.
GROUP_RULES: dict[str, Rule] = {
    # data
    **dict.fromkeys(
        "size batch_size eval_signals n_signals n_views resolution n_context_angles eval_context_angles "
        "n_context n_target n_uniform n_near n_context_views n_target_views rays_per_signal".split(),
        COUNT,
    ),
    **dict.fromkeys(["n_samples", "n_detectors"], nullable(COUNT)),
    "n_importance": COUNT0,
    "context_fraction": FRACTION,
    "train_target": Rule(lambda v: v == "all" or (_is_int(v) and v >= 1), "'all' or an integer >= 1"),
    "grey": BOOLEAN,
    "split_fractions": Rule(
        _split_fractions, "three fractions >= 0 summing to at most 1, e.g. [0.8, 0.1, 0.1]"
    ),
    # field options
    **dict.fromkeys(
        "hidden n_layers fourier_features n_octaves n_levels n_features_per_level log2_hashmap_size "
        "base_resolution".split(),
        COUNT,
    ),
    **dict.fromkeys(["omega0", "fourier_sigma"], POSITIVE),
    "per_level_scale": number(1, strict=False),
    # method options
    **dict.fromkeys("width heads depth mc_samples cg_iterations train_samples inner_steps".split(), COUNT),
    **dict.fromkeys(["latent_dim", "tto_steps"], COUNT0),
    "max_tokens": nullable(COUNT),
    **dict.fromkeys(
        "inner_lr tto_lr inner_lr_logvar prior_std obs_noise lr_scale lr_scale_logvar lr_scale_obs_noise "
        "lam".split(),
        POSITIVE,
    ),
    "cg_damping": NONNEGATIVE,
    **dict.fromkeys(["antithetic", "learn_obs_noise", "meta_sgd", "first_order"], BOOLEAN),
}
#: random_init's options: its fit's steps and learning rate.
BASELINE_RULES = {"steps": COUNT, "lr": POSITIVE}

TRAIN_RULES: dict[str, Rule] = {
    "seed": COUNT0,
    "resume": BOOLEAN,
    "overwrite": BOOLEAN,
    "train.steps": COUNT,
    "train.grad_clip": nullable(POSITIVE),
    "train.val_every": COUNT,
    "train.checkpoint_every": COUNT,
    "train.log_every": COUNT,
    "train.progress": BOOLEAN,
    "train.tensorboard": BOOLEAN,
    "train.amp": BOOLEAN,
    "eval.steps": nullable(COUNT0),
    "eval.num_samples": COUNT,
    "eval.figure": BOOLEAN,
}
COMPARE_RULES: dict[str, Rule] = {
    "seed": COUNT0,
    "progress": BOOLEAN,
    "field": TEXT,
    "budget.meta_steps": COUNT,
    "budget.method_steps": Rule(
        lambda v: isinstance(v, Mapping) and all(_is_int(s) and s >= 0 for s in v.values()),
        "a mapping of method name to an integer >= 0, e.g. {ibaml: 150}",
    ),
    "budget.batch_size": COUNT,
    "budget.eval_signals": COUNT,
    "budget.adapt_steps": _step_list(0),
    "budget.tto_steps": COUNT0,
    "budget.random_init_steps": _step_list(1),
    "budget.validations": COUNT0,
}


def _get(config: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, value


def check_rules(config: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    """Check every key of ``rules`` that ``config`` holds."""
    for key, rule in rules.items():
        present, value = _get(config, key)
        if present:
            rule.check(key, value)


def check_group(node: Any, prefix: str, rules: Mapping[str, Rule] = GROUP_RULES) -> None:
    """Check a group's keys by leaf name, recursing into nested options (``by_kind.ct.inner_lr``)."""
    if not isinstance(node, Mapping):
        return
    for key, value in node.items():
        dotted = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            check_group(value, dotted, rules)
        elif key in rules:
            rules[key].check(dotted, value)


def check_device(name: Any, key: str = "device") -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:<index>``; CUDA only where it is available."""
    import torch

    text = str(name)
    is_cuda = text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit())
    if not isinstance(name, str) or not (text in ("auto", "cpu") or is_cuda):
        raise InputError(f"{key}={name!r}: expected auto, cpu, cuda or cuda:<index>")
    if is_cuda:
        if not torch.cuda.is_available():
            raise InputError(f"{key}={name!r}: CUDA is not available on this machine; use {key}=cpu or auto")
        index = int(text[5:]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise InputError(
                f"{key}={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s) (0-based index)"
            )


def check_target(node: Any, prefix: str, positional: int = 1) -> None:
    """A group entry's ``_target_`` imports (:func:`genfield.targets.locate`), where it names one,
    and its signature takes every option (also those under ``by_kind``)."""
    if not isinstance(node, Mapping) or node.get("_target_") is None:
        return
    from genfield.targets import check_options

    options = dict(node.get("options") or {})
    by_kind = options.pop("by_kind", None) or {}
    given = set(options).union(*(o for o in by_kind.values() if isinstance(o, Mapping)))
    check_options(node["_target_"], given, f"{prefix}._target_", positional)


def _check_method(method: Mapping[str, Any], prefix: str) -> None:
    baseline = method.get("route") == "baseline"
    check_target(method, prefix, positional=3 if method.get("route") == "process" else 1)
    check_group(method.get("options"), f"{prefix}.options", BASELINE_RULES if baseline else GROUP_RULES)
    if "lr" in method:
        (NONNEGATIVE if baseline else POSITIVE).check(f"{prefix}.lr", method["lr"])


def validate_train(config: Mapping[str, Any]) -> None:
    """The ``genfield train`` config (resolved, plain containers); raises :class:`InputError`."""
    check_rules(config, TRAIN_RULES)
    check_device(config.get("device", "auto"))
    check_group(config.get("data"), "data")
    check_target(config.get("field"), "field")
    check_group(config.get("field", {}).get("options"), "field.options")
    method = config.get("method", {})
    _check_method(method, "method")
    lr = config.get("train", {}).get("lr")
    if method.get("route") != "baseline" and lr is not None:
        POSITIVE.check("train.lr", lr)


def validate_compare(config: Mapping[str, Any]) -> None:
    """The ``genfield compare`` / ``demo`` config; raises :class:`InputError`."""
    check_rules(config, COMPARE_RULES)
    check_device(config.get("device", "auto"))
    for key in ("datasets", "methods"):
        names = config.get(key)
        if not isinstance(names, list | tuple) or not names or not all(TEXT.accepts(n) for n in names):
            raise InputError(f"{key}={names!r}: expected a non-empty list of names, e.g. {key}=[a,b]")
    methods = list(config["methods"])
    unknown = sorted(set((config.get("budget") or {}).get("method_steps") or {}) - set(methods))
    if unknown:
        raise InputError(f"budget.method_steps names {unknown}, not among the methods {methods}")
    check_group(config.get("field_options"), "field_options")
    for key in ("data_overrides", "method_overrides"):
        overrides = config.get(key) or {}
        if not isinstance(overrides, Mapping):
            raise InputError(f"{key}={overrides!r}: expected a mapping of name -> options")
        for name, options in overrides.items():
            if key == "data_overrides":
                check_group(options, f"{key}.{name}")
            elif isinstance(options, Mapping):
                _check_method(
                    {"route": "baseline" if name == "random_init" else "meta", **options}, f"{key}.{name}"
                )
