"""A trained run: find its checkpoint, read the config it stored, rebuild its method, load its weights.

``genfield train`` stores the resolved config (method, field, data and ``resolved = {kind, head,
in_dim}``) in the checkpoint, so a run is rebuilt without its training data. This is the Python
entry point for notebooks and the one ``genfield reconstruct`` uses::

    from genfield.runs import load_run

    run = load_run("outputs/faces/ibaml")          # a run folder, or a .safetensors file
    prediction = run.method.reconstruct(context, PointMap(), queries, PointMap())

:func:`check_overrides` and :func:`with_run_groups` compare and select command-line config groups
against the stored config, so a run is never reconstructed with a config it was not trained with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genfield.checkpoint import config_differences, load_checkpoint, stored_config
from genfield.errors import InputError
from genfield.interface import Reconstructor

CHECKPOINT = Path("checkpoints") / "last.safetensors"
#: The config groups a run is built from, and the key that names the group's option.
GROUPS = {"method": "name", "data": "name", "field": "preset"}


@dataclass
class Run:
    """A trained model and the config it was trained with."""

    method: Reconstructor
    config: dict[str, Any]
    checkpoint: Path

    @property
    def kind(self) -> str:
        return self.config["resolved"]["kind"]

    @property
    def head(self) -> str:
        return self.config["resolved"]["head"]

    @property
    def data(self) -> dict[str, Any]:
        return self.config.get("data", {})

    @property
    def name(self) -> str:
        return str(self.config["method"].get("name", "method"))

    @property
    def device(self) -> torch.device:
        """Where the method's parameters live (the CPU for a method without any)."""
        return next(iter(self.method.parameters()), torch.empty(0)).device


def find_checkpoint(run: str | Path) -> Path:
    """The checkpoint file of a run directory (``checkpoints/last.safetensors``), or ``run`` itself."""
    path = Path(str(run)).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / CHECKPOINT, path / CHECKPOINT.name):
            if candidate.is_file():
                return candidate
        raise InputError(f"no checkpoint in run directory {path} (expected {path / CHECKPOINT})")
    raise InputError(f"run or checkpoint not found: {path}")


def load_run(run: str | Path, device: torch.device | str = "cpu") -> Run:
    """Rebuild a run's method from its checkpoint's stored config and load its weights (eval mode)."""
    from genfield.builders import build_field_for, build_method

    checkpoint = find_checkpoint(run)
    config = stored_config(checkpoint)
    field = build_field_for(config["field"], config["resolved"])
    method = build_method(config["method"], field, config["resolved"])
    load_checkpoint(checkpoint, method, restore_rng=False)
    method = method.to(device)
    if torch.device(device).type == "cuda":
        field.to(device)
    return Run(method.eval(), config, checkpoint)


def override_keys(overrides: Sequence[str]) -> list[str]:
    """The dotted keys of Hydra overrides (``+a.b=1`` -> ``a.b``; group selections -> ``field``)."""
    return [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return "<absent>"
        value = value[part]
    return value


def check_overrides(
    stored: Mapping[str, Any], requested: Mapping[str, Any], overrides: Sequence[str], where: str
) -> None:
    """Raise :class:`InputError` naming every overridden ``method.``/``data.``/``field.`` key whose
    value differs from the run's stored config.

    A group selection (``field=relu_pe``) is compared by name with the run's (``field.preset``);
    the rest of a selected group is the group file's defaults, not something the user asked for,
    so only dotted keys are compared value by value.
    """
    differences: list[str] = []
    for key in dict.fromkeys(override_keys(overrides)):  # each key once, in order
        group = key.split(".", 1)[0]
        if group not in GROUPS:
            continue
        if key == group:
            key = f"{group}.{GROUPS[group]}"
        mine, theirs = _lookup(requested, key), _lookup(stored, key)
        if isinstance(mine, Mapping) and isinstance(theirs, Mapping):
            differences += config_differences(dict(theirs), dict(mine), f"{key}.")
        elif mine != theirs:
            differences.append(f"{key}: {theirs!r} != {mine!r}")
    if differences:
        raise InputError(
            f"checkpoint {where} was trained with another config (stored != given): {'; '.join(differences)}"
        )


def with_run_groups(argv: Sequence[str]) -> list[str]:
    """Select the run's own config groups for overrides like ``field.options.hidden=32``.

    Hydra only accepts an override of a key inside a group that is selected; the run's stored
    config names the groups it was built from, so they are selected for the user (and the values
    are then compared with the stored ones by :func:`check_overrides`).
    """
    argv = list(argv)
    keys = override_keys([a for a in argv if not a.startswith("-")])
    needed = [g for g in GROUPS if g not in keys and any(k.startswith(f"{g}.") for k in keys)]
    runs = [a.split("=", 1)[1] for a in argv if a.startswith("run=")]
    if not needed or not runs:
        return argv
    config = stored_config(find_checkpoint(runs[-1]))
    return [*(f"{g}={config[g][GROUPS[g]]}" for g in needed), *argv]
