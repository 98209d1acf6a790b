"""Merge detections made on tiles back into full-image detections.

The inverse of ``obbslim.data.split``: a tile named ``<image>__<rate>__<left>___<top>`` holds
detections in tile pixels; they go back to the full image by adding ``(left, top)`` and dividing by
``rate``, then class-wise rotated NMS removes the copies found in overlapping tiles (and at other
rates). The DOTA devkit merges with polygon NMS at IoU 0.1 (``ResultMerge_multi_process.py``);
``iou_thr`` defaults to the same value.

Output: per image ``MergedDets(rboxes [N,5], scores [N], cls [N], polys [N,8])`` sorted by score,
optionally written as DOTA Task1 files (``Task1_<class>.txt``, for the official evaluation) and as
one ``<image>.txt`` per image with ``x1 y1 ... x4 y4 class score`` lines (the per-tile input
layout, so merged files read back with ``read_tile_detections``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from obbslim.data.labeltxt import read_task1, write_task1
from obbslim.errors import InputError
from obbslim.ops import batched_nms_rotated, poly2rbox, rbox2poly
from obbslim.utils.io import atomic_write_text
from obbslim.utils.names import check_image_id, safe_join

_TILE = re.compile(
    r"^(?P<image>.+)__(?P<rate>\d+(?:\.\d*)?)__(?P<left>\d+)___(?P<top>\d+)"
    r"(?:\.(?:txt|png|jpe?g|tiff?|bmp))?$",
    re.IGNORECASE,
)


class MergedDets(NamedTuple):
    """Detections of one full image, best score first. ``cls`` keeps the input's kind (ids or names)."""

    rboxes: np.ndarray  # float64 [N, 5] (cx, cy, w, h, theta), the obbslim.ops convention
    scores: np.ndarray  # float64 [N]
    cls: np.ndarray  # int64 [N] class ids, or str [N] class names
    polys: np.ndarray  # float64 [N, 8] the input polygons (or rbox2poly of the input rboxes)


def parse_tile_name(name: str | Path) -> tuple[str, float, int, int]:
    """``<image>__<rate>__<left>___<top>`` -> ``(image_id, rate, left, top)``.

    Parsed from the right, so image ids containing ``__`` survive (e.g. a tile of an already split
    image); rates written ``1`` (older devkits) and ``1.0`` both parse; a trailing ``.txt``/image
    extension and any folder are ignored.
    """
    base = Path(str(name)).name
    m = _TILE.match(base)
    if not m:
        raise InputError(f"not a tile name '<image>__<rate>__<left>___<top>': {base!r}")
    rate = float(m["rate"])
    if rate <= 0:
        raise InputError(f"tile rate must be positive: {base!r}")
    return m["image"], rate, int(m["left"]), int(m["top"])


def _numpy(x: Any, dtype: Any = None) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)


