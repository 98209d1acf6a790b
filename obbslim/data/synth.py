"""A synthetic oriented-object dataset in DOTA format, for tests and smoke training without DOTA.

Five DOTA classes with distinct shapes and colours (cars in parking rows, trucks, plane crosses,
pointed ship hulls, round tanks) at any angle on a textured background. Each label is the
minimum-area rectangle of the drawn shape (the square around a tank), so a detector can reach a
high mAP. Every image has its own seeded generator: the output depends only on (seed, index).
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from obbslim.data.labeltxt import write_labeltxt
from obbslim.errors import ObbslimError
from obbslim.ops import norm_rbox, poly_area, rbox2poly
from obbslim.options import SynthConfig
from obbslim.utils.io import atomic_imwrite, atomic_write_text

CLASSES = ("small-vehicle", "large-vehicle", "plane", "ship", "storage-tank")
CLASS_WEIGHTS = (0.3, 0.2, 0.15, 0.2, 0.15)
SHIFT = 4  # cv2 sub-pixel bits: coordinates are drawn at 1/16 px
_ONE = 1 << SHIFT


@dataclass
class SynthObject:
    """One drawn object: polygon parts and circles (pixels) with their BGR colours, plus its label."""

    name: str
    polys: list[np.ndarray] = field(default_factory=list)  # each float64 [K, 2]
    poly_colors: list[tuple[float, float, float]] = field(default_factory=list)
    circles: list[tuple[float, float, float]] = field(default_factory=list)  # (cx, cy, r)
    circle_colors: list[tuple[float, float, float]] = field(default_factory=list)
    label: np.ndarray = field(default_factory=lambda: np.zeros(8))  # float64 [8]
    axis: tuple[float, float] = (1.0, 0.0)  # unit vector of the long side, for shading


def _pts(p: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(p) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _local(parts_uv: list[np.ndarray], cx: float, cy: float, theta: float) -> list[np.ndarray]:
    """Map local (u along the long side, v across) polygons to image coordinates."""
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, s], [-s, c]])  # row-vector form of R(theta)
    return [np.asarray(p, np.float64) @ rot + (cx, cy) for p in parts_uv]


def _rect(u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]], np.float64)


def _min_rect(points: np.ndarray) -> np.ndarray:
    """Minimum-area rectangle of points as a quad [8], corners clockwise on screen (rbox2poly order)."""
    (cx, cy), (w, h), a = cv2.minAreaRect(points.astype(np.float32))
    return _rbox_quad(cx, cy, w, h, math.radians(a))


def _rbox_quad(cx: float, cy: float, w: float, h: float, t: float) -> np.ndarray:
    r = norm_rbox(np.array([[cx, cy, w, h, t]], np.float64))
    return rbox2poly(r)[0]


def _color(rng: np.random.Generator, base, jitter: float) -> tuple[float, float, float]:
    return tuple(float(np.clip(b + rng.uniform(-jitter, jitter), 0, 255)) for b in base)


def make_object(name: str, rng: np.random.Generator, cx: float, cy: float, theta: float, scale=None):
    """Build one object of class `name` centred at (cx, cy), long side at angle `theta` (radians)."""
    o = SynthObject(name=name, axis=(math.cos(theta), math.sin(theta)))
    if name == "small-vehicle":
        L = scale or rng.uniform(8, 20)
        W = L * rng.uniform(0.42, 0.55)
        palette = [(40, 40, 200), (200, 200, 205), (30, 30, 30), (180, 90, 30), (60, 160, 200)]
        uv = [_rect(-L / 2, L / 2, -W / 2, W / 2), _rect(0.05 * L, 0.25 * L, -0.38 * W, 0.38 * W)]
        cols = [_color(rng, palette[rng.integers(len(palette))], 15), (25, 25, 25)]
    elif name == "large-vehicle":
        L = scale or rng.uniform(22, 55)
        W = L * rng.uniform(0.24, 0.32)
        uv = [_rect(-L / 2, L / 2, -W / 2, W / 2), _rect(L / 2 - 0.9 * W, L / 2, -W / 2, W / 2)]
        cols = [_color(rng, (40, 170, 220), 20), _color(rng, (235, 235, 235), 10)]
    elif name == "plane":
        L = scale or rng.uniform(30, 150)
        S = L * rng.uniform(0.85, 1.05)  # wing span
        f = L * 0.11  # fuselage width
        t = 0.2 * S  # tail span
        body = np.array(
            [[-0.5 * L, -f / 2], [0.4 * L, -f / 2], [0.5 * L, 0], [0.4 * L, f / 2], [-0.5 * L, f / 2]]
        )
        wing_r = np.array([[0.15 * L, f / 2], [-0.1 * L, S / 2], [-0.2 * L, S / 2], [-0.05 * L, f / 2]])
        tail_r = np.array([[-0.36 * L, f / 2], [-0.45 * L, t], [-0.5 * L, t], [-0.5 * L, f / 2]])
        flip = np.array([1.0, -1.0])
        uv = [body, wing_r, wing_r * flip, tail_r, tail_r * flip]
        c = _color(rng, (225, 225, 228), 20)
        cols = [c] * 5
    elif name == "ship":
        L = scale or rng.uniform(20, 150)
        W = L * rng.uniform(0.18, 0.26)
        hull = np.array(
            [[-L / 2, -W / 2], [0.25 * L, -W / 2], [L / 2, 0], [0.25 * L, W / 2], [-L / 2, W / 2]]
        )
        deck = _rect(-0.42 * L, -0.1 * L, -0.3 * W, 0.3 * W)
        uv = [hull, deck]
        cols = [_color(rng, (110, 70, 50), 20), _color(rng, (200, 200, 190), 20)]
    elif name == "storage-tank":
        D = scale or rng.uniform(10, 80)
        o.circles = [(cx, cy, D / 2), (cx, cy, 0.38 * D)]
        o.circle_colors = [_color(rng, (215, 215, 210), 15), _color(rng, (185, 185, 180), 15)]
        o.label = _rbox_quad(cx, cy, D, D, theta)
        return o
    else:
        raise ValueError(f"unknown synthetic class {name!r}; expected one of {CLASSES}")
    o.polys = _local(uv, cx, cy, theta)
    o.poly_colors = cols
    o.label = _min_rect(np.concatenate(o.polys))
    return o


def draw_object(img: np.ndarray, o: SynthObject, color_scale: float = 1.0, offset=(0.0, 0.0)) -> None:
    """Draw `o` in place (shifted by -offset); on a 2-D uint8 `img` it draws the object's mask (255)."""
    ox, oy = offset
    for p, c in zip(o.polys, o.poly_colors):
        col = 255 if img.ndim == 2 else tuple(v * color_scale for v in c)
        cv2.fillPoly(img, [_pts(p - (ox, oy))], col, lineType=cv2.LINE_8, shift=SHIFT)
    for (x, y, r), c in zip(o.circles, o.circle_colors):
        col = 255 if img.ndim == 2 else tuple(v * color_scale for v in c)
        centre = (round((x - ox) * _ONE), round((y - oy) * _ONE))
        cv2.circle(img, centre, round(r * _ONE), col, -1, cv2.LINE_8, SHIFT)


