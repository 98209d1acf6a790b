"""ImgSplit-style tiling of large DOTA images into fixed-size tiles with their labelTxt files.

DOTA images are up to 20000 px wide, so training and inference run on overlapping tiles. This
module does what the DOTA devkit's ``ImgSplit_multi_process.py`` does: resize by each rate, slide a
``size`` window with stride ``size - gap`` (the last window flush with the border), zero-pad images
smaller than a tile, clip objects cut by a tile border and mark them difficult=2 when they keep
``<= keep_thr`` of their area. Tiles are named ``<image>__<rate>__<left>___<top>`` (``rate`` as
``str(float(rate))``, e.g. ``1.0``); ``obbslim.data.merge.parse_tile_name`` reads the name back.

The geometry (``tile_windows``, ``clip_objects``) is pure and vectorised so inference on large
images reuses it. Differences from the devkit, on purpose: coordinates are kept as floats (the
devkit truncates to int), the tile rectangle ends at the image border ``w``/``h`` (the devkit uses
``w - 1``), objects wholly inside a tile are kept even when degenerate (zero area), and clipped
polygons with 3 or 6+ vertices are reduced to 4 vertices (below) instead of being dropped.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import struct
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from obbslim.data.imageinfo import IMG_FORMATS
from obbslim.data.labeltxt import read_labeltxt, write_labeltxt
from obbslim.errors import OUTPUT_ERRNOS, InputError
from obbslim.options import SplitConfig
from obbslim.utils.io import atomic_write_bytes
from obbslim.utils.lock import RunLock

_EPS = 1e-6  # pixels: vertices closer than this are duplicates


# ----------------------------------------------------------------------------- window math
def _starts(n: int, size: int, slide: int) -> list[int]:
    """Window starts along one axis: 0, slide, 2*slide, ... and a last one flush with the border."""
    starts, s = [], 0
    while True:
        if s + size >= n:
            starts.append(max(n - size, 0))
            return starts
        starts.append(s)
        s += slide


def tile_windows(w: int, h: int, size: int = 1024, gap: int = 200) -> list[tuple[int, int]]:
    """Top-left corners ``(left, top)`` of the tiles covering a ``w`` x ``h`` image.

    Same order as the devkit (columns outer, rows inner). An image smaller than ``size`` gets one
    window at (0, 0), to be zero-padded.
    """
    if size <= 0 or not 0 <= gap < size:
        raise InputError(f"need size > 0 and 0 <= gap < size, got size={size} gap={gap}")
    slide = size - gap
    return [(left, top) for left in _starts(int(w), size, slide) for top in _starts(int(h), size, slide)]


def tile_name(image_id: str, rate: float, left: int, top: int) -> str:
    """``<image>__<rate>__<left>___<top>``, the devkit's naming (rate written as ``str(float(rate))``)."""
    return f"{image_id}__{float(rate)}__{int(left)}___{int(top)}"


def crop_tile(img: np.ndarray, left: int, top: int, size: int) -> np.ndarray:
    """The ``size`` x ``size`` tile at (left, top), zero-padded at the bottom/right where the image ends."""
    part = img[top : top + size, left : left + size]
    if part.shape[0] == size and part.shape[1] == size:
        return np.ascontiguousarray(part)
    tile = np.zeros((size, size) + img.shape[2:], dtype=img.dtype)
    tile[: part.shape[0], : part.shape[1]] = part
    return tile


