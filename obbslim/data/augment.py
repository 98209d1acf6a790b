"""Polygon augmentations for oriented objects (YOLOv5 style, acting on quads, not on boxes).

Images are numpy HWC uint8 BGR; polygons are float32 [N, 8] pixels (``x1 y1 ... x4 y4``). Geometry acts
on polygon corners with the same matrix as the image, so a rotation by any angle stays exact; polygons
become rboxes only at the end (``to_rboxes``). All randomness comes from a passed
``np.random.Generator`` so the pipeline is reproducible for a seed.

Coordinates are continuous with pixel edges at integers (the convention of ``cv2.resize``); the warps
and flips below use it too, so a polygon drawn on the image stays on the image after each transform.
"""

from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np

from obbslim.ops import poly2rbox, poly_area

__all__ = [
    "letterbox",
    "letterbox_polys",
    "mosaic4",
    "affine_matrix",
    "warp_affine",
    "random_affine",
    "flip_lr",
    "flip_ud",
    "augment_hsv",
    "mixup",
    "filter_polys",
    "to_rboxes",
]

# loader for mosaic4: index -> (img resized so the long side == size, polys in its pixels, cls)
SampleLoader = Callable[[int], "tuple[np.ndarray, np.ndarray, np.ndarray]"]


def _polys(polys: np.ndarray | None) -> np.ndarray:
    if polys is None:
        return np.zeros((0, 8), np.float32)
    return np.asarray(polys, np.float32).reshape(-1, 8)


def letterbox(
    img: np.ndarray,
    new_shape: int | tuple[int, int] = 640,
    color: int | tuple[int, int, int] = 114,
    auto: bool = False,
    stride: int = 32,
    scaleup: bool = True,
) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
    """Resize keeping the aspect ratio, then pad to ``new_shape`` (h, w).

    Returns ``(img, ratio, pad)`` where ``ratio = (rw, rh)`` is the exact scale of each axis and
    ``pad = (left, top)`` is the integer offset of the image, so ``letterbox_polys`` is exact.
    ``auto`` pads only to a multiple of ``stride`` (minimum rectangle); ``scaleup=False`` never enlarges.
    """
    h0, w0 = img.shape[:2]
    if isinstance(new_shape, (int, np.integer)):
        new_shape = (new_shape, new_shape)
    new_shape = (int(new_shape[0]), int(new_shape[1]))
    r = min(new_shape[0] / h0, new_shape[1] / w0)
    if not scaleup:
        r = min(r, 1.0)
    w1, h1 = max(1, int(round(w0 * r))), max(1, int(round(h0 * r)))
    dw, dh = new_shape[1] - w1, new_shape[0] - h1
    if auto:
        dw, dh = dw % stride, dh % stride
    if (w1, h1) != (w0, h0):
        img = cv2.resize(img, (w1, h1), interpolation=cv2.INTER_LINEAR)
    left, top = dw // 2, dh // 2
    if isinstance(color, int):
        color = (color, color, color)
    img = cv2.copyMakeBorder(img, top, dh - top, left, dw - left, cv2.BORDER_CONSTANT, value=color)
    return img, (w1 / w0, h1 / h0), (left, top)


def letterbox_polys(polys: np.ndarray, ratio: tuple[float, float], pad: tuple[float, float]) -> np.ndarray:
    """The polygon transform matching ``letterbox``: scale each axis, then shift by the padding."""
    p = _polys(polys).copy()
    p[:, 0::2] = p[:, 0::2] * ratio[0] + pad[0]
    p[:, 1::2] = p[:, 1::2] * ratio[1] + pad[1]
    return p


