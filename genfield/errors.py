"""Errors that genfield raises for bad user input.

Every bad-input error is a one-line message that names the file, key or value at fault. The CLI
turns :class:`InputError` into an exit status of 2 (the conventional "usage error" status).
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from a user: a missing or unreadable file, an unknown name, an invalid value."""


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> InputError:
    """The error for an unknown registry name, listing the valid ones."""
    return InputError(f"unknown {kind} {name!r}; valid names: {', '.join(sorted(valid))}")
