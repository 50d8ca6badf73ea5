"""The file handling every lazy dataset folder shares: listing files and skipping unreadable ones.

* :func:`list_files`: the files under a folder with given endings, hidden entries skipped, in one
  order on every machine (sorted by relative path).
* :class:`SkipUnreadable`: the policy of image and mesh folders towards a file that cannot be read:
  warn naming it and serve the next readable file in order (wrapping round), so indexing stays
  deterministic and every index returns an item; or, when strict, raise.

Atomic writes live in :func:`genfield.outputs.atomic_write`; image decoding in
:mod:`genfield.datasets.decoding`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from genfield.errors import InputError

Item = TypeVar("Item")


class UnreadableFileError(InputError):
    """A file of a dataset folder that cannot be read: skipped by :class:`SkipUnreadable` unless strict."""


def normalize_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    """File endings in lower case with their leading dot (``"PNG"`` -> ``".png"``)."""
    return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def list_files(root: Path, extensions: tuple[str, ...], recursive: bool = True) -> list[str]:
    """Relative POSIX paths of the files under ``root`` ending in one of ``extensions`` (any case).

    Hidden files and folders (a name starting with ``.``) are skipped; the paths are sorted as
    strings, so the order does not depend on the file system.
    """
    found: list[str] = []
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    if recursive:
                        stack.append(Path(entry.path))
                elif entry.name.lower().endswith(extensions):
                    found.append(Path(entry.path).relative_to(root).as_posix())
    return sorted(found)


class SkipUnreadable:
    """Serve item ``index`` of a lazy folder, or the next readable one when its file cannot be read.

    ``read(i)`` decodes item ``i`` and raises :class:`UnreadableFileError` for a file that cannot
    be read (any other error propagates). Such a file is skipped with a ``warning`` naming it and
    remembered, so it is not decoded again; with ``strict`` the error is raised instead.

    Args:
        what: what the files are, for messages (``"image"``, ``"mesh"``).
        warning: the warning category of a skipped file.
        strict: raise on an unreadable file instead of skipping it.
    """

    def __init__(self, what: str, warning: type[Warning], strict: bool = False) -> None:
        self.what, self.warning, self.strict = what, warning, strict
        self.unreadable: set[int] = set()

    def item(self, index: int, count: int, read: Callable[[int], Item], where: Path) -> Item:
        """Item ``index`` of ``count`` (negative indices count from the end) read with ``read``."""
        if not -count <= index < count:
            raise IndexError(f"index {index} out of range for {count} {self.what} files in {where}")
        for offset in range(count):
            i = (index + offset) % count
            if i in self.unreadable:
                continue
            try:
                return read(i)
            except UnreadableFileError as error:
                if self.strict:
                    raise
                self.unreadable.add(i)
                warnings.warn(f"skipping unreadable {self.what}: {error}", self.warning, 3)
        raise InputError(f"none of the {count} {self.what} files under {where} can be read")


def one_line(error: BaseException) -> str:
    """An exception as one line: its type and its message with whitespace collapsed."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