def _shade(img: np.ndarray, o: SynthObject, gain: float) -> None:
    """Brightness ramp along the object's long side (sunlit end to shaded end), inside its pixels only."""
    quad = o.label.reshape(4, 2)
    x0, y0, x1, y1 = _roi(quad, *img.shape[:2])
    if x1 <= x0 or y1 <= y0:
        return
    m = np.zeros((y1 - y0, x1 - x0), np.uint8)
    draw_object(m, o, offset=(x0, y0))
    cx, cy = quad.mean(0)
    length = max(float(np.linalg.norm(quad[1] - quad[0])), float(np.linalg.norm(quad[2] - quad[1])), 1.0)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    t = ((xx - cx) * o.axis[0] + (yy - cy) * o.axis[1]) / length  # about -0.5 .. 0.5
    factor = 1.0 + gain * t
    roi = img[y0:y1, x0:x1]
    sel = m > 0
    roi[sel] *= factor[sel][:, None]


def object_mask(o: SynthObject, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of the pixels drawn for `o` alone."""
    m = np.zeros(shape, np.uint8)
    draw_object(m, o)
    return m > 0


def poly_mask(poly: np.ndarray, shape: tuple[int, int], offset=(0, 0)) -> np.ndarray:
    """Boolean mask of a quad [8] rasterised the way objects are (shifted by -offset, in whole pixels)."""
    m = np.zeros(shape, np.uint8)
    quad = np.asarray(poly, np.float64).reshape(4, 2) - np.asarray(offset, np.float64)
    cv2.fillPoly(m, [_pts(quad)], 255, lineType=cv2.LINE_8, shift=SHIFT)
    return m > 0


def _roi(quad: np.ndarray, h: int, w: int) -> tuple[int, int, int, int]:
    """Whole-pixel box (x0, y0, x1, y1) around a quad [4, 2], clipped to the image."""
    x0, y0 = np.clip(np.floor(quad.min(0)).astype(int) - 1, 0, [w, h])
    x1, y1 = np.clip(np.ceil(quad.max(0)).astype(int) + 2, 0, [w, h])
    return int(x0), int(y0), int(x1), int(y1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Ground-like texture: a base tone, smooth blobs, fine texture and a few roads."""
    base = rng.uniform(70, 140) + rng.uniform(-20, 20, 3)
    n = size // 48 + 3
    lum = rng.normal(0, 20, (n, n, 1)) + rng.normal(0, 6, (n, n, 3))  # mostly brightness, a little hue
    blobs = cv2.resize(lum.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    m = size // 6
    fine = rng.normal(0, 6, (m, m, 1)) + rng.normal(0, 2, (m, m, 3))
    fine = cv2.resize(fine.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    img = base.astype(np.float32) + blobs + fine
    for _ in range(int(rng.integers(0, 4))):
        p0 = rng.uniform(-0.2, 1.2, 2) * size
        p1 = rng.uniform(-0.2, 1.2, 2) * size
        tone = float(rng.uniform(80, 130))
        thick = int(rng.integers(6, 22))
        pts = [tuple(int(v) for v in p0), tuple(int(v) for v in p1)]
        cv2.line(img, pts[0], pts[1], (tone, tone, tone + 5), thick, cv2.LINE_AA)
        if thick > 12:
            cv2.line(img, pts[0], pts[1], (tone + 60,) * 3, 1, cv2.LINE_AA)
    return img


def _place(
    o: SynthObject, owner: np.ndarray, areas: list[int], max_overlap: float = 0.1, min_visible: float = 0.4
) -> bool:
    """Accept `o` if its label box is mostly inside the image and overlaps no placed object by more
    than `max_overlap` of the smaller of the two (pixel counts of the rasterised boxes).

    `owner` maps each pixel to 1 + the index of the object whose box covers it (0: free); `areas`
    holds the placed boxes' pixel counts. Both are updated when `o` is accepted.
    """
    quad = o.label.reshape(4, 2)
    area = float(poly_area(o.label.reshape(1, 8))[0])
    x0, y0, x1, y1 = _roi(quad, *owner.shape)
    if area < 1 or x1 <= x0 or y1 <= y0:
        return False
    m = poly_mask(o.label, (y1 - y0, x1 - x0), offset=(x0, y0))
    inside = int(m.sum())
    if inside < min_visible * area:
        return False
    roi = owner[y0:y1, x0:x1]
    hits = np.bincount(roi[m], minlength=len(areas) + 1)[1:]  # overlap with each placed object
    if (hits > max_overlap * np.minimum(np.asarray(areas, np.int64), inside)).any():
        return False
    roi[m & (roi == 0)] = len(areas) + 1
    areas.append(inside)
    return True


def _layout(rng: np.random.Generator, size: int, classes: tuple[str, ...] = CLASSES) -> list[SynthObject]:
    """Random objects of ``classes`` plus, often, a parking row of small vehicles (when that class is one
    of them); rejects crowded placements."""
    owner = np.zeros((size, size), np.int32)
    areas: list[int] = []
    objects: list[SynthObject] = []
    area_scale = (size / 512) ** 2
    weights = np.array([CLASS_WEIGHTS[CLASSES.index(c)] for c in classes])
    if rng.random() < 0.6 and "small-vehicle" in classes:  # parking rows: cars side by side, all at one angle
        L = rng.uniform(9, 18)
        phi = rng.uniform(-math.pi / 2, math.pi / 2)  # row direction
        step = L * rng.uniform(0.6, 0.75)
        rows = int(rng.integers(1, 4))
        k = int(rng.integers(4, 14))
        x0, y0 = rng.uniform(0.1, 0.9, 2) * size
        d = np.array([math.cos(phi), math.sin(phi)])
        n = np.array([-d[1], d[0]])
        for r in range(rows):
            for i in range(k):
                c = np.array([x0, y0]) + d * step * i + n * L * 1.25 * r
                o = make_object(
                    "small-vehicle", rng, c[0], c[1], phi + math.pi / 2, scale=L * rng.uniform(0.93, 1.07)
                )
                if _place(o, owner, areas, max_overlap=0.05):
                    objects.append(o)
    n_obj = len(objects) + int(rng.integers(4, 26) * area_scale) + 1
    for _ in range(n_obj * 4):
        if len(objects) >= n_obj:
            break
        name = classes[int(rng.choice(len(classes), p=weights / weights.sum()))]
        cx, cy = rng.uniform(-0.05, 1.05, 2) * size
        o = make_object(name, rng, cx, cy, rng.uniform(-math.pi, math.pi))
        if _place(o, owner, areas):
            objects.append(o)
    return objects


def render_image(
    seed: int, index: int, size: int = 512, classes: tuple[str, ...] = CLASSES
) -> tuple[np.ndarray, list[SynthObject]]:
    """The image (uint8 BGR, size x size) and objects of synthetic sample `index` for `seed`."""
    rng = np.random.default_rng([seed, index])
    img = _background(rng, size)
    objects = _layout(rng, size, classes)
    for o in objects:
        draw_object(img, o, color_scale=float(rng.uniform(0.9, 1.08)))
        _shade(img, o, float(rng.uniform(-0.3, 0.3)))
    img += rng.normal(0, 2.0, (size, size, 1)).astype(np.float32)  # sensor noise, same in all channels
    return np.clip(img, 0, 255).astype(np.uint8), objects


def make_synthetic(
    dst: str | Path,
    n_images: int = SynthConfig.n_images,
    size: int = SynthConfig.size,
    seed: int = SynthConfig.seed,
    val_frac: float = SynthConfig.val_frac,
    overwrite: bool = SynthConfig.overwrite,
    workers: int | None = SynthConfig.workers,
    classes: tuple[str, ...] | list[str] | None = SynthConfig.classes,
) -> Path:
    """Write a DOTA-format synthetic dataset under `dst`; return the path of its data.yaml.

    Layout: ``images/{train,val}/synth_NNNNN.png``, ``labelTxt/{train,val}/synth_NNNNN.txt``
    (DOTA labelTxt, difficult 0) and ``data.yaml`` (path ``.``, train, val, names). The files
    depend only on (seed, n_images, size, val_frac, classes), not on `workers` (threads; default: CPU
    count). ``classes``: a subset of ``CLASSES`` to draw (default: all five), in data.yaml in that order.
    """
    SynthConfig(dst=dst, n_images=n_images, size=size, seed=seed, val_frac=val_frac, workers=workers)
    classes = tuple(classes or CLASSES)
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or len(set(classes)) != len(classes):
        raise ObbslimError(
            f"synthetic classes must be distinct names from {', '.join(CLASSES)}; got {unknown or classes}"
        )
    dst = Path(dst)
    stale = [dst / "images", dst / "labelTxt", dst / "data.yaml"]
    if any(p.exists() for p in stale):
        if not overwrite:
            raise ObbslimError(
                f"{dst} already holds a dataset (images/, labelTxt/ or data.yaml): --overwrite "
                "(overwrite=True) replaces it"
            )
        for p in stale:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    n_val = int(round(n_images * val_frac))
    val = set(np.random.default_rng(seed).permutation(n_images)[:n_val].tolist())
    for split in ("train", "val"):
        (dst / "images" / split).mkdir(parents=True, exist_ok=True)
        (dst / "labelTxt" / split).mkdir(parents=True, exist_ok=True)

    def write_one(i: int) -> None:
        img, objects = render_image(seed, i, size, classes)
        split = "val" if i in val else "train"
        stem = f"synth_{i:05d}"
        atomic_imwrite(dst / "images" / split / f"{stem}.png", img)
        polys = np.round(np.array([o.label for o in objects], np.float64).reshape(-1, 8), 2)
        write_labeltxt(dst / "labelTxt" / split / f"{stem}.txt", polys, [o.name for o in objects])

    # Each image has its own generator, so threads (cv2 drawing and PNG encoding release the GIL)
    # do not change the output.
    workers = max(1, min(workers if workers else (os.cpu_count() or 1), 8, n_images))
    bar = dict(total=n_images, desc="synth", disable=None if n_images >= 50 else True)
    if workers == 1:
        for i in tqdm(range(n_images), **bar):
            write_one(i)
    else:
        with ThreadPool(workers) as pool:
            for _ in tqdm(pool.imap_unordered(write_one, range(n_images)), **bar):
                pass

    yaml_file = dst / "data.yaml"
    names = "\n".join(f"  {k}: {n}" for k, n in enumerate(classes))
    atomic_write_text(
        yaml_file,
        f"# obbslim synthetic dataset: {n_images} images, {size} px, seed {seed}\n"
        f"path: .\ntrain: images/train\nval: images/val\nnames:\n{names}\n",
    )
    return yaml_file
