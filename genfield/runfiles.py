"""The files of a training run and how they survive interruptions.

* A run folder that already holds a checkpoint is only reused on purpose: ``resume=true`` (its
  stored config must match, except keys that may change between sessions) or ``overwrite=true``.
* ``metrics.csv`` and ``validation.csv`` grow row by row as training goes, so Ctrl-C, SIGTERM and
  SIGKILL keep every logged row; a resume drops the rows past the checkpoint's step before it runs
  those steps again, so no step is logged twice.
* SIGINT and SIGTERM (what SLURM and preemption send) stop a training loop at the next step
  boundary: the loop checkpoints, the rows are already on disk, and the command exits with
  ``128 + signal`` (130, 143) saying what was kept. A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import math
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from genfield.errors import InputError
from genfield.outputs import atomic_write

CHECKPOINT = Path("checkpoints") / "last.safetensors"
METRICS, VALIDATION = "metrics.csv", "validation.csv"
#: Keys that may differ between a checkpoint's stored config and a resumed run: how long to train,
#: where, and how often to log, validate and checkpoint. Everything else defines the run.
RESUMABLE_KEYS = (
    "resume",
    "overwrite",
    "device",
    "train.steps",
    "train.progress",
    "train.tensorboard",
    "train.log_every",
    "train.val_every",
    "train.checkpoint_every",
    "eval.figure",
)


# --------------------------------------------------------------------------------------------------
# The run folder
# --------------------------------------------------------------------------------------------------
def check_writable(folder: Path, key: str) -> None:
    """Raise one line naming ``key`` unless ``folder`` can be created and written.

    Probes the nearest existing folder on the way with a temporary file (gone when closed), so a
    check of a folder that is not made yet (a timestamped run folder) leaves nothing behind.
    """
    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{key}={folder}: cannot write there ({probe} is a file, not a folder)")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        raise InputError(f"{key}={folder}: cannot write there ({probe}: {error.strerror or error})") from None


def check_run_folder(out_dir: Path, config: Mapping[str, Any]) -> int | None:
    """Check that training into ``out_dir`` loses nothing; return the checkpoint's step (or None).

    Raises :class:`InputError` when the folder holds a checkpoint and neither ``resume`` nor
    ``overwrite`` is set, when both are, when a resumed checkpoint was trained with another config
    (listing the keys), and when ``train.steps`` is below the checkpoint's step.
    """
    from genfield.builders import with_targets
    from genfield.checkpoint import config_differences

    resume, overwrite = bool(config.get("resume")), bool(config.get("overwrite"))
    if resume and overwrite:
        raise InputError("resume=true and overwrite=true exclude each other: continue the run or replace it")
    checkpoint = out_dir / CHECKPOINT
    if not checkpoint.is_file():
        return None
    stored = _stored_config(checkpoint)
    step = int(stored["step"])
    if overwrite:
        return step
    if not resume:
        raise InputError(
            f"run folder {out_dir} already holds a checkpoint (step {step}); continue it with resume=true, "
            "train into a new folder (hydra.run.dir=...), or replace it with overwrite=true"
        )
    differences = [
        d
        for d in config_differences(_without(with_targets(stored["config"])), _without(dict(config)))
        if not _resumable(d.split(":", 1)[0])
    ]
    if differences:
        raise InputError(
            f"resume=true: checkpoint {checkpoint} was trained with another config (stored != given): "
            f"{'; '.join(differences)}; only {', '.join(RESUMABLE_KEYS[2:])} may change on resume "
            "(or train into a new folder)"
        )
    steps = config.get("train", {}).get("steps")
    if isinstance(steps, int) and steps < step:
        raise InputError(
            f"train.steps={steps} is below the step of checkpoint {checkpoint} ({step}): nothing to train; "
            f"give train.steps > {step} to continue"
        )
    return step


def _resumable(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in RESUMABLE_KEYS)


def _stored_config(checkpoint: Path) -> dict[str, Any]:
    """The step and config of a checkpoint, with the check ``reconstruct`` makes that it is a run's."""
    from genfield.checkpoint import read_checkpoint_metadata, stored_config

    return {"step": read_checkpoint_metadata(checkpoint)["step"], "config": stored_config(checkpoint)}


def _without(config: dict[str, Any]) -> dict[str, Any]:
    """A config without what is derived from the data (``resolved``) or Hydra's own node."""
    return {k: v for k, v in config.items() if k not in ("resolved", "hydra")}


