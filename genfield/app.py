"""The Hydra applications behind ``genfield train | reconstruct | compare | demo``.

Each command is a ``@hydra.main`` application over the config groups shipped in
``genfield/configs`` (found from any directory once the package is installed), so ``--help``,
``--cfg job``, overrides and ``-m`` multirun behave as in any Hydra application. Outputs go to
Hydra's run directory. Bad input prints one line and exits with status 2. Each command lives in
``genfield/commands/<name>.py``; this module dispatches to them (and re-exports ``run_train`` and the
shared helpers for the imports that name ``genfield.app``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from genfield.commands.base import CONFIG_PATH, current_run_dir, run_dir
from genfield.commands.base import guard as _guard
from genfield.commands.train import check_splits, check_train_folder, run_train, train_app

__all__ = [
    "CONFIG_PATH",
    "_guard",
    "check_splits",
    "check_train_folder",
    "preflight",
    "run_check",
    "run_dir",
    "run_hydra_command",
    "run_train",
    "train_app",
]
_current_run_dir = current_run_dir


def run_hydra_command(command: str, argv: list[str]) -> None:
    """Run a Hydra application with ``argv`` as its command line, after checking its config."""
    apps = {"train": train_app}
    if command not in apps:
        from importlib import import_module

        apps[command] = import_module(f"genfield.commands.{command}").app
    argv = [*argv, *_torchrun_overrides(argv), *given_over_by_kind_overrides(command, argv)]
    preflight(command, argv)
    sys.argv = [f"genfield {command}", *argv]
    apps[command]()


def given_over_by_kind_overrides(command: str, argv: list[str]) -> list[str]:
    """The overrides that carry ``train``'s explicit ``method.options.KEY=VALUE`` into every
    ``by_kind`` entry of the method's config that sets ``KEY`` (by_kind wins when the method is
    built, so the given value would otherwise be replaced on that kind without a word; compare and
    demo do the same through :func:`genfield.comparison.load_group`)."""
    given = {}
    for arg in argv:
        match = re.fullmatch(r"\+{0,2}method\.options\.([^.=]+)=(.*)", arg)
        if match:
            given[match[1]] = match[2]
    if command != "train" or not given or any(a.startswith("-") for a in argv):
        return []
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    try:
        with initialize_config_module("genfield.configs", version_base="1.3"):
            method = OmegaConf.to_container(compose(command, overrides=argv).method, resolve=True)
    except Exception:  # noqa: BLE001 - Hydra reports bad overrides itself
        return []
    options = method.get("options") if isinstance(method, dict) else None
    by_kind = options.get("by_kind") if isinstance(options, dict) else None
    if not isinstance(by_kind, dict):  # none, or malformed: the config check reports that
        return []
    return [
        f"method.options.by_kind.{kind}.{key}={value}"
        for kind, entry in by_kind.items()
        for key, value in given.items()
        if isinstance(entry, dict)
        and key in entry
        and not any(a.startswith(f"method.options.by_kind.{kind}.{key}=") for a in argv)
    ]


def preflight(command: str, argv: list[str]) -> None:
    """Validate a ``train``/``compare``/``demo`` config and its run folder before Hydra starts the
    job, so a refused command writes nothing (Hydra's job start rewrites ``.hydra/`` in the folder).

    Flags (``--help``, ``--cfg``, ``-m``) and overrides Hydra cannot compose are left to Hydra (it
    reports them itself); the job checks its config again, so multirun jobs are checked too.
    """
    if command not in ("train", "compare", "demo") or any(a.startswith("-") for a in argv):
        return
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    try:
        with initialize_config_module("genfield.configs", version_base="1.3"):
            cfg = compose(command, overrides=argv, return_hydra_config=True)
            out_dir = Path(str(cfg.hydra.run.dir))
            OmegaConf.set_struct(cfg, False)
            cfg.pop("hydra")
            config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - Hydra reports bad overrides and interpolations itself
        return
    run_check(command, config, out_dir)


def run_check(command: str, config: dict[str, Any], out_dir: Path) -> None:
    """The checks before any work: the config's types and ranges, then the output folder."""
    from genfield.runfiles import check_writable
    from genfield.validation import validate_compare, validate_train

    def check() -> None:
        if command == "train":
            validate_train(config)
            check_train_folder(out_dir, config)
        else:
            validate_compare(config)
            check_writable(out_dir, "hydra.run.dir")

    _guard(check)


def _torchrun_overrides(argv: list[str]) -> list[str]:
    """Under torchrun, every rank must resolve the same run folder, and only rank 0 writes Hydra's
    files: the folder comes from the torchrun run id unless given, and ranks > 0 log nothing."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return []
    extra = []
    if not any(a.startswith("hydra.run.dir=") for a in argv):
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "torchrun")
        extra.append(f"hydra.run.dir=outputs/torchrun/{run_id}")
    if int(os.environ.get("RANK", "0")) > 0:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    return extra
