"""Output files and folders: written atomically, checked before any work, not left behind empty.

A command that would fail only when it writes its results (after minutes of fitting) checks its
output folder first; a command that fails on bad input removes the folder it made for nothing.
Every file that must never be seen half-written (checkpoints, CSV logs, dataset caches and
manifests) goes through :func:`atomic_write`.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from genfield.errors import InputError


def check_output_folder(folder: str | os.PathLike, key: str) -> None:
    """Raise :class:`InputError` naming ``key`` unless ``folder`` is, or can be made, a writable folder.

    Nothing is created: the nearest existing ancestor must be a folder this process may write into.
    """
    folder = Path(folder).expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InputError(f"{key}={folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{key}={folder}: cannot write into {existing} (permission denied)")


def discard_if_empty(folder: str | os.PathLike, up_to: str | os.PathLike | None = None) -> None:
    """Remove an output folder that holds nothing but Hydra's own files (``.hydra/``, ``*.log``);
    with ``up_to``, also its parents below ``up_to`` that are left empty (``outputs/<command>/``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    entries = list(folder.iterdir())
    if not all(e.name == ".hydra" or (e.is_file() and e.suffix == ".log") for e in entries):
        return
    shutil.rmtree(folder, ignore_errors=True)
    if up_to is None:
        return
    stop = Path(up_to).absolute()
    parent = folder.absolute().parent
    while parent != stop and parent.is_relative_to(stop) and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def temporary_name(path: Path) -> Path:
    """The temporary file :func:`atomic_write` writes ``path`` through: ``.<name>.<pid>.<random>.tmp``
    beside it (same folder, so the final ``os.replace`` is atomic; hidden, so no folder listing
    picks it up)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open ``path`` for writing so that readers see the old file or the complete new one, never a part.

    The body writes into a temporary file beside ``path`` (:func:`temporary_name`), created with the
    process umask (not mode 0600 as :func:`tempfile.mkstemp` would) and ``O_EXCL``; on a clean exit it
    is flushed, fsynced and ``os.replace``-d onto ``path``. On any exception, ``KeyboardInterrupt``
    included, the temporary file is removed and ``path`` is left as it was. The parent folder must
    exist. ``mode`` is ``"wb"`` or ``"w"`` (text opened with ``newline=""``, as :mod:`csv` wants).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    temporary = temporary_name(path)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, mode, **({} if mode == "wb" else {"newline": ""})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
