"""Output folders: checked before any work, and not left behind empty by a failing command.

A command that would fail only when it writes its results (after minutes of fitting) checks its
output folder first; a command that fails on bad input removes the folder it made for nothing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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
