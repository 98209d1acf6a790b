"""Dataset YAML, label scanning (YOLO-OBB and DOTA labelTxt), label cache and the bad-sample report.

Scanning never drops anything silently: every skipped image, dropped polygon and orphan label file
is counted in a ScanReport and named (file and line) in its messages.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import yaml
from tqdm import tqdm

from obbslim.data import cache as cache_mod
from obbslim.data.classes import class_index, dota_names, normalize_name
from obbslim.data.imageinfo import IMG_FORMATS, image_size
from obbslim.data.labeltxt import read_labeltxt
from obbslim.errors import InputError
from obbslim.ops import quad_area
from obbslim.utils.names import check_name
from obbslim.utils.text import plural

SPLITS = ("train", "val", "test")
LABEL_DIRS = {"yolo": "labels", "labeltxt": "labelTxt"}  # label format -> folder that replaces images/
MIN_AREA = 1.0  # px^2; smaller polygons are degenerate

# Per-image scan outcome codes (stored in the cache).
OK, BACKGROUND, BAD = 0, 1, 2


class UnknownClassError(InputError):
    """A label file names classes (or ids) the dataset does not list; ``classes`` holds all of them."""

    def __init__(self, message: str, path: str, line: int, classes: list[str]):
        super().__init__(message, path, line)
        self.classes = classes


@dataclass
class Sample:
    """One image and its objects; polygons in pixels of the original image."""

    im_file: str
    shape: tuple[int, int]  # (h, w)
    polys: np.ndarray  # float32 [N, 8]
    cls: np.ndarray  # int64 [N]
    difficult: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.cls)


@dataclass
class ScanReport:
    """What a scan found: counts plus one message (file:line: reason) per problem."""

    split: str = ""
    label_format: str | None = None
    found: int = 0  # images found
    used: int = 0  # images returned as samples (including background)
    skipped_bad: int = 0  # corrupt images or malformed label files
    background: int = 0  # images with no label file or an empty one (0 objects, still used)
    orphans: int = 0  # label files without an image
    unknown_classes: dict[str, int] = field(default_factory=dict)  # class name/id not in names -> images
    names: list[str] = field(default_factory=list)  # the dataset's class names
    dropped_degenerate: int = 0  # polygons dropped (area < 1 px^2, NaN or inf)
    objects: int = 0  # objects in the returned samples
    messages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    from_cache: bool = False
    cache_file: str | None = None

    def summary(self, max_messages: int = 5) -> str:
        dropped = plural(self.dropped_degenerate, "degenerate polygon")
        head = (
            f"{self.split}: {plural(self.found, 'image')} found, {self.used} used ({self.background} "
            f"background), {self.skipped_bad} skipped as bad, {dropped} dropped, "
            f"{plural(self.orphans, 'orphan label file')}; {plural(self.objects, 'object')}"
            f" [{self.label_format or 'no labels'}{', from cache' if self.from_cache else ''}]"
        )
        lines = [head]
        if self.unknown_classes:
            lines.append(f"  {self.unknown_text()}")
        lines += [f"  {m}" for m in self.messages[:max_messages]]
        if len(self.messages) > max_messages:
            lines.append(f"  ... and {plural(len(self.messages) - max_messages, 'more message')}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def unknown_text(self) -> str:
        """``labels name classes the dataset does not list: 'tank' (3 images), ...``."""
        items = ", ".join(f"{k!r} ({plural(n, 'image')})" for k, n in sorted(self.unknown_classes.items()))
        return f"labels name classes the dataset does not list (their images are skipped): {items}"

    def __str__(self) -> str:
        return self.summary()


# ----------------------------------------------------------------------------------------- data YAML


def _parse_names(names: Any, where: str | None) -> list[str]:
    if isinstance(names, str):
        try:
            return dota_names(names)
        except KeyError as e:
            raise InputError(str(e.args[0]), where) from None
    if isinstance(names, (list, tuple)):
        out = [str(n) for n in names]
    elif isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise InputError("'names' keys must be class ids 0..nc-1", where) from None
        if ids != list(range(len(ids))):
            raise InputError(f"'names' ids must be 0..{len(ids) - 1} without gaps, got {ids}", where)
        by_id = {int(k): str(v) for k, v in names.items()}
        out = [by_id[i] for i in ids]
    else:
        raise InputError(
            "'names' is required: a list, a dict id -> name, or 'dota1.0'/'dota1.5'/'dota2.0'", where
        )
    if not out:
        raise InputError("'names' is empty", where)
    for n in out:  # class names become Task1_<name>.txt: refused here, where they enter
        check_name(n, "class name", where)
    try:
        class_index(out)
    except ValueError as e:
        raise InputError(str(e), where) from None
    return out


def load_data_yaml(data: str | Path | dict) -> dict:
    """Read an Ultralytics-style dataset YAML (or normalise a dict) into absolute paths.

    Keys: ``path`` (root; relative to the YAML's folder), ``train``/``val``/``test`` (a folder of
    images, a .txt list of image paths, or a list of these; relative to ``path``) and ``names``.
    Returns a new dict with absolute path strings, ``names`` as a list, ``nc`` and ``yaml_file``.
    """
    if isinstance(data, dict):
        d = dict(data)
        yaml_file = d.get("yaml_file")
        base = Path(yaml_file).parent if yaml_file else Path.cwd()
    else:
        yaml_file = os.path.abspath(data)
        if not os.path.isfile(yaml_file):
            raise InputError("dataset YAML not found", yaml_file)
        try:
            d = yaml.safe_load(Path(yaml_file).read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise InputError(
                f"invalid YAML: {getattr(e, 'problem', None) or e}",
                yaml_file,
                mark.line + 1 if mark else None,
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read dataset YAML: {e}", yaml_file) from None
        if not isinstance(d, dict):
            raise InputError("expected a mapping with keys path, train, val, names", yaml_file)
        base = Path(yaml_file).parent
    where = str(yaml_file) if yaml_file else None

    root = Path(os.path.expanduser(str(d.get("path") or base)))
    root = Path(os.path.abspath(root if root.is_absolute() else base / root))
    if not root.is_dir():
        raise InputError(f"dataset root 'path' not found: {root}", where)

    present = [k for k in SPLITS if d.get(k)]
    if not present:
        raise InputError("the dataset defines none of 'train', 'val', 'test'", where)
    for k in SPLITS:
        v = d.get(k)
        if not v:
            d.pop(k, None)
            continue
        items = [v] if isinstance(v, (str, Path)) else list(v)
        resolved = []
        for item in items:
            p = Path(os.path.expanduser(str(item)))
            p = Path(os.path.abspath(p if p.is_absolute() else root / p))
            if not p.exists():
                raise InputError(f"'{k}' images not found: {p}", where)
            resolved.append(str(p))
        d[k] = resolved[0] if isinstance(v, (str, Path)) else resolved

    names = _parse_names(d.get("names"), where)
    if d.get("nc") is not None and int(d["nc"]) != len(names):
        raise InputError(f"'nc' is {d['nc']} but 'names' lists {len(names)} classes", where)
    d.update(path=str(root), names=names, nc=len(names), yaml_file=where)
    return d


# ------------------------------------------------------------------------------- finding the files


def list_images(sources: str | Iterable[str]) -> list[str]:
    """Image files under folders (recursively) or listed in .txt files (relative to the .txt's folder)."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    files: list[str] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            # a broken symlink is listed too: the scan reports it (image skipped) instead of losing it
            files += [
                str(q)
                for q in p.rglob("*")
                if q.suffix.lower() in IMG_FORMATS and (q.is_file() or (q.is_symlink() and not q.exists()))
            ]
        elif p.is_file() and p.suffix.lower() == ".txt":
            for line in p.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line:
                    q = Path(line)
                    files.append(os.path.abspath(q if q.is_absolute() else p.parent / q))
        elif p.is_file() and p.suffix.lower() in IMG_FORMATS:
            files.append(str(p.absolute()))
        else:
            raise InputError("image folder or list not found", p)
    return sorted(set(files))


def label_path(im_file: str, fmt: str) -> str | None:
    """`.../images/<sub>/X.png` -> `.../labels/<sub>/X.txt` (yolo) or `.../labelTxt/<sub>/X.txt`."""
    sa = f"{os.sep}images{os.sep}"
    if sa not in im_file:
        return None
    head, tail = im_file.rsplit(sa, 1)
    return f"{head}{os.sep}{LABEL_DIRS[fmt]}{os.sep}{os.path.splitext(tail)[0]}.txt"


def _txt_files(folder: str) -> set[str]:
    try:
        return {n for n in os.listdir(folder) if n.endswith(".txt")}
    except OSError:
        return set()


def detect_format(im_files: list[str]) -> str | None:
    """The label format whose folder holds the most label files for these images (None: no labels)."""
    best, best_key = None, (0, False)
    for fmt in LABEL_DIRS:
        lbs = [label_path(f, fmt) for f in im_files]
        listing = {d: _txt_files(d) for d in {os.path.dirname(lb) for lb in lbs if lb}}
        count = sum(1 for lb in lbs if lb and os.path.basename(lb) in listing[os.path.dirname(lb)])
        key = (count, any(os.path.isdir(d) for d in listing))  # an existing empty folder beats none
        if key > best_key:
            best, best_key = fmt, key
    return best


def find_orphans(im_files: list[str], lb_files: list[str | None]) -> list[str]:
    """Label files in the label folders that no image (of any extension) in the mirror folder matches."""
    dirs: dict[str, str] = {}
    for im, lb in zip(im_files, lb_files):
        if lb:
            dirs.setdefault(os.path.dirname(lb), os.path.dirname(im))
    orphans = []
    for ldir, idir in sorted(dirs.items()):
        try:
            stems = {os.path.splitext(n)[0] for n in os.listdir(idir) if n.lower().endswith(IMG_FORMATS)}
        except OSError:
            stems = set()
        orphans += [os.path.join(ldir, n) for n in sorted(_txt_files(ldir)) if n[:-4] not in stems]
    return orphans


# ------------------------------------------------------------------------------------------ parsing


def _parse_label_file(
    path: str, fmt: str, shape: tuple[int, int], index: dict[str, int], nc: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse one label file -> (polys float64 [N,8] px, cls, difficult, 1-based lines). Raises InputError."""
    if fmt == "labeltxt":
        lf = read_labeltxt(path)
        lines = np.asarray(lf.lines, dtype=np.int64)
        keys = [normalize_name(n) for n in lf.names]
        bad = [j for j, k in enumerate(keys) if k not in index]
        if bad:
            j = bad[0]
            raise UnknownClassError(
                f"unknown class name {lf.names[j]!r} (dataset names: {', '.join(index)})",
                path,
                int(lines[j]),
                sorted({lf.names[i] for i in bad}),
            )
        cls = np.array([index[k] for k in keys], dtype=np.int64)
        polys = np.asarray(lf.polys, dtype=np.float64).reshape(-1, 8)
        return polys, cls, np.asarray(lf.difficult, dtype=np.int64), lines

    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError("label file is not UTF-8 text", path) from None
    except OSError as e:
        raise InputError(f"cannot read label file ({e.strerror or e})", path) from None
    rows, line_nos = [], []
    for i, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 9:
            raise InputError(f"expected 9 fields 'cls x1 y1 x2 y2 x3 y3 x4 y4', got {len(fields)}", path, i)
        rows.append(fields)
        line_nos.append(i)
    lines = np.asarray(line_nos, dtype=np.int64)
    if not rows:
        return np.zeros((0, 8)), np.zeros(0, np.int64), np.zeros(0, np.int64), lines
    try:
        arr = np.array(rows, dtype=np.float64)
    except ValueError:
        for fields, i in zip(rows, line_nos):
            for v in fields:
                try:
                    float(v)
                except ValueError:
                    raise InputError(f"non-numeric value {v!r}", path, i) from None
        raise
    c = arr[:, 0]
    bad = ~((c == np.round(c)) & (c >= 0) & (c < nc))
    if bad.any():
        j = int(np.argmax(bad))
        raise UnknownClassError(
            f"unknown class id {rows[j][0]!r} (dataset has {nc} classes: 0..{nc - 1})",
            path,
            int(lines[j]),
            sorted({f"id {rows[i][0]}" for i in np.flatnonzero(bad)}),
        )
    h, w = shape
    polys = arr[:, 1:] * np.array([w, h] * 4, dtype=np.float64)
    return polys, c.astype(np.int64), np.zeros(len(arr), np.int64), lines


def _scan_one(item: tuple) -> dict:
    """Scan one image and its label file; all problems become messages, never exceptions."""
    im_file, lb_file, fmt, index, nc = item
    out: dict[str, Any] = {"status": OK, "shape": (0, 0), "msgs": [], "dropped": 0, "unknown": []}
    empty = (np.zeros((0, 8), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))
    out["polys"], out["cls"], out["difficult"] = empty
    try:
        out["shape"] = image_size(im_file)
        if not lb_file or not os.path.isfile(lb_file):
            out["status"] = BACKGROUND
            return out
        polys, cls, difficult, lines = _parse_label_file(lb_file, fmt, out["shape"], index, nc)
    except InputError as e:
        out["status"] = BAD
        out["msgs"] = [f"{e} (image skipped)"]
        out["unknown"] = list(getattr(e, "classes", []))
        return out
    except OSError as e:
        out["status"] = BAD
        out["msgs"] = [f"{lb_file}: cannot read label file ({e.strerror or e}) (image skipped)"]
        return out
    if len(cls) == 0:
        out["status"] = BACKGROUND
        return out
    area = quad_area(polys)
    keep = area >= MIN_AREA  # NaN compares False
    if not keep.all():
        for j in np.flatnonzero(~keep):
            what = "NaN/inf coordinate" if np.isnan(area[j]) else f"area {area[j]:.3g} px^2"
            out["msgs"].append(f"{lb_file}:{int(lines[j])}: degenerate polygon ({what}) dropped")
        out["dropped"] = int((~keep).sum())
    out["polys"] = polys[keep].astype(np.float32)
    out["cls"], out["difficult"] = cls[keep], difficult[keep]
    return out


def _imap(fn: Callable, items: list, workers: int, desc: str) -> list:
    if workers > 1 and len(items) >= 64:
        with ThreadPool(workers) as pool:
            return list(tqdm(pool.imap(fn, items, chunksize=8), total=len(items), desc=desc, disable=None))
    return [fn(x) for x in tqdm(items, desc=desc, disable=None if len(items) >= 64 else True)]


# -------------------------------------------------------------------------------------- load_split


def load_split(
    data: str | Path | dict,
    split: str,
    cache: bool = True,
    workers: int | None = None,
    verbose: bool = True,
) -> tuple[list[Sample], ScanReport]:
    """Scan one split of a dataset into Samples, skipping bad images and reporting every problem.

    Parsed labels are cached in ``<labels dir>/<split>.cache`` (npz, no pickle) and reused while no
    image or label file changes (path, size and mtime are hashed). Prints the report's summary to
    stderr when `verbose`.
    """
    d = load_data_yaml(data)
    if split not in d:
        raise InputError(f"the dataset has no '{split}' split", d.get("yaml_file"))
    im_files = list_images(d[split])
    if not im_files:
        raise InputError(f"no images ({', '.join(IMG_FORMATS)}) found for split '{split}' in {d[split]}")
    names = d["names"]
    index = class_index(names)
    fmt = detect_format(im_files)
    lb_files = [label_path(f, fmt) if fmt else None for f in im_files]
    orphans = find_orphans(im_files, lb_files) if fmt else []

    report = ScanReport(
        split=split, label_format=fmt, found=len(im_files), orphans=len(orphans), names=list(names)
    )
    if fmt is None:
        report.notes.append("no 'labels/' or 'labelTxt/' folder beside the images: all images are background")
    elif any(lb is None for lb in lb_files):
        report.notes.append("images outside an 'images/' folder have no label path and count as background")

    cache_file = cache_mod.cache_path(im_files, LABEL_DIRS[fmt], split) if cache and fmt else None
    key = cache_mod.files_hash(im_files, lb_files, orphans, names, MIN_AREA) if cache_file else ""
    results = cache_mod.load(cache_file, key) if cache_file else None
    if results is not None:
        report.from_cache = True
    else:
        items = [(im, lb, fmt, index, len(names)) for im, lb in zip(im_files, lb_files)]
        results = _imap(_scan_one, items, workers or min(8, os.cpu_count() or 1), f"scanning {split}")
        if cache_file:
            err = cache_mod.save(cache_file, key, im_files, results)
            if err:
                report.notes.append(f"label cache not written ({err}); labels will be parsed again next time")
                cache_file = None
    report.cache_file = cache_file

    samples = []
    for im, r in zip(im_files, results):
        report.messages += r["msgs"]
        report.dropped_degenerate += r["dropped"]
        for k in r["unknown"]:
            report.unknown_classes[k] = report.unknown_classes.get(k, 0) + 1
        if r["status"] == BAD:
            report.skipped_bad += 1
            continue
        report.background += r["status"] == BACKGROUND
        samples.append(Sample(im, tuple(int(v) for v in r["shape"]), r["polys"], r["cls"], r["difficult"]))
    report.messages += [f"{o}: label file without an image (orphan, ignored)" for o in orphans]
    report.used = len(samples)
    report.objects = int(sum(len(s.cls) for s in samples))
    if verbose:
        print(report.summary(), file=sys.stderr)
    return samples, report


__all__ = [
    "Sample",
    "ScanReport",
    "load_data_yaml",
    "load_split",
    "list_images",
    "label_path",
    "detect_format",
    "find_orphans",
]