def start_fresh(out_dir: Path) -> None:
    """``overwrite=true``: remove the previous run's checkpoints and training logs before training."""
    for path in [
        *(out_dir / CHECKPOINT.parent).glob("*.safetensors"),
        out_dir / METRICS,
        out_dir / VALIDATION,
    ]:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# Logs that grow as training goes
# --------------------------------------------------------------------------------------------------
def _cell(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else "nan"


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV log (empty when the file does not exist)."""
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def append_rows(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append rows to a CSV log, writing the header first; a new column rewrites the file once."""
    rows = [dict(r) for r in rows]
    if not rows:
        return
    names = list(dict.fromkeys(k for row in rows for k in row))
    header: list[str] = []
    if path.is_file() and path.stat().st_size:
        with path.open(newline="") as file:
            header = next(csv.reader(file), [])
    if header and not set(names) <= set(header):
        old = read_rows(path)
        _write(path, old + rows, list(dict.fromkeys([*header, *names])))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    names = header or sorted(names, key=lambda k: (k != "step", k))
    with path.open("a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=names)
        if not header:
            writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
        file.flush()


def keep_rows(path: Path, keep: Callable[[int], bool]) -> None:
    """Keep only the rows of a CSV log whose ``step`` passes ``keep`` (before steps are run again)."""
    rows = read_rows(path)
    kept = [r for r in rows if keep(int(r["step"]))]
    if len(kept) == len(rows):
        return
    if not kept:
        path.unlink()
        return
    _write(path, kept, list(rows[0]))


def _write(path: Path, rows: list[Mapping[str, Any]], names: list[str]) -> None:
    """Replace a CSV log atomically (:func:`~genfield.outputs.atomic_write`)."""
    with atomic_write(path, "w") as file:
        writer = csv.DictWriter(file, fieldnames=names)
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)


# --------------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """A command stopped by SIGINT or SIGTERM; the message says what was kept."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _name(signum: int) -> str:
    return signal.Signals(signum).name


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM behaves as Ctrl-C (an :class:`Interrupted` with exit status 143)."""

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted("terminated (SIGTERM)", 128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StopAtStepBoundary:
    """Within a training loop: the first SIGINT / SIGTERM sets :attr:`signum`, the loop checks it
    between steps (no step is cut in half, so the checkpoint it writes is a consistent state); a
    second signal raises at once. Handlers are restored on exit. Off outside the main thread and
    when ``enabled`` is false (several ranks must stop at the same step, which needs a collective).
    """

    _active: list[StopAtStepBoundary] = []

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopAtStepBoundary:
        if self.enabled:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        StopAtStepBoundary._active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        StopAtStepBoundary._active.remove(self)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @classmethod
    def current(cls) -> StopAtStepBoundary:
        """The innermost active instance (a disabled one outside :func:`stops_at_step_boundary`)."""
        return cls._active[-1] if cls._active else cls(enabled=False)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise Interrupted(f"{_name(signum)} again: stopped mid-step", 128 + signum)
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def interrupted(self, out_dir: Path, step: int, total: int, checkpoint: Path | None) -> Interrupted:
        """The exception that reports what an interrupted training loop kept."""
        assert self.signum is not None
        what = kept(out_dir, checkpoint)
        return Interrupted(
            f"interrupted ({_name(self.signum)}) after step {step} of {total}; kept: {what}",
            128 + self.signum,
        )


def stops_at_step_boundary(function: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``function`` (a training loop) under :class:`StopAtStepBoundary`, on one process only."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from genfield.distributed import world

        with StopAtStepBoundary(enabled=world()[1] == 1):
            return function(*args, **kwargs)

    return wrapper


def kept(out_dir: Path | None, checkpoint: Path | None = None) -> str:
    """What a run folder holds after an interruption, in words (never a checkpoint that is not there)."""
    from genfield.checkpoint import read_checkpoint_metadata

    if out_dir is None:
        return "nothing (no run folder yet)"
    checkpoints = [checkpoint] if checkpoint else sorted(out_dir.rglob(CHECKPOINT.name))
    parts = [
        f"checkpoint {c} (step {read_checkpoint_metadata(c)['step']})" for c in checkpoints if c.is_file()
    ]
    for name in (METRICS, VALIDATION):
        if (out_dir / name).is_file():
            parts.append(f"{name} ({len(read_rows(out_dir / name))} rows)")
    return ", ".join(parts) if parts else f"nothing in {out_dir} (interrupted before the first checkpoint)"
