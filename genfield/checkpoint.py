"""Checkpoints: one safetensors file holding weights, optimizer state, RNG state and the config.

A checkpoint is written atomically (:func:`genfield.outputs.atomic_write`: a temporary file in the
same folder, flushed and fsynced, then ``os.replace``), so an interrupted run never leaves a
half-written file: the previous checkpoint stays intact until the new one is complete. A temporary
file that a SIGKILL left behind is removed by the next write of the same checkpoint. The resolved
config and the genfield version travel in the file's metadata, so a checkpoint can be checked
against the config it is loaded into.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as serialize

import genfield
from genfield.calibration import STD_SCALE
from genfield.errors import InputError
from genfield.outputs import atomic_write

_MODEL, _OPTIM, _RNG = "model/", "optimizer/", "rng/"
#: Buffers added after checkpoints were written, whose value as built is neutral (a std factor of 1).
OPTIONAL_BUFFERS = (STD_SCALE,)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    tensors, scalars = {}, {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            name = f"{_OPTIM}{index}/{key}"
            if torch.is_tensor(value):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                scalars[name] = value
    return tensors, json.dumps({"param_groups": state["param_groups"], "scalars": scalars})


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: str) -> dict[str, Any]:
    info = json.loads(meta)
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *info["scalars"].items()]:
        index, key = name[len(_OPTIM) :].split("/", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {_MODEL + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "genfield_version": genfield.__version__,
        "step": str(step),
        "config": json.dumps(config or {}),
        "extra": json.dumps(extra or {}),
    }
    if optimizer is not None:
        optim_tensors, metadata["optimizer"] = _flatten_optimizer(optimizer.state_dict())
        tensors.update(optim_tensors)
    tensors[_RNG + "torch"] = torch.get_rng_state()
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed writer
        stale.unlink(missing_ok=True)
    with atomic_write(path) as file:
        save_file(tensors, file, metadata=metadata)
    return path


def save_file(tensors: dict[str, torch.Tensor], file: BinaryIO, metadata: dict[str, str]) -> None:
    """safetensors' serialisation of ``tensors`` and ``metadata`` into an open file."""
    file.write(serialize(tensors, metadata=metadata))


def set_model_tensors(path: str | Path, values: dict[str, torch.Tensor]) -> Path:
    """Rewrite checkpoint ``path`` atomically with the model tensors ``values`` replaced (e.g. a std
    factor set after training); every other tensor and the metadata stay as they were."""
    path = Path(path)
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() or {}
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    for key, value in values.items():
        if _MODEL + key not in tensors and key.rsplit(".", 1)[-1] not in OPTIONAL_BUFFERS:
            raise InputError(f"checkpoint {path} has no model tensor {key!r}")
        tensors[_MODEL + key] = value.detach().cpu().contiguous()
    with atomic_write(path) as file:
        save_file(tensors, file, metadata=metadata)
    return path


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint (version, step, config, extra) without loading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as file:
            meta = file.metadata() or {}
    except Exception as error:  # noqa: BLE001 - safetensors raises several types
        raise InputError(f"unreadable checkpoint {path}: {error}") from error
    return {
        "genfield_version": meta.get("genfield_version"),
        "step": int(meta.get("step", 0)),
        "config": json.loads(meta.get("config", "{}")),
        "extra": json.loads(meta.get("extra", "{}")),
        "optimizer": meta.get("optimizer"),
    }


def stored_config(checkpoint: str | Path) -> dict[str, Any]:
    """The resolved config stored in a checkpoint by ``genfield train``; an error when it lacks what
    rebuilding the run needs (``reconstruct``) or comparing it with a resumed run's (``train``)."""
    config = read_checkpoint_metadata(checkpoint)["config"]
    missing = [k for k in ("method", "field", "data", "resolved") if k not in config]
    if missing:
        raise InputError(
            f"checkpoint {checkpoint} stores no {'/'.join(missing)} config (not written by `genfield train`?)"
        )
    return config


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint into ``model`` (and ``optimizer``); return its metadata.

    A checkpoint whose weights do not match the model (another architecture or config) is an
    :class:`~genfield.errors.InputError` naming the keys that differ; a checkpoint older than one of
    :data:`OPTIONAL_BUFFERS` loads with the model's own (neutral) value of it. A model with ``adopt_shapes``
    first sizes its data-fitted buffers as the checkpoint holds them.
    """
    meta = read_checkpoint_metadata(path)
    tensors = load_file(str(path))
    weights = {k[len(_MODEL) :]: v for k, v in tensors.items() if k.startswith(_MODEL)}
    if hasattr(model, "adopt_shapes"):  # buffers sized by the data they were fitted on (a prior)
        model.adopt_shapes(weights)
    expected = model.state_dict()
    for key in expected:  # buffers newer than the checkpoint that have a neutral value
        if key.rsplit(".", 1)[-1] in OPTIONAL_BUFFERS and key not in weights:
            weights[key] = expected[key]
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if missing or unexpected or mismatched:
        raise InputError(
            f"checkpoint {path} does not fit this model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatch {mismatched[:5]}"
        )
    model.load_state_dict(weights)
    if optimizer is not None and meta["optimizer"]:
        optim_tensors = {k: v for k, v in tensors.items() if k.startswith(_OPTIM)}
        optimizer.load_state_dict(_unflatten_optimizer(optim_tensors, meta["optimizer"]))
    if restore_rng and _RNG + "torch" in tensors:
        torch.set_rng_state(tensors[_RNG + "torch"])
    return meta


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            differences += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differences.append(f"{prefix}{key}: {a!r} != {b!r}")
    return differences
