"""The options of ``genfield reconstruct``: their rules, their defaults, and the command line Hydra gets.

Every option is type- and range-checked (:data:`OPTION_RULES`) before any file is read: Hydra parses
``context_fraction=abc`` to the string ``'abc'`` and ``downscale=1.5`` to a float, and each is refused
here with one line. Their defaults live once, in ``configs/reconstruct.yaml``. The names of
``baselines=[...]`` depend on the run's data kind: :func:`check_baselines` checks them as soon as the
run's stored config is read, before the input file is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from genfield.commands.base import CONFIG_PATH
from genfield.errors import InputError
from genfield.kinds.inputs import INPUT_TYPES
from genfield.outputs import check_output_folder
from genfield.runs import with_run_groups

ANGLE_UNITS = ("rad", "deg")
#: ``sinogram_units=``: ``domain`` line integrals (the image side is 2), or ``skimage`` for a
#: ``skimage.transform.radon`` sinogram (pixel sums, ``(D, A)``; :func:`genfield.forward.ct.from_skimage`).
SINOGRAM_UNITS = ("domain", "skimage")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _is_names(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(map(_is_path, value)) and len(set(value)) == len(value)


def _is_views(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) > 0 and all(_is_int(i) and i >= 0 for i in value)


#: key -> (accepts, valid range in words, may be null).
OPTION_RULES: dict[str, tuple[Callable[[Any], bool], str, bool]] = {
    "steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0", True),
    "num_samples": (lambda v: _is_int(v) and v >= 1, "an integer >= 1", False),
    "seed": (lambda v: _is_int(v) and v >= 0, "an integer >= 0", False),
    "progress": (lambda v: isinstance(v, bool), "true or false", False),
    "out": (_is_path, "a folder path", True),
    "mask": (_is_path, "an image file", True),
    "context_fraction": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]", True),
    "input_type": (lambda v: v in INPUT_TYPES, f"one of {', '.join(INPUT_TYPES)}", False),
    "angles": (_is_path, "a .npy file of angles or even:<A>", True),
    "angle_unit": (lambda v: v in ANGLE_UNITS, f"one of {', '.join(ANGLE_UNITS)}", True),
    "sinogram_scale": (lambda v: _is_number(v) and v > 0, "a finite number > 0", False),
    "sinogram_units": (lambda v: v in SINOGRAM_UNITS, f"one of {', '.join(SINOGRAM_UNITS)}", False),
    "n_context": (lambda v: _is_int(v) and v >= 1, "an integer >= 1", True),
    "n_target": (lambda v: _is_int(v) and v >= 1, "an integer >= 1", True),
    "mesh_resolution": (lambda v: _is_int(v) and 8 <= v <= 1024, "an integer in [8, 1024]", False),
    "context_views": (_is_views, "a non-empty list of view indices >= 0, e.g. [0,3]", True),
    "downscale": (lambda v: _is_int(v) and v >= 1, "an integer >= 1", False),
    "baselines": (_is_names, "a list of distinct baseline names, e.g. [biharmonic,mean] ([]: none)", True),
}


def check_options(cfg: Mapping[str, Any]) -> None:
    """Raise :class:`InputError` (``key=value: expected ...``) for the first option out of range."""
    for key, (accepts, expected, nullable) in OPTION_RULES.items():
        value = cfg.get(key)
        if value is None and nullable:
            continue
        if not accepts(value):
            raise InputError(f"{key}={value!r}: expected {expected}{' (or null)' if nullable else ''}")


def check_baselines(names: Sequence[str] | None, kind: str) -> None:
    """Raise :class:`InputError` for a name in ``baselines`` that kind ``kind`` does not have, listing
    the ones it has (``names=None``: the kind's defaults, nothing to check)."""
    from genfield.classical import BASELINES
    from genfield.commands.reconstruct_baselines import kind_baselines
    from genfield.kinds import get_kind

    valid = list(kind_baselines(get_kind(kind)))
    for name in names or ():
        if name not in valid:
            why = "runs on other data kinds" if name in BASELINES else "is not a baseline"
            raise InputError(
                f"baselines: {name!r} {why}; valid for {kind} runs: {', '.join(valid) or 'none'} (or [])"
            )


def option_defaults() -> dict[str, Any]:
    """The options of ``configs/reconstruct.yaml`` (the one home of their defaults)."""
    from omegaconf import OmegaConf

    path = Path(__file__).parent.parent / CONFIG_PATH / "reconstruct.yaml"
    config = OmegaConf.to_container(OmegaConf.load(path))
    return {k: v for k, v in config.items() if k not in ("defaults", "hydra", "run", "input")}


#: Whether each ``out=`` folder existed before Hydra made it (then a failing call never removes it).
OUT_EXISTED: dict[str, bool] = {}


def prepare_argv(argv: Sequence[str]) -> list[str]:
    """The command line Hydra gets: overrides parsed first (a one-line error naming the bad one),
    the run's groups selected, and with ``out=`` Hydra's run directory *is* ``out`` (checked
    writable first), with no ``.hydra`` subfolder or log file: nothing is written to ``./outputs``
    and a file already in ``out`` is never touched by a failing call."""
    values = override_values(argv)
    argv = with_run_groups(argv)
    out = values.get("out")
    if out and not any(a.startswith("hydra.run.dir=") for a in argv):
        folder = Path(str(out)).expanduser()
        check_output_folder(folder, "out")
        OUT_EXISTED[str(folder)] = folder.exists()
        quoted = str(folder).replace("'", "\\'")  # Hydra's quoted string: only quotes are escaped
        argv = [*argv, f"hydra.run.dir='{quoted}'", "hydra.output_subdir=null", "hydra/job_logging=stdout"]
    return argv


def override_values(argv: Sequence[str]) -> dict[str, Any]:
    """``{key: value}`` of ``key=value`` overrides as Hydra parses them; a value Hydra cannot parse
    (non-ASCII characters, ``=`` or ``,`` unquoted) is an error saying how to quote it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    values: dict[str, Any] = {}
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
        except HydraException as error:
            key, value = arg.split("=", 1)
            raise InputError(
                f"cannot parse override {arg!r} ({str(error).splitlines()[0]}): quote a value with spaces, "
                f"',', '=' or non-ASCII characters for Hydra, e.g. \"{key}='{value}'\" in the shell"
            ) from None
        if override.is_sweep_override():
            continue
        values[override.get_key_element()] = override.value()
    return values
