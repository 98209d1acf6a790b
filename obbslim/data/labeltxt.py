"""Read and write the DOTA text formats: labelTxt ground truth and Task1 detection files.

This is the file boundary of the project: polygons (``x1 y1 ... x4 y4``) live here and nowhere
else. Readers keep every well-formed object, degenerate ones included, because the official
evaluation keeps them; the data layer filters using ``LabelFile.lines``. Malformed lines raise
``InputError`` naming the file and the 1-based line.

Writers refuse what would break a file or escape its folder (:mod:`obbslim.utils.names`): a class
name that is not a safe file name, an image id with whitespace (a Task1 line is split on whitespace,
so ``P 0001`` would read back as 11 fields) or a path separator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from obbslim.errors import InputError
from obbslim.utils.io import atomic_write_text
from obbslim.utils.names import check_image_id, check_name, safe_join

META_KEYS = ("imagesource", "gsd")


@dataclass
class LabelFile:
    """One labelTxt file. ``lines`` are the 1-based source lines, for error messages."""

    polys: np.ndarray  # float64 [N, 8]
    names: list[str]
    difficult: np.ndarray  # int64 [N]
    lines: np.ndarray  # int64 [N]
    meta: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


def _read_lines(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path.read_text(encoding="utf-8-sig", errors="replace").splitlines()


def _to_float(rows: list[list[str]], nums: list[int], path: Path, what: str) -> np.ndarray:
    """Convert string fields to float64 in one call; on failure find the offending line."""
    try:
        return np.array(rows, dtype=np.float64).reshape(len(rows), -1)
    except ValueError:
        for row, num in zip(rows, nums):
            try:
                [float(v) for v in row]
            except ValueError:
                raise InputError(f"non-numeric {what} in {' '.join(row)!r}", path, num) from None
        raise


def read_labeltxt(path: str | Path) -> LabelFile:
    """Parse ``x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]`` lines (optional header lines
    ``imagesource:...`` and ``gsd:...`` go to ``meta``; blank lines are skipped)."""
    path = Path(path)
    meta: dict[str, str] = {}
    coords: list[list[str]] = []
    names: list[str] = []
    difficult: list[int] = []
    nums: list[int] = []
    for num, raw in enumerate(_read_lines(path), start=1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) == 1 and ":" in fields[0]:
            key, _, value = fields[0].partition(":")
            if key.lower() in META_KEYS:
                meta[key.lower()] = value
                continue
        if len(fields) not in (9, 10):
            raise InputError(
                f"expected 'x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]' (9 or 10 fields), got {len(fields)}",
                path,
                num,
            )
        d = 0
        if len(fields) == 10:
            try:
                d = int(fields[9])
            except ValueError:
                raise InputError(f"difficult flag must be an integer, got {fields[9]!r}", path, num) from None
        coords.append(fields[:8])
        names.append(fields[8])
        difficult.append(d)
        nums.append(num)
    polys = _to_float(coords, nums, path, "coordinate") if coords else np.zeros((0, 8), np.float64)
    return LabelFile(
        polys=polys,
        names=names,
        difficult=np.asarray(difficult, dtype=np.int64),
        lines=np.asarray(nums, dtype=np.int64),
        meta=meta,
    )


def _fmt(x: float) -> str:
    return repr(float(x))  # shortest text that reads back to the same float64


def write_labeltxt(
    path: str | Path,
    polys: np.ndarray,
    names: Sequence[str],
    difficult: np.ndarray | Sequence[int] | None = None,
    meta: Mapping[str, object] | None = None,
) -> None:
    """Write a labelTxt file (atomically); ``meta`` keys become ``key:value`` header lines."""
    polys = np.asarray(polys, dtype=np.float64).reshape(-1, 8)
    if len(names) != len(polys):
        raise ValueError(f"{len(polys)} polygons but {len(names)} names")
    diff = np.zeros(len(polys), np.int64) if difficult is None else np.asarray(difficult, np.int64)
    if len(diff) != len(polys):
        raise ValueError(f"{len(polys)} polygons but {len(diff)} difficult flags")
    out = [f"{k}:{v}" for k, v in (meta or {}).items()]
    for key in {str(k) for k in (meta or {})}:
        if key.lower() not in META_KEYS:
            raise ValueError(f"labelTxt header key {key!r}: expected one of {', '.join(META_KEYS)}")
    for v in (meta or {}).values():
        if any(c.isspace() or not c.isprintable() for c in str(v)):
            raise ValueError(f"labelTxt header value {str(v)!r} must be one printable word")
    for poly, name, d in zip(polys.tolist(), names, diff.tolist()):
        if not name or any(c.isspace() or not c.isprintable() for c in name):
            raise ValueError(f"class name {name!r} must be non-empty, printable, no whitespace (use hyphens)")
        out.append(" ".join(map(_fmt, poly)) + f" {name} {d}")
    atomic_write_text(path, "".join(line + "\n" for line in out))


def read_task1(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Parse a Task1 detection file (``image score x1 y1 ... x4 y4`` per line).

    Returns ``(image_ids, scores float64 [N], polys float64 [N, 8])`` in file order (the order
    matters: the official evaluation breaks score ties by it).
    """
    path = Path(path)
    ids: list[str] = []
    rows: list[list[str]] = []
    nums: list[int] = []
    for num, raw in enumerate(_read_lines(path), start=1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) != 10:
            raise InputError(
                f"expected 'image score x1 y1 x2 y2 x3 y3 x4 y4' (10 fields), got {len(fields)}", path, num
            )
        ids.append(fields[0])
        rows.append(fields[1:])
        nums.append(num)
    if not rows:
        return [], np.zeros(0, np.float64), np.zeros((0, 8), np.float64)
    values = _to_float(rows, nums, path, "score or coordinate")
    bad = ~np.isfinite(values).all(1)
    if bad.any():  # NaN/inf would rank and match arbitrarily
        j = int(np.argmax(bad))
        what = " ".join(rows[j])
        raise InputError(f"score and coordinates must be finite numbers, got {what!r}", path, nums[j])
    return ids, values[:, 0].copy(), values[:, 1:].copy()


