"""Errors a user can act on. The CLI prints them as one line, without a traceback."""

from __future__ import annotations

from pathlib import Path


class ObbslimError(Exception):
    """Base class for user-facing errors (bad input, bad configuration)."""


class InputError(ObbslimError, ValueError):
    """Bad input data. Names the file and, where it applies, the 1-based line number."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = message
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(where + message)
