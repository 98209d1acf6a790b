"""Errors a user can act on. The CLI prints them as one line, without a traceback."""

from __future__ import annotations

import errno
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


class RunLockedError(ObbslimError):
    """Another live run holds the run folder's lock."""


# a full or read-only disk: no point going on with the next image, the next epoch...
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT})

_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "permission denied: write elsewhere or fix the folder's permissions",
    errno.EPERM: "operation not permitted: write elsewhere or fix the folder's permissions",
    errno.EDQUOT: "the disk quota is exceeded: free some space or write elsewhere",
    errno.ENAMETOOLONG: "the file name is too long",
}


def describe_os_error(e: OSError) -> str:
    """One line for an OSError: the path, the system's reason and what to do (disk full, read-only...)."""
    where = e.filename if e.filename is not None else None
    if e.filename2 is not None:
        where = f"{e.filename} -> {e.filename2}"
    reason = e.strerror or str(e) or type(e).__name__
    hint = _OS_HINTS.get(e.errno or -1)
    text = f"{where}: {reason}" if where is not None else reason
    return f"{text} ({hint})" if hint else text