def _columns(value) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Accept ``(image_ids, scores, polys)`` columns or a list of ``(image_id, score, poly8)`` rows."""
    if isinstance(value, tuple) and len(value) == 3 and all(isinstance(s, str) for s in value[0]):
        ids, scores, polys = value
    else:
        rows = list(value)
        ids = [r[0] for r in rows]
        scores = [r[1] for r in rows]
        polys = [np.asarray(r[2], np.float64).reshape(8) for r in rows]
    scores = np.asarray(scores, np.float64).reshape(-1)
    polys = np.asarray(polys, np.float64).reshape(-1, 8)
    if not (len(ids) == len(scores) == len(polys)):
        raise ValueError(f"{len(ids)} image ids, {len(scores)} scores, {len(polys)} polygons")
    return list(ids), scores, polys


def task1_filename(class_name: str) -> str:
    """``Task1_<class>.txt``; DOTA names keep their hyphens, spaces become hyphens. A class name that
    is not a safe file name (``utils.names``) raises ``InputError``."""
    check_name(class_name, "class name")
    return f"Task1_{class_name.strip().replace(' ', '-')}.txt"


def write_task1(det_dir: str | Path, dets: Mapping[str, object]) -> list[Path]:
    """Write one ``Task1_<class>.txt`` per class (empty classes get an empty file).

    ``dets`` maps class name -> ``(image_ids, scores, polys)`` or a list of
    ``(image_id, score, poly8)``. Returns the paths written. Every class name and image id is
    checked before the first file is written (``InputError`` naming it): nothing lands outside
    ``det_dir`` and no line gets more than 10 fields.
    """
    det_dir = Path(det_dir)
    jobs = []
    for name, value in dets.items():
        path = safe_join(det_dir, task1_filename(name), "Task1 file name")
        ids, scores, polys = _columns(value)
        for i in dict.fromkeys(ids):
            check_image_id(i, path)
        jobs.append((path, ids, scores, polys))
    written = []
    for path, ids, scores, polys in jobs:
        text = "".join(
            f"{i} {_fmt(s)} " + " ".join(map(_fmt, p)) + "\n"
            for i, s, p in zip(ids, scores.tolist(), polys.tolist())
        )
        atomic_write_text(path, text)
        written.append(path)
    return written