def _to_image(boxes: np.ndarray, left: int, top: int, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Tile boxes (rboxes [N,5] or polys [N,8]) -> full-image (polys, rboxes)."""
    if boxes.shape[1] == 8:
        polys = (boxes + np.tile([left, top], 4)) / rate
        return polys, poly2rbox(polys).reshape(-1, 5)
    r = boxes.copy()
    r[:, :2] = (r[:, :2] + [left, top]) / rate
    r[:, 2:4] /= rate
    return rbox2poly(r).reshape(-1, 8), r


def merge_detections(
    tile_dets: Mapping[str, tuple[Any, Any, Any]],
    iou_thr: float = 0.1,
    classes: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    task1_dir: str | Path | None = None,
    max_det: int | None = None,
) -> dict[str, MergedDets]:
    """Merge per-tile detections into per-image detections.

    ``tile_dets`` maps a tile name to ``(boxes, scores, cls)``: boxes are rboxes [N,5] or polygons
    [N,8] in tile pixels (numpy or torch), ``cls`` class ids (int) or class names (str), the same
    kind for every tile. NMS is class-wise rotated NMS at ``iou_thr`` over all tiles and rates of
    an image. Every image with at least one tile gets an entry (possibly empty).

    ``max_det``: keep only the best ``max_det`` of each image (NMS stops as soon as they are known).
    ``out_dir``: write ``<image>.txt`` per image; ``task1_dir``: write ``Task1_<class>.txt``.
    Both need class names: given as names, or ids with ``classes`` (index = id). With ``classes``
    every class gets a Task1 file, even an empty one.
    """
    groups: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = {}
    kinds = set()
    for name, (boxes, scores, cls) in tile_dets.items():
        image_id, rate, left, top = parse_tile_name(name)
        boxes = _numpy(boxes, np.float64)
        boxes = np.zeros((0, 8)) if boxes.size == 0 else boxes.reshape(1, -1) if boxes.ndim == 1 else boxes
        if boxes.ndim != 2 or boxes.shape[1] not in (5, 8):
            raise InputError(f"tile {name}: boxes must be [N, 5] or [N, 8], not {boxes.shape}")
        scores = _numpy(scores, np.float64).reshape(-1)
        cls = _numpy(cls).reshape(-1)
        if not len(boxes) == len(scores) == len(cls):
            raise InputError(f"tile {name}: {len(boxes)} boxes, {len(scores)} scores, {len(cls)} classes")
        if len(cls):
            kinds.add("id" if np.issubdtype(cls.dtype, np.integer) else "name")
        polys, rboxes = _to_image(boxes, left, top, rate)
        groups.setdefault(image_id, []).append((polys, rboxes, scores, cls))
    if len(kinds) > 1:
        raise InputError("class ids and class names are mixed across tiles; use one kind")
    by_name = kinds == {"name"}
    merged: dict[str, MergedDets] = {}
    for image_id, parts in groups.items():
        polys = np.concatenate([p[0] for p in parts]).reshape(-1, 8)
        rboxes = np.concatenate([p[1] for p in parts]).reshape(-1, 5)
        scores = np.concatenate([p[2] for p in parts])
        cls_all = [p[3] for p in parts if len(p[3])]
        cls = np.concatenate(cls_all) if cls_all else np.zeros(0, str if by_name else np.int64)
        cls = cls.astype(str) if by_name else cls.astype(np.int64)
        if len(scores):
            _, codes = np.unique(cls, return_inverse=True)
            keep = batched_nms_rotated(rboxes, scores, codes.reshape(-1), iou_thr, max_keep=max_det)
            keep = _numpy(keep).astype(np.int64)
            keep = keep[np.argsort(-scores[keep], kind="stable")]
        else:
            keep = np.zeros(0, np.int64)
        merged[image_id] = MergedDets(rboxes[keep], scores[keep], cls[keep], polys[keep])
    if out_dir is not None or task1_dir is not None:
        _write(merged, by_name, classes, out_dir, task1_dir)
    return merged


def _class_names(cls: np.ndarray, by_name: bool, classes: Sequence[str] | None) -> list[str]:
    if by_name or len(cls) == 0:
        return [str(c) for c in cls]
    if classes is None:
        raise InputError("class ids need `classes` (the class names, index = id) to write files")
    if cls.min() < 0 or cls.max() >= len(classes):
        raise InputError(f"class id {int(cls.max())} out of range for {len(classes)} classes")
    return [classes[int(c)] for c in cls]


def _write(
    merged: Mapping[str, MergedDets],
    by_name: bool,
    classes: Sequence[str] | None,
    out_dir: str | Path | None,
    task1_dir: str | Path | None,
) -> None:
    task1: dict[str, list[tuple[str, float, np.ndarray]]] = {c: [] for c in classes or ()}
    for image_id in merged:  # ids come from tile names in a stranger's files: checked before writing
        check_image_id(image_id)
    for image_id, det in sorted(merged.items()):
        names = _class_names(det.cls, by_name, classes)
        if out_dir is not None:
            lines = [
                " ".join(repr(float(v)) for v in p) + f" {n} {float(s)!r}\n"
                for p, n, s in zip(det.polys.tolist(), names, det.scores.tolist())
            ]
            atomic_write_text(safe_join(out_dir, f"{image_id}.txt"), "".join(lines))
        for p, n, s in zip(det.polys, names, det.scores.tolist()):
            task1.setdefault(n, []).append((image_id, s, p))
    if task1_dir is not None:
        Path(task1_dir).mkdir(parents=True, exist_ok=True)
        write_task1(task1_dir, task1)


def read_tile_detections(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Read tile detections from a folder, in either layout the DOTA tools use.

    - ``Task1_<class>.txt`` files whose image ids are tile names (``tile score x1 y1 ... x4 y4``,
      what the devkit's ResultMerge reads), or
    - one ``<tile>.txt`` per tile with ``x1 y1 ... x4 y4 class score`` lines.

    Returns ``{tile: (polys float64 [N,8], scores float64 [N], class names str [N])}``, ready for
    ``merge_detections`` (which checks the tile names). Reads merged per-image files back too.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError("detection folder not found", path)
    out: dict[str, list[list[Any]]] = {}
    task1 = sorted(path.glob("Task1_*.txt"))
    if task1:
        for f in task1:
            cname = f.stem[len("Task1_") :]
            ids, scores, polys = read_task1(f)
            for i, s, p in zip(ids, scores, polys):
                rows = out.setdefault(i, [[], [], []])
                rows[0].append(p)
                rows[1].append(s)
                rows[2].append(cname)
    else:
        for f in sorted(path.glob("*.txt")):
            out[f.stem] = _read_tile_file(f)
    return {
        k: (np.asarray(v[0], np.float64).reshape(-1, 8), np.asarray(v[1], np.float64), np.asarray(v[2], str))
        for k, v in out.items()
    }


def _read_tile_file(f: Path) -> list[list[Any]]:
    polys, scores, names = [], [], []
    for num, raw in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) != 10:
            raise InputError(f"expected 'x1 y1 ... x4 y4 class score' (10 fields), got {len(fields)}", f, num)
        try:
            polys.append([float(v) for v in fields[:8]])
            scores.append(float(fields[9]))
        except ValueError:
            raise InputError(f"non-numeric field in {raw.strip()!r}", f, num) from None
        names.append(fields[8])
    return [polys, scores, names]