def mosaic4(
    samples_loader: SampleLoader, indices: list[int], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four images around a random centre on a ``2*size`` canvas (YOLOv5 load_mosaic).

    Each image keeps a corner at the centre, so it is cut only by the canvas edge, never by its
    neighbours. Returns ``(img [2s, 2s, 3], polys [N, 8], cls [N])``; objects whose centre falls
    off the canvas are dropped. Follow with ``random_affine(..., border=(-size // 2, -size // 2))``.
    """
    s = size
    yc, xc = (int(rng.uniform(s // 2, 2 * s - s // 2)) for _ in range(2))
    canvas = None
    all_polys, all_cls = [], []
    for k, index in enumerate(indices[:4]):
        img, polys, cls = samples_loader(int(index))
        h, w = img.shape[:2]
        if canvas is None:
            canvas = np.full((2 * s, 2 * s, img.shape[2]), 114, dtype=np.uint8)
        if k == 0:  # top left
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif k == 1:  # top right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif k == 2:  # bottom left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:  # bottom right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
        p = _polys(polys).copy()
        p[:, 0::2] += x1a - x1b
        p[:, 1::2] += y1a - y1b
        all_polys.append(p)
        all_cls.append(np.asarray(cls, np.int64).reshape(-1))
    polys4 = np.concatenate(all_polys, 0)
    cls4 = np.concatenate(all_cls, 0)
    keep = filter_polys(polys4, (2 * s, 2 * s), min_size=0.0, ar_thr=math.inf)
    return canvas, polys4[keep], cls4[keep]


def affine_matrix(
    img_shape: tuple[int, int],
    angle: float = 0.0,
    scale: float = 1.0,
    shear: tuple[float, float] = (0.0, 0.0),
    translate: tuple[float, float] = (0.5, 0.5),
    border: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, tuple[int, int]]:
    """The 3x3 matrix of YOLOv5 random_perspective (no perspective term) and the output (h, w).

    Centre the image, rotate by ``angle`` degrees (counter-clockwise on screen, as cv2) and scale,
    shear by ``shear`` degrees (x, y), then place the centre at ``translate`` * output size.
    ``border`` (negative) crops the output: the mosaic's 2s canvas with border -s/2 gives s.
    """
    h, w = img_shape[:2]
    out_h, out_w = h + 2 * border[0], w + 2 * border[1]
    C = np.eye(3)
    C[0, 2], C[1, 2] = -w / 2, -h / 2
    R = np.eye(3)
    R[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=float(angle), scale=float(scale))
    S = np.eye(3)
    S[0, 1] = math.tan(math.radians(shear[0]))
    S[1, 0] = math.tan(math.radians(shear[1]))
    T = np.eye(3)
    T[0, 2], T[1, 2] = translate[0] * out_w, translate[1] * out_h
    return T @ S @ R @ C, (out_h, out_w)


def warp_affine(
    img: np.ndarray, polys: np.ndarray, M: np.ndarray, out_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the 3x3 affine ``M`` to the image (output (h, w) = ``out_size``) and to polygon corners."""
    out_h, out_w = out_size
    if out_size != img.shape[:2] or not np.allclose(M, np.eye(3)):
        # cv2 samples at pixel centres; conjugate by the half-pixel shift so corner coordinates map by M
        H = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
        Mc = np.linalg.inv(H) @ M @ H
        img = cv2.warpAffine(
            img, Mc[:2], dsize=(out_w, out_h), flags=cv2.INTER_LINEAR, borderValue=(114, 114, 114)
        )
    p = _polys(polys)
    n = len(p)
    xy = np.ones((n * 4, 3), np.float64)
    xy[:, :2] = p.reshape(-1, 2)
    xy = xy @ M.T
    return img, xy[:, :2].reshape(n, 8).astype(np.float32)


def random_affine(
    img: np.ndarray,
    polys: np.ndarray,
    rng: np.random.Generator,
    degrees: float = 180.0,
    translate: float = 0.1,
    scale: float = 0.5,
    shear: float = 0.0,
    border: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, np.ndarray, float]:
    """Random rotation (any angle in +-degrees), scale (1 +- scale), shear and translation.

    Returns ``(img, polys, s)`` with ``s`` the scale drawn (for ``filter_polys(..., scale=s)``).
    Objects are not filtered here: call ``filter_polys`` on the result.
    """
    a = rng.uniform(-degrees, degrees)
    s = rng.uniform(1 - scale, 1 + scale)
    sh = (rng.uniform(-shear, shear), rng.uniform(-shear, shear))
    t = (rng.uniform(0.5 - translate, 0.5 + translate), rng.uniform(0.5 - translate, 0.5 + translate))
    M, out = affine_matrix(img.shape[:2], a, s, sh, t, border)
    img, polys = warp_affine(img, polys, M, out)
    return img, polys, float(s)


def flip_lr(img: np.ndarray, polys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right: x -> w - x (an rbox's theta becomes -theta)."""
    p = _polys(polys).copy()
    p[:, 0::2] = img.shape[1] - p[:, 0::2]
    return np.ascontiguousarray(img[:, ::-1]), p


def flip_ud(img: np.ndarray, polys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror up-down: y -> h - y (an rbox's theta becomes -theta)."""
    p = _polys(polys).copy()
    p[:, 1::2] = img.shape[0] - p[:, 1::2]
    return np.ascontiguousarray(img[::-1]), p


def flip_diag(img: np.ndarray, polys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror about the main diagonal: (x, y) -> (y, x), a square image only.

    With the two flips it gives all eight quarter turns and mirrors of the image without resampling it
    (rotation by ``degrees`` interpolates, which blurs the edges the box sides are read from)."""
    h, w = img.shape[:2]
    if h != w:
        raise ValueError(f"flip_diag needs a square image, got {w} x {h}")
    p = _polys(polys)[:, [1, 0, 3, 2, 5, 4, 7, 6]]  # fancy indexing: a copy
    return np.ascontiguousarray(img.transpose(1, 0, *range(2, img.ndim))), p


def augment_hsv(
    img: np.ndarray, rng: np.random.Generator, hgain: float = 0.5, sgain: float = 0.5, vgain: float = 0.5
) -> np.ndarray:
    """Random hue, saturation and value gains (YOLOv5 augment_hsv); returns a new BGR image."""
    if not (hgain or sgain or vgain):
        return img
    r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def mixup(
    img: np.ndarray,
    polys: np.ndarray,
    cls: np.ndarray,
    img2: np.ndarray,
    polys2: np.ndarray,
    cls2: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blend two same-size images (ratio ~ Beta(32, 32)) and keep both label sets (YOLOv5 mixup)."""
    r = rng.beta(32.0, 32.0)
    out = (img.astype(np.float32) * r + img2.astype(np.float32) * (1 - r)).round().astype(np.uint8)
    return out, np.concatenate([_polys(polys), _polys(polys2)], 0), np.concatenate([cls, cls2], 0)


def filter_polys(
    polys: np.ndarray,
    shape: tuple[int, int],
    min_size: float = 2.0,
    ar_thr: float = 100.0,
    area_thr: float = 0.1,
    area_before: np.ndarray | None = None,
    scale: float = 1.0,
) -> np.ndarray:
    """Boolean mask of the objects to keep after a transform (YOLOv5 box_candidates for rboxes).

    Drops an object whose centre (mean of the corners) leaves the image ``shape`` (h, w), whose
    short side (of its minimum-area rectangle) is below ``min_size`` px, whose long/short ratio is above
    ``ar_thr``, or, when ``area_before`` (areas before an affine of scale ``scale``) is given, whose area
    fell below ``area_thr * area_before * scale**2`` (a quad squashed by shear). Polygons are not
    clipped: a kept object may extend past the border (a convex object whose centre is inside keeps
    at least a quarter of its area inside, so no visible-area test is needed).
    """
    p = _polys(polys)
    if len(p) == 0:
        return np.zeros(0, bool)
    h, w = shape[:2]
    cx, cy = p[:, 0::2].mean(1), p[:, 1::2].mean(1)
    keep = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
    r = poly2rbox(p.astype(np.float64))
    long, short = r[:, 2], r[:, 3]
    keep &= short >= min_size
    keep &= long <= ar_thr * np.maximum(short, 1e-9)
    if area_before is not None:
        keep &= poly_area(p) >= area_thr * np.asarray(area_before, np.float64) * scale**2
    return keep


def to_rboxes(polys: np.ndarray) -> np.ndarray:
    """Polygons -> rboxes ``(cx, cy, w, h, theta)`` float32 [N, 5] in the project convention."""
    p = _polys(polys)
    if len(p) == 0:
        return np.zeros((0, 5), np.float32)
    return poly2rbox(p.astype(np.float64)).astype(np.float32)
