"""Build data, fields and methods from (Hydra) config dicts: one place that knows every name.

``build_data(cfg.data)`` returns a :class:`DataBundle` (train / val / test signal collections and the
context/target splits for training and evaluation); ``build_field_for(cfg.field, bundle)`` picks the
head and input dimension the data kind needs; ``build_method(cfg.method, field, bundle)`` builds a
meta-learner, a neural process or the random-initialisation baseline behind the one
:class:`~genfield.interface.Reconstructor` interface.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from genfield.errors import InputError, unknown_name
from genfield.fields.field import Field, build_field
from genfield.interface import Reconstructor

#: The head of the field each data kind is reconstructed with (images: by channel count).
KIND_HEADS = {"ct": "attenuation", "views": "radiance"}
KIND_IN_DIM = {"image": 2, "ct": 2, "shape": 3, "views": 3}


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
        return KIND_IN_DIM[self.kind]

    def eval_batch(self, which: str = "val", seed: int = 0, count: int | None = None):
        """A fixed evaluation batch of the first ``count`` signals of ``val`` or ``test``."""
        from genfield.datasets.sampling import seeded_generator

        dataset = getattr(self, which)
        count = min(count or self.eval_signals, len(dataset))
        signals = [dataset[i] for i in range(count)]
        return self.eval_split(signals, seeded_generator(seed, 7919))


def _option(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


def _require_folder(cfg: Mapping[str, Any], key: str = "root") -> Path:
    root = cfg.get(key)
    if root in (None, "???", ""):
        raise InputError(f"data.{key} is required for data={cfg.get('name')} (a folder path)")
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise InputError(f"data folder not found: {path}")
    return path


def _three_way(dataset: Any, cfg: Mapping[str, Any], seed: int) -> tuple[Any, Any, Any]:
    from genfield.datasets.sampling import split_indices

    fractions = tuple(_option(cfg, "split_fractions", (0.8, 0.1, 0.1)))
    parts = split_indices(len(dataset), fractions, seed=seed)
    return tuple(Subset(dataset, parts[name].tolist()) for name in ("train", "val", "test"))


def _image_data(cfg: Mapping[str, Any], seed: int) -> tuple[Any, Any, Any, int]:
    from genfield.datasets.builtin import builtin_faces
    from genfield.datasets.images import ImageFolder

    if cfg["name"] == "faces":
        size = int(_option(cfg, "size", 32))
        parts = tuple(builtin_faces(split, size=size) for split in ("train", "val", "test"))
        return (*parts, 1)
    if cfg["name"] == "glyphs":
        from genfield.datasets.builtin import builtin_glyphs

        size, n = int(_option(cfg, "size", 32)), _option(cfg, "n_signals", None)
        counts = {"train": n, "val": None, "test": None}
        parts = tuple(builtin_glyphs(s, size, counts[s], seed) for s in counts)
        return (*parts, 1)
    folder = ImageFolder(
        _require_folder(cfg), size=int(_option(cfg, "size", 64)), grey=bool(cfg.get("grey", False))
    )
    return (*_three_way(folder, cfg, seed), folder.channels)


def _ct_data(cfg: Mapping[str, Any], seed: int) -> tuple[Any, Any, Any]:
    from genfield.datasets.ct import PhantomDataset, SinogramImageDataset

    resolution = int(_option(cfg, "resolution", 32))
    if cfg["name"] == "ct_phantoms":
        n = int(_option(cfg, "n_signals", 512))
        evals = int(_option(cfg, "eval_signals", 8))
        return (
            PhantomDataset(n, resolution, seed=seed),
            PhantomDataset(max(evals, 16), resolution, seed=seed + 1_000_003),
            PhantomDataset(max(evals, 16), resolution, seed=seed + 2_000_003),
        )
    if cfg.get("root"):
        from genfield.datasets.images import ImageFolder

        images = ImageFolder(_require_folder(cfg), size=resolution, grey=True)
    else:
        from genfield.datasets.builtin import builtin_natural, natural_photos

        evals = max(int(_option(cfg, "eval_signals", 8)), 16)
        counts = {"train": int(_option(cfg, "n_signals", 256)), "val": evals, "test": evals}
        return tuple(  # val and test crops come from photographs never cropped for training
            SinogramImageDataset(
                builtin_natural(n, resolution, seed + i, True, natural_photos(s, True)), resolution=resolution
            )
            for i, (s, n) in enumerate(counts.items())
        )
    return _three_way(SinogramImageDataset(images, resolution=resolution), cfg, seed)


def build_data(cfg: Mapping[str, Any], seed: int = 0) -> DataBundle:
    """The data bundle named by ``cfg['name']`` (see ``genfield/configs/data``)."""
    name, kind = cfg.get("name"), cfg.get("kind")
    batch_size, eval_signals = int(_option(cfg, "batch_size", 8)), int(_option(cfg, "eval_signals", 8))
    if kind == "image":
        from genfield.datasets.images import ImageSplit

        train, val, test, channels = _image_data(cfg, seed)
        fraction = float(_option(cfg, "context_fraction", 0.1))
        split = ImageSplit(context_fraction=fraction)
        head = "grey" if channels == 1 else "rgb"
        return DataBundle(name, kind, train, val, test, split, split, head, batch_size, eval_signals)
    if kind == "ct":
        from genfield.datasets.ct import CTSplit

        train, val, test = _ct_data(cfg, seed)
        common = {"n_samples": cfg.get("n_samples"), "n_detectors": cfg.get("n_detectors")}
        train_split = CTSplit(
            n_context_angles=int(_option(cfg, "n_context_angles", 20)),
            context_angles=str(_option(cfg, "context_angles", "random")),
            **common,
        )
        eval_split = CTSplit(
            n_context_angles=int(_option(cfg, "eval_context_angles", 8)),
            context_angles="even",
            **common,
        )
        return DataBundle(
            name, kind, train, val, test, train_split, eval_split, "attenuation", batch_size, eval_signals
        )
    if kind == "shape":
        return _shape_bundle(cfg, seed, batch_size, eval_signals)
    if kind == "views":
        return _views_bundle(cfg, seed, batch_size, eval_signals)
    raise unknown_name("data kind", str(kind), list(KIND_IN_DIM))


def _shape_bundle(cfg: Mapping[str, Any], seed: int, batch_size: int, eval_signals: int) -> DataBundle:
    from genfield.datasets.shapes import MeshFolder, ShapeSplit

    sampling = {k: cfg[k] for k in ("n_uniform", "n_near") if cfg.get(k) is not None}
    cache = cfg.get("cache_dir")
    if cfg["name"] == "shapes":
        from genfield.datasets.procedural_shapes import ProceduralShapes

        n, evals = int(_option(cfg, "n_signals", 64)), max(eval_signals, 4)
        parts = tuple(
            ProceduralShapes(count, seed=seed + offset, cache_dir=cache, **sampling)
            for count, offset in ((n, 0), (evals, 1_000_003), (evals, 2_000_003))
        )
    else:
        folder = MeshFolder(_require_folder(cfg), cache_dir=cache, **sampling)
        parts = _three_way(folder, cfg, seed)
    target = str(_option(cfg, "target", "occupancy"))
    split = ShapeSplit(
        target=target,
        n_context=int(_option(cfg, "n_context", 300)),
        context=str(_option(cfg, "context", "labelled")),
        n_target=int(_option(cfg, "n_target", 2048)),
    )
    return DataBundle(cfg["name"], "shape", *parts, split, split, target, batch_size, eval_signals)


def _views_bundle(cfg: Mapping[str, Any], seed: int, batch_size: int, eval_signals: int) -> DataBundle:
    from genfield.datasets.views import NerfSyntheticFolder, SRNFolder, ViewSplit, builtin_views

    name = cfg["name"]
    if name == "views":
        folder = Path(str(_option(cfg, "cache_dir", Path.home() / ".cache" / "genfield" / "views")))
        dataset = builtin_views(
            folder,
            n_scenes=int(_option(cfg, "n_signals", 16)),
            n_views=int(_option(cfg, "n_views", 16)),
            size=int(_option(cfg, "size", 32)),
            seed=seed,
        )
    elif name == "nerf_synthetic":
        dataset = NerfSyntheticFolder(_require_folder(cfg))
    else:
        dataset = SRNFolder(_require_folder(cfg))
    train, val, test = _three_way(dataset, cfg, seed)
    render = {
        "n_samples": int(_option(cfg, "n_samples", 32)),
        "n_importance": int(_option(cfg, "n_importance", 0)),
    }
    train_split = ViewSplit(
        n_context_views=int(_option(cfg, "n_context_views", 1)),
        n_target_views=int(_option(cfg, "n_target_views", 1)),
        rays_per_signal=cfg.get("rays_per_signal", 512),  # null: whole target views
        **render,
    )
    eval_split = ViewSplit(
        n_context_views=int(_option(cfg, "n_context_views", 1)),
        n_target_views=1,
        rays_per_signal=None,
        stratified=False,
        **render,
    )
    return DataBundle(
        name, "views", train, val, test, train_split, eval_split, "radiance", batch_size, eval_signals
    )


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
    if kind not in KIND_IN_DIM:
        raise unknown_name("data kind", kind, list(KIND_IN_DIM))
    return {"kind": kind, "head": str(data["head"]), "in_dim": int(data.get("in_dim", KIND_IN_DIM[kind]))}


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


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
