"""The one rule for names that become file names: class names (``Task1_<class>.txt``), image ids (the
first field of a Task1 line, ``labels/<id>.txt``) and run names (``<project>/<name>``).

Names come from files written by strangers (a dataset YAML, a checkpoint, an ONNX export's metadata,
detection files), so a name is refused where it enters, with an error naming it, when it holds a path
separator (``/`` or ``\\``), ``..``, a control or line-breaking character, or starts with a dot, is
empty or longer than :data:`MAX_NAME_BYTES`. Image ids also may not hold whitespace: a Task1 line is
split on whitespace, so ``P 0001`` would read back as 11 fields. And every output path is checked to
stay inside its folder before anything is written (:func:`safe_join`).
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from obbslim.errors import InputError

MAX_NAME_BYTES = 200  # file names are at most 255 bytes; Task1_ and .txt need room
MAX_CLASSES = 2000  # a class list longer than this (LVIS has 1203) is refused: one file per class is written
RULE = "names become file names: no path separators, '..', control characters or leading dot"
# Cc: control (\n, \t, NUL, \x85); Cf: format (bidi overrides); Cs: surrogates; Zl/Zp: U+2028/U+2029,
# which str.splitlines() breaks lines at
_BAD_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def name_problem(name: object, whitespace: bool = True) -> str | None:
    """Why ``name`` may not become a file name, or None when it may. ``whitespace=False`` also refuses
    any whitespace (image ids); otherwise only plain spaces are allowed (``small vehicle``)."""
    if not isinstance(name, str):
        return f"not a string ({type(name).__name__})"
    if not name.strip():
        return "empty"
    if "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        return "holds a path separator"
    if ".." in name:
        return "holds '..'"
    for c in name:
        if unicodedata.category(c) in _BAD_CATEGORIES:
            return f"holds the control character {c!r}"
        if c.isspace() and (not whitespace or c != " "):
            return f"holds the whitespace character {c!r}"
    if name.strip().startswith("."):
        return "starts with a dot"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    return None


def check_name(name: object, what: str, where: str | Path | None = None, whitespace: bool = True) -> str:
    """``name`` itself when it may become a file name; else ``InputError`` naming it and ``where``."""
    problem = name_problem(name, whitespace)
    if problem:
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise InputError(f"{what} {shown} {problem} ({RULE})", where)
    return name  # type: ignore[return-value]


def check_names(names: object, what: str, where: str | Path | None = None) -> list[str]:
    """A list of class names, each checked by :func:`check_name`."""
    if not isinstance(names, (list, tuple)):
        raise InputError(f"{what}s must be a list of strings, got {type(names).__name__}", where)
    return [check_name(n, what, where) for n in names]


def check_image_id(image_id: object, where: str | Path | None = None) -> str:
    """An image id (a file stem) for Task1 lines and per-image files: the name rule, no whitespace."""
    return check_name(image_id, "image id", where, whitespace=False)


def inside(folder: str | Path, path: str | Path) -> bool:
    """Whether ``path`` lies in ``folder`` once ``..`` and relative parts are resolved (lexically: a
    write replaces a symlink in the folder rather than following it)."""
    root = os.path.abspath(folder)
    p = os.path.abspath(path)
    return os.path.commonpath([root, p]) == root and p != root


def safe_join(folder: str | Path, filename: str, what: str = "file name") -> Path:
    """``folder / filename``, refused (``InputError``) unless ``filename`` obeys the name rule and the
    result stays inside ``folder``."""
    check_name(filename, what, folder)
    path = Path(folder) / filename
    if not inside(folder, path):  # cannot happen after check_name; kept as the last line of defence
        raise InputError(f"{what} {filename!r} would write outside the folder", folder)
    return path
