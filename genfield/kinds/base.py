"""The data kind as a plugin: one :class:`KindSpec` knows everything that differs between kinds.

A kind (image, CT, shape, views, or one a user adds) is one object registered by name. It owns
the input dimension and head of the field, building its data bundle from a data config, the dense
queries on which a batch is evaluated, scoring a prediction there, the figures, the defaults a
neural process takes for it, its classical baselines, and what ``genfield reconstruct`` reads and
writes for it. Everything else (``evaluate``, ``write_figures``, ``run_comparison``, the train and
reconstruct commands) looks the spec up once, by ``batch.kind``, and never branches on the kind::

    spec = get_kind(batch.kind)
    queries, query_map = spec.dense_queries(batch)

Per-kind *method* settings have one mechanism, :func:`options_for_kind` (a method config's
``by_kind``), which checks its kinds against this registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Subset

from genfield.datasets.batch import SignalBatch
from genfield.errors import InputError, unknown_name
from genfield.interface import Adapted, Prediction

if TYPE_CHECKING:  # the baselines import scikit-image and SciPy: only when one is built
    from genfield.classical.base import Baseline


@dataclass
class DataBundle:
    """Everything a run needs from its data config."""

    name: str
    kind: str
    train: Any
    val: Any
    test: Any
    train_split: Callable
    eval_split: Callable
    head: str
    batch_size: int
    eval_signals: int

    @property
    def in_dim(self) -> int:
        return get_kind(self.kind).in_dim

    def eval_batch(self, which: str = "val", seed: int = 0, count: int | None = None) -> SignalBatch:
        """A fixed evaluation batch of the first ``count`` signals of ``val`` or ``test``."""
        from genfield.datasets.sampling import seeded_generator

        dataset = getattr(self, which)
        count = min(count or self.eval_signals, len(dataset))
        signals = [dataset[i] for i in range(count)]
        return self.eval_split(signals, seeded_generator(seed, 7919))


def classical(name: str, **options: Any) -> Callable[[], Baseline]:
    """A factory of the classical baseline registered as ``name`` in :mod:`genfield.classical`,
    imported when the baseline is built rather than with the kind (that package loads scikit-image
    and SciPy)."""

    def build() -> Baseline:
        from genfield.classical import build_baseline

        return build_baseline(name, **options)

    build.__name__ = build.__qualname__ = f"classical_{name}"
    build.baseline_name = name  # type: ignore[attr-defined]  # the name ``baselines=[...]`` selects
    return build


def baseline_name(factory: Callable[[], Baseline]) -> str:
    """The name a kind's baseline factory is selected by: its registry name (:func:`classical`), or
    the label of the baseline it builds (a factory a user wrote)."""
    return getattr(factory, "baseline_name", None) or factory().name


class KindSpec:
    """What one data kind needs; subclass it, set the attributes, override the methods.

    Attributes:
        name: the ``kind`` of its data configs and batches.
        in_dim: the field's input dimension (2 for pixels and CT slices, 3 for shapes and scenes).
        metric: the headline metric of its comparison tables (a key of :meth:`score`).
        tokenizer: the neural processes' default tokenizer (``processes/tokenizers.py``).
        local_features: the local-feature part a neural process reads with ``local_features=True``
            (a name in :data:`genfield.processes.local.LOCAL_FEATURES`); ``None``: none.
        forward_map: the registered forward map its observations go through
            (:data:`genfield.forward.FORWARD_MAPS`): what a neural process asks for the number of
            channels of one measurement.
        process_defaults: per process name, the options a neural process takes on this kind unless
            its config says otherwise (precedence: preset < these < options < ``by_kind``).
        baselines: zero-argument factories of the kind's classical :class:`Baseline` objects
            (selected by :func:`baseline_name` in ``genfield reconstruct baselines=[...]``).
        accepts: the ``genfield reconstruct`` input types it reads
            (:func:`~genfield.kinds.inputs.input_type`).
        describe: those inputs in words, for the error that refuses another type.
    """

    name: str = ""
    in_dim: int = 2
    metric: str = "psnr"
    tokenizer: str = "points"
    local_features: str | None = None
    forward_map: str = "point"
    process_defaults: Mapping[str, Mapping[str, Any]] = MappingProxyType({})
    baselines: tuple[Callable[[], Baseline], ...] = ()
    accepts: tuple[str, ...] = ()
    describe: str = "nothing (this kind has no reconstruct input reader)"

    def head(self, cfg: Mapping[str, Any], channels: int) -> str:
        """The field head for data config ``cfg`` whose signals have ``channels`` channels."""
        raise NotImplementedError(f"kind {self.name!r} names no head")

    def build_data(self, cfg: Mapping[str, Any], seed: int) -> DataBundle:
        """The train / val / test collections and splits of data config ``cfg``."""
        raise NotImplementedError(f"kind {self.name!r} builds no data")

    def splits(self, cfg: Mapping[str, Any]) -> tuple[Callable, Callable]:
        """The ``(training, evaluation)`` splits of data config ``cfg`` (the one home of their defaults)."""
        raise NotImplementedError(f"kind {self.name!r} has no splits")

    def input_hint(self, given: str) -> str:
        """A hint appended to the error refusing an input of type ``given`` (not in :attr:`accepts`)."""
        return ""

    def read_input(self, path: Path, given: str, run: Any, options: Mapping[str, Any]) -> SignalBatch:
        """The observations of a ``genfield reconstruct`` input of type ``given`` (one of
        :attr:`accepts`), made as ``run``'s evaluation split makes them from its data config.

        ``run`` is a :class:`genfield.runs.Run`; ``options`` are the command's checked options.
        The batch holds one signal on the CPU, with what :meth:`write_outputs` needs in its extras.
        """
        raise NotImplementedError(f"kind {self.name!r} reads no reconstruct input")

    def write_outputs(
        self,
        out: Path,
        batch: SignalBatch,
        adapted: Adapted,
        run: Any,
        options: Mapping[str, Any],
        references: Mapping[str, Prediction] | None = None,
    ) -> dict[str, Any]:
        """Predict from ``adapted`` (the method conditioned once on ``batch.context``), write the
        kind's files into ``out`` and return its metrics for ``metrics.json``. ``references``, the
        classical baselines' predictions of the same input, are drawn beside the method where the
        kind's figure has a column for them (images, CT slices)."""
        raise NotImplementedError(f"kind {self.name!r} writes no reconstruct output")

    def write_baseline(
        self,
        out: Path,
        batch: SignalBatch,
        baseline: Baseline,
        prediction: Prediction,
        options: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Write a fitted classical ``baseline``'s reconstruction of a ``genfield reconstruct`` input
        into the folder ``out``, in the files :meth:`write_outputs` writes for a method, and return
        its scores where the ground truth is known. ``prediction`` is ``baseline.reconstruct(batch)``
        (at :meth:`dense_queries`), made before anything was written."""
        raise NotImplementedError(f"kind {self.name!r} writes no baseline output")

    def dense_queries(self, batch: SignalBatch) -> tuple[torch.Tensor, Any]:
        """The queries and forward map on which ``batch`` is evaluated (default: its targets)."""
        return batch.target.queries, batch.forward_map

    def score(self, mean: torch.Tensor, batch: SignalBatch) -> dict[str, torch.Tensor]:
        """Per-signal metrics ``(S,)`` of the predictive ``mean`` at :meth:`dense_queries`."""
        raise NotImplementedError(f"kind {self.name!r} has no score")

    def context_mask(self, batch: SignalBatch) -> torch.Tensor | None:
        """``(S, H, W)`` true where the context observed a pixel, for kinds that have one."""
        return None

    def write_figures(
        self,
        out: Path,
        batch: SignalBatch,
        predictions: Mapping[str, Prediction],
        *,
        max_signals: int = 4,
        mesh_resolution: int = 64,
        field_fns: Mapping[str, Callable] | None = None,
        methods: Mapping[str, Any] | None = None,
    ) -> list[Path]:
        """Write the kind's figures of ``predictions`` (at :meth:`dense_queries`) into ``out``.

        ``field_fns`` (a field over the domain per method) or ``methods`` (the
        :class:`~genfield.interface.Reconstructor` behind each prediction) serve kinds whose
        figures query the field elsewhere than the dense queries (shape meshes). Default: none.
        """
        return []


_REGISTRY: dict[str, KindSpec] = {}


def register_kind(spec: KindSpec, replace: bool = False) -> KindSpec:
    """Register ``spec`` under ``spec.name`` (an existing name needs ``replace=True``); return it."""
    if not spec.name:
        raise InputError(f"a kind spec needs a name (got {type(spec).__name__} with name {spec.name!r})")
    if spec.name in _REGISTRY and not replace:
        raise InputError(f"kind {spec.name!r} is already registered (pass replace=True to replace it)")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_kind(name: str) -> None:
    """Remove kind ``name`` from the registry (for kinds a test or session added)."""
    get_kind(name)
    del _REGISTRY[name]


def kind_names() -> tuple[str, ...]:
    """The names of the registered kinds, in registration order."""
    return tuple(_REGISTRY)


def get_kind(name: str) -> KindSpec:
    """The spec of kind ``name``; an unknown name raises :class:`InputError` listing the valid ones."""
    if name not in _REGISTRY:
        raise unknown_name("data kind", str(name), kind_names())
    return _REGISTRY[name]


def given_over_by_kind(options: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` (a method config's, ``by_kind`` included) with the options a user ``given``
    explicitly set everywhere they apply: at the top and in every ``by_kind`` entry that sets the
    same name. When the method is built ``by_kind`` wins over the top level (:func:`options_for_kind`),
    so without this an explicit ``obs_noise`` would be silently replaced on a kind whose entry holds
    its own; ``given``'s own ``by_kind`` entries are merged last (they name their kind)."""
    given = dict(given)
    own_by_kind = given.pop("by_kind", None) or {}
    by_kind = options.get("by_kind") or {}
    if not isinstance(by_kind, Mapping) or not isinstance(own_by_kind, Mapping):
        return {**options, **given}  # malformed: options_for_kind names it
    mappings = lambda entry: isinstance(entry, Mapping)  # noqa: E731 - others: named there too
    by_kind = {
        k: {**v, **{key: given[key] for key in given.keys() & v.keys()}} if mappings(v) else v
        for k, v in by_kind.items()
    }
    for kind, entry in own_by_kind.items():
        mine = by_kind.get(kind)
        by_kind[kind] = {**mine, **entry} if mappings(mine) and mappings(entry) else entry
    return {**options, **given, **({"by_kind": by_kind} if by_kind else {})}


def options_for_kind(options: Mapping[str, Any], kind: str | None, owner: str) -> dict[str, Any]:
    """``options`` without their ``by_kind`` entry, with ``by_kind[kind]`` merged over them.

    One method config (``configs/method/<name>.yaml``) serves every data kind; where a kind needs other
    settings, ``by_kind: {kind: {...}}`` holds overrides applied only when the method is built for that
    kind (iBaML's prior and noise on CT, whose summed likelihood over many line integrals outweighs a
    prior sized for pixels). ``owner`` names the method family in errors (``"process"``,
    ``"meta-learner"``). A kind in ``by_kind`` that is not registered raises :class:`InputError` (a
    typo would otherwise drop the overrides silently), and so does a non-empty ``by_kind`` with
    ``kind=None`` (a method built without data cannot know which overrides apply).
    """
    options = dict(options)
    by_kind = dict(options.pop("by_kind", None) or {})
    valid = kind_names()
    unknown = set(by_kind) - set(valid)
    if unknown:
        raise InputError(f"{owner} by_kind has unknown kind(s) {sorted(unknown)}; valid: {valid}")
    for name, overrides in by_kind.items():
        if overrides is not None and not isinstance(overrides, Mapping):
            raise InputError(f"{owner} by_kind.{name} must be a mapping of options, got {overrides!r}")
    if by_kind and kind is None:
        raise InputError(f"{owner} by_kind {sorted(by_kind)} needs the data kind to build for (kind=...)")
    return {**options, **dict(by_kind.get(kind) or {})}


# -- helpers the kinds' data builders share ---------------------------------------------------------
def option(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``cfg[key]``, or ``default`` where it is missing or null."""
    value = cfg.get(key, default)
    return default if value is None else value


def cache_folder(cfg: Mapping[str, Any], kind: str) -> Path:
    """Data config ``cfg``'s ``cache_dir``, or the user cache ``~/.cache/genfield/<kind>`` where it is
    null: samples of built-in data (rendered views, labelled points of shapes) are computed once per
    machine, not on every access."""
    return Path(str(option(cfg, "cache_dir", Path.home() / ".cache" / "genfield" / kind)))


def given(cfg: Mapping[str, Any], *keys: str, **renamed: str) -> dict[str, Any]:
    """The keyword arguments ``cfg`` sets (not missing, not null): ``keys`` as they are, and
    ``renamed={argument: key}``. What the config leaves out takes the signature's default, so
    each default lives once, in the class that uses it."""
    names = {**{key: key for key in keys}, **renamed}
    return {argument: cfg[key] for argument, key in names.items() if cfg.get(key) is not None}


def require_folder(cfg: Mapping[str, Any], key: str = "root") -> Path:
    """The existing folder ``cfg[key]``; a missing key or folder raises :class:`InputError`."""
    root = cfg.get(key)
    if root in (None, "???", ""):
        raise InputError(f"data.{key} is required for data={cfg.get('name')} (a folder path)")
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise InputError(f"data folder not found: {path}")
    return path


def three_way(dataset: Any, cfg: Mapping[str, Any], seed: int) -> tuple[Any, Any, Any]:
    """``dataset`` split into train / val / test by ``cfg.split_fractions`` (default: ``split_indices``'s)."""
    from genfield.datasets.sampling import split_indices

    fractions = {k: tuple(v) for k, v in given(cfg, fractions="split_fractions").items()}
    parts = split_indices(len(dataset), seed=seed, **fractions)
    return tuple(Subset(dataset, parts[name].tolist()) for name in ("train", "val", "test"))


def make_bundle(
    cfg: Mapping[str, Any],
    kind: str,
    parts: tuple[Any, Any, Any],
    head: str,
    train_split: Callable,
    eval_split: Callable | None = None,
) -> DataBundle:
    """A :class:`DataBundle` of ``parts`` with ``cfg``'s batch size and evaluation count."""
    return DataBundle(
        str(cfg.get("name")),
        kind,
        *parts,
        train_split,
        eval_split or train_split,
        head,
        int(option(cfg, "batch_size", 8)),
        int(option(cfg, "eval_signals", 8)),
    )