# ----------------------------------------------------------------------------- polygon clipping
def _compact(pts: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move the kept vertices of each row to the front (order preserved); returns (pts, counts)."""
    order = np.argsort(~keep, axis=1, kind="stable")
    pts = np.take_along_axis(pts, order[..., None], axis=1)
    cnt = keep.sum(1)
    return pts[:, : max(int(cnt.max(initial=0)), 1)], cnt


def _next_index(cnt: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row index of the following vertex (wrapping at each row's count) and the valid mask."""
    idx = np.arange(k)[None, :]
    valid = idx < cnt[:, None]
    nxt = np.where(idx + 1 < cnt[:, None], idx + 1, 0)
    return nxt, valid


def _clip_half_plane(pts: np.ndarray, cnt: np.ndarray, axis: int, bound: float, upper: bool):
    """One Sutherland-Hodgman pass: keep the side ``x[axis] <= bound`` (upper) or ``>= bound``."""
    nxt, valid = _next_index(cnt, pts.shape[1])
    q = np.take_along_axis(pts, nxt[..., None], axis=1)
    a, b = pts[..., axis], q[..., axis]
    in_a = (a <= bound) if upper else (a >= bound)
    in_b = (b <= bound) if upper else (b >= bound)
    d = b - a
    t = (bound - a) / np.where(d == 0, 1.0, d)
    cross = pts + t[..., None] * (q - pts)
    cross[..., axis] = bound
    out = np.stack([pts, cross], axis=2).reshape(len(pts), -1, 2)
    keep = np.stack([in_a & valid, (in_a != in_b) & valid], axis=2).reshape(len(pts), -1)
    return _compact(out, keep)


def _signed_area(pts: np.ndarray, cnt: np.ndarray) -> np.ndarray:
    """Shoelace area of padded polygons [N, K, 2]; positive for the DOTA (clockwise on screen) order."""
    nxt, valid = _next_index(cnt, pts.shape[1])
    q = np.take_along_axis(pts, nxt[..., None], axis=1)
    cross = pts[..., 0] * q[..., 1] - q[..., 0] * pts[..., 1]
    return 0.5 * np.where(valid, cross, 0.0).sum(1)


def _simplify(pts: np.ndarray, cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop repeated vertices, then vertices on a straight line between their neighbours."""
    k = pts.shape[1]
    idx = np.arange(k)[None, :]
    valid = idx < cnt[:, None]
    prev = np.where(idx == 0, np.maximum(cnt[:, None] - 1, 0), idx - 1)
    p = np.take_along_axis(pts, prev[..., None], axis=1)
    dup = np.linalg.norm(pts - p, axis=-1) < _EPS
    pts, cnt = _compact(pts, valid & ~(dup & (cnt[:, None] > 1)))
    k = pts.shape[1]
    idx = np.arange(k)[None, :]
    valid = idx < cnt[:, None]
    prev = np.where(idx == 0, np.maximum(cnt[:, None] - 1, 0), idx - 1)
    nxt, _ = _next_index(cnt, k)
    p = np.take_along_axis(pts, prev[..., None], axis=1)
    q = np.take_along_axis(pts, nxt[..., None], axis=1)
    e1, e2 = pts - p, q - pts
    cross = e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]
    scale = np.linalg.norm(e1, axis=-1) * np.linalg.norm(e2, axis=-1)
    straight = np.abs(cross) <= 1e-9 * np.maximum(scale, 1e-12)
    return _compact(pts, valid & ~(straight & (cnt[:, None] > 3)))


def _merge_shortest_edge(pts: np.ndarray, cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop one vertex from each row with more than 4: the devkit's GetPoly4FromPoly5 step.

    The two ends of the shortest edge are replaced by their midpoint (at the first end's place).
    """
    n, k = len(pts), pts.shape[1]
    nxt, valid = _next_index(cnt, k)
    q = np.take_along_axis(pts, nxt[..., None], axis=1)
    edge = np.where(valid, np.linalg.norm(q - pts, axis=-1), np.inf)
    pos = edge.argmin(1)
    rows = np.arange(n)
    mid = 0.5 * (pts[rows, pos] + q[rows, pos])
    busy = cnt > 4
    pts = pts.copy()
    pts[rows[busy], pos[busy]] = mid[busy]
    keep = valid & ~(busy[:, None] & (np.arange(k)[None, :] == nxt[rows, pos][:, None]))
    return _compact(pts, keep)


def _to_quads(pts: np.ndarray, cnt: np.ndarray) -> np.ndarray:
    """Exactly 4 vertices per row [N, 4, 2] from convex polygons with 3 to 8 vertices.

    More than 4: merge shortest edges one at a time (the devkit does this once, for 5 vertices,
    and drops polygons with 6+); 3 (a corner cut off): split the longest edge at its midpoint,
    which keeps the triangle's exact shape.
    """
    while (cnt > 4).any():
        pts, cnt = _merge_shortest_edge(pts, cnt)
    if pts.shape[1] < 4:
        pts = np.concatenate([pts, np.zeros((len(pts), 4 - pts.shape[1], 2))], axis=1)
    quads = pts[:, :4].copy()
    tri = np.flatnonzero(cnt == 3)
    if len(tri):
        t = pts[tri, :3]
        edge = np.linalg.norm(np.roll(t, -1, axis=1) - t, axis=-1)
        pos = edge.argmax(1)
        mid = 0.5 * (t[np.arange(len(t)), pos] + t[np.arange(len(t)), (pos + 1) % 3])
        # vertices 0..pos, then the midpoint, then the rest
        src = np.array([[0, 3, 1, 2], [0, 1, 3, 2], [0, 1, 2, 3]])[pos]
        ext = np.concatenate([t, mid[:, None]], axis=1)
        quads[tri] = np.take_along_axis(ext, src[..., None], axis=1)
    return quads


def _best_start(quads: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Rotate each quad's vertex order so it lies closest to the original polygon's (devkit)."""
    rolls = np.stack([np.roll(quads, -i, axis=1) for i in range(4)], axis=1)  # [N, 4, 4, 2]
    d = ((rolls - ref[:, None]) ** 2).sum((-1, -2))
    return rolls[np.arange(len(quads)), d.argmin(1)]


def clip_objects(polys: np.ndarray, window: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Clip quads [N, 8] to the rectangle ``window = (left, top, right, bottom)``.

    Returns ``(quads [N, 8], keep_frac [N])`` in the input's coordinates: ``keep_frac`` is the
    clipped area over the object's area (1.0 for objects wholly inside, 0.0 for objects outside
    or degenerate objects that are cut). A cut object becomes the 4-vertex polygon of its clipped
    part: 4 vertices as is, 5 by the devkit's GetPoly4FromPoly5 (shortest edge -> its midpoint),
    6+ by repeating that, 3 by adding the longest edge's midpoint (exact shape); the result stays
    inside the window, is oriented like the devkit (positive shoelace area) and started at the
    vertex that best matches the original order. Only rows with ``0 < keep_frac < 1`` change.
    """
    polys = np.asarray(polys, dtype=np.float64).reshape(-1, 8)
    left, top, right, bottom = (float(x) for x in window)
    out = polys.copy()
    keep = np.zeros(len(polys))
    if len(polys) == 0:
        return out, keep
    xs, ys = polys[:, 0::2], polys[:, 1::2]
    inside = (xs >= left).all(1) & (xs <= right).all(1) & (ys >= top).all(1) & (ys <= bottom).all(1)
    overlap = (xs.max(1) > left) & (xs.min(1) < right) & (ys.max(1) > top) & (ys.min(1) < bottom)
    keep[inside] = 1.0
    cut = np.flatnonzero(overlap & ~inside)
    if len(cut) == 0:
        return out, keep
    pts = polys[cut].reshape(-1, 4, 2)
    cnt = np.full(len(cut), 4)
    area0 = np.abs(_signed_area(pts, cnt))
    c, n = pts, cnt
    for axis, bound, upper in ((0, left, False), (0, right, True), (1, top, False), (1, bottom, True)):
        c, n = _clip_half_plane(c, n, axis, bound, upper)
    c, n = _simplify(c, n)
    signed = _signed_area(c, n)
    frac = np.where(area0 > 0, np.abs(signed) / np.where(area0 > 0, area0, 1.0), 0.0)
    frac = np.where(n >= 3, np.minimum(frac, 1.0), 0.0)
    # Orient like shapely.orient(sign=1): reverse rows with negative area (reverse the valid prefix).
    k = c.shape[1]
    idx = np.arange(k)[None, :]
    rev = np.where(idx < n[:, None], n[:, None] - 1 - idx, idx)
    c = np.where((signed < 0)[:, None, None], np.take_along_axis(c, rev[..., None], axis=1), c)
    quads = _to_quads(c, np.where(n >= 3, n, 4))
    good = frac > 0
    quads[good] = _best_start(quads[good], pts[good])
    out[cut[good]] = quads[good].reshape(-1, 8)
    keep[cut] = frac
    return out, keep


# ----------------------------------------------------------------------------- one image
def _png_size(path: Path) -> tuple[int, int] | None:
    """(w, h) from a PNG header without decoding; None for other formats or unreadable files."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", head[16:24])
    return int(w), int(h)


def scaled_size(w: int, h: int, rate: float) -> tuple[int, int]:
    """Size (w, h) ``resize_rate`` gives (cv2.resize rounds half to even, like np.rint)."""
    if rate == 1:
        return w, h
    return int(np.rint(w * rate)), int(np.rint(h * rate))


def resize_rate(img: np.ndarray, rate: float) -> np.ndarray:
    """The image resized by ``rate`` (bicubic, the devkit's). cv2 maps with the exact factor ``fx = rate``
    (not the rounded size's), so a point ``x`` of the image is at ``x * rate`` in the result."""
    return img if rate == 1 else cv2.resize(img, None, fx=rate, fy=rate, interpolation=cv2.INTER_CUBIC)


def _tile_done(name: str, cfg: dict) -> bool:
    if not (cfg["out_images"] / (name + cfg["ext"])).is_file():
        return False
    return cfg["images_only"] or (cfg["out_labels"] / (name + ".txt")).is_file()


def _split_one(job: tuple[str, dict]) -> dict:
    """Split one image at every rate; never raises (a failure comes back as ``error``)."""
    img_path, cfg = job
    img_path = Path(img_path)
    stat = {"image": str(img_path), "written": 0, "skipped": 0, "objects": 0, "error": None}
    try:
        stem = img_path.stem
        size0 = _png_size(img_path)
        if size0 is not None:  # resume without decoding when every tile is already there
            names = [
                tile_name(stem, r, lf, tp)
                for r in cfg["rates"]
                for lf, tp in tile_windows(*scaled_size(*size0, r), cfg["size"], cfg["gap"])
            ]
            if all(_tile_done(nm, cfg) for nm in names):
                stat["skipped"] = len(names)
                return stat
        _split_decoded(img_path, cfg, stat)
    except OSError as e:
        if e.errno in OUTPUT_ERRNOS:  # the output folder, not this image: stop the whole split
            raise
        stat["error"] = e.strerror or str(e) or type(e).__name__
    except Exception as e:  # noqa: BLE001 - one bad image must not stop the pool; it is reported
        stat["error"] = e.reason if isinstance(e, InputError) and e.path == str(img_path) else str(e)
        if not stat["error"]:
            stat["error"] = type(e).__name__
    return stat


def _split_decoded(img_path: Path, cfg: dict, stat: dict) -> None:
    if img_path.is_symlink() and not img_path.exists():
        raise InputError(f"broken symbolic link (to {os.readlink(img_path)})", img_path)
    img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError("cannot read image (corrupt or unsupported format)", img_path)
    label = None
    if not cfg["images_only"]:
        label_path = cfg["labels"] / (img_path.stem + ".txt")
        if not label_path.is_file():
            raise InputError(f"no label file {label_path}", img_path)
        label = read_labeltxt(label_path)
    size = cfg["size"]
    for rate in cfg["rates"]:
        im = resize_rate(img, rate)
        h, w = im.shape[:2]
        polys = None if label is None else np.asarray(label.polys, dtype=np.float64) * rate
        for left, top in tile_windows(w, h, size, cfg["gap"]):
            name = tile_name(img_path.stem, rate, left, top)
            if _tile_done(name, cfg):
                stat["skipped"] += 1
                continue
            if label is not None:
                window = (left, top, min(left + size, w), min(top + size, h))
                stat["objects"] += _write_tile_labels(cfg["out_labels"] / (name + ".txt"), label, polys,
                                                      window, cfg["keep_thr"])
            ok, buf = cv2.imencode(cfg["ext"], crop_tile(im, left, top, size))
            if not ok:
                raise InputError(f"cv2 cannot encode {cfg['ext']}", img_path)
            atomic_write_bytes(cfg["out_images"] / (name + cfg["ext"]), buf.tobytes())
            stat["written"] += 1


def _write_tile_labels(path: Path, label: Any, polys: np.ndarray, window, keep_thr: float) -> int:
    """Write the tile's labelTxt (objects in tile coordinates); returns the number of objects."""
    quads, keep = clip_objects(polys, window)
    sel = np.flatnonzero(keep > 0)
    quads = quads[sel] - np.tile(np.asarray(window[:2], dtype=np.float64), 4)
    difficult = np.asarray(label.difficult, dtype=np.int64)[sel].copy()
    difficult[keep[sel] <= keep_thr] = 2
    names = [label.names[i] for i in sel]
    write_labeltxt(path, quads, names, difficult, meta=getattr(label, "meta", None) or None)
    return len(sel)


# ----------------------------------------------------------------------------- the dataset
def _list_images(folder: Path) -> list[Path]:
    """Image files, broken symbolic links included (reported in ``failed``, not skipped silently)."""
    return sorted(
        p for p in folder.iterdir() if (p.is_file() or p.is_symlink()) and p.suffix.lower() in IMG_FORMATS
    )


def _worker_init() -> None:
    cv2.setNumThreads(1)  # the pool already uses every core


def split_dataset(
    src: str | Path,
    dst: str | Path,
    size: int = SplitConfig.size,
    gap: int = SplitConfig.gap,
    rates: Iterable[float] = SplitConfig.rates,
    keep_thr: float = SplitConfig.keep_thr,
    images_only: bool = SplitConfig.images_only,
    workers: int | None = SplitConfig.workers,
    ext: str = SplitConfig.ext,
    progress: bool = True,
) -> dict:
    """Split a DOTA folder ``src`` (``images/``, ``labelTxt/``) into tiles under ``dst``.

    ``images_only`` is the test-set mode (no labels read or written). Tiles already written are
    skipped, so an interrupted run resumes; an unreadable image or label file is reported in
    ``failed`` and the other images go on. Returns a summary: ``images``, ``tiles_written``,
    ``tiles_skipped``, ``objects`` (label lines written), ``failed`` (list of (path, reason)).
    """
    rates = tuple(rates)
    SplitConfig(src=src, dst=dst, size=size, gap=gap, rates=rates, keep_thr=keep_thr,
                images_only=images_only, workers=workers, ext=ext)  # checks the values  # fmt: skip
    src, dst = Path(src), Path(dst)
    images_dir, labels_dir = src / "images", src / "labelTxt"
    if not src.is_dir():
        raise InputError("source folder not found", src)
    if not images_dir.is_dir():
        raise InputError("no images/ folder (expected a DOTA folder with images/ and labelTxt/)", src)
    if not images_only and not labels_dir.is_dir():
        raise InputError("no labelTxt/ folder (for a test set without labels: --images-only)", src)
    rates = tuple(float(r) for r in rates)
    ext = ext if ext.startswith(".") else "." + ext
    if ext.lower() not in IMG_FORMATS:
        raise InputError(f"unsupported tile format {ext!r}; use one of {', '.join(IMG_FORMATS)}")
    tile_windows(size, size, size, gap)  # validates size and gap
    out_images, out_labels = dst / "images", dst / "labelTxt"
    if out_images.resolve() == images_dir.resolve():
        raise InputError("destination must differ from the source", dst)
    out_images.mkdir(parents=True, exist_ok=True)
    if not images_only:
        out_labels.mkdir(parents=True, exist_ok=True)
    files = _list_images(images_dir)
    cfg = {
        "size": int(size), "gap": int(gap), "rates": rates, "keep_thr": float(keep_thr),
        "images_only": bool(images_only), "ext": ext, "labels": labels_dir,
        "out_images": out_images, "out_labels": out_labels,
    }
    jobs = [(str(p), cfg) for p in files]
    workers = min(os.cpu_count() or 1, 8) if workers is None else max(int(workers), 1)
    workers = min(workers, max(len(jobs), 1))
    summary: dict = {"images": len(files), "tiles_written": 0, "tiles_skipped": 0, "objects": 0, "failed": []}

    _remove_partial_files(out_images, out_labels)  # a killed earlier run's
    bar = tqdm(total=len(jobs), desc="split", unit="img", disable=not progress)
    lock = RunLock(dst)  # one split writes into dst at a time; removes temp files a killed one left
    try:
        lock.acquire()
        if workers == 1:
            results: Iterable[dict] = map(_split_one, jobs)
            _collect(results, summary, bar)
        else:
            with mp.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
                _collect(pool.imap_unordered(_split_one, jobs), summary, bar)
    except BaseException:
        # Ctrl-C reaches the workers too, and the pool terminates them mid-write: their temporary files
        # would stay behind (complete tiles are kept: a rerun resumes)
        _remove_partial_files(out_images, out_labels)
        raise
    finally:
        lock.release()
        bar.close()
    summary["failed"].sort()
    return summary


def _remove_partial_files(*folders: Path) -> None:
    """Delete the hidden temporary files (``.<name>.*.tmp``) an interrupted atomic write leaves."""
    for folder in folders:
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                p.unlink(missing_ok=True)


def _collect(results: Iterable[dict], summary: dict, bar: Any) -> None:
    for r in results:
        summary["tiles_written"] += r["written"]
        summary["tiles_skipped"] += r["skipped"]
        summary["objects"] += r["objects"]
        if r["error"]:
            summary["failed"].append((r["image"], r["error"]))
        bar.update(1)
