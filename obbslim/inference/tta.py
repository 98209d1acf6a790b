"""Flip test-time augmentation: the views of one window (as is, mirrored left-right, up-down).

``mirror`` makes a view of a network input, ``unmirror`` brings the boxes found on it back exactly
(``ops.flip_rboxes``, theta included), and ``fuse_views`` makes one answer of the views. They are
fused, not just pooled: a pooled NMS keeps every false positive any one view makes, at its full score,
and lowered mAP50 by 0.02-0.03 in ``benchmarks/bench_multiscale.py``. Fusion (weighted box fusion
over NMS clusters, as ensembles of detectors do):

1. class-wise rotated NMS over all views at the model's ``iou_thr`` picks one box per object;
2. every box joins the kept box of its class it overlaps most, if by IoU > ``match_iou``;
3. a kept box's score is the mean over the views of each view's best score in its cluster (0 where a
   view missed it), so an object every view sees keeps its score and one that a single view sees
   drops to a third;
4. its box is the score-weighted mean of its cluster (theta by the doubled-angle circular mean, theta
   having period pi), normalised to the box convention.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from obbslim import ops

FLIPS = ("", "lr", "ud")  # the inputs of each window with flip=True: as is, mirrored left-right, up-down
MATCH_IOU = 0.5  # cluster membership; 0.4 (a box between two kept ones counts twice) and 0.6 do worse
_PAIR_CHUNK = 1 << 20  # kept x candidate pairs tested at once (the cheap tests), bounding memory


def mirror(img: np.ndarray, flip: str) -> np.ndarray:
    """An HWC network input as view ``flip`` shows it (a view, not a copy)."""
    return img[:, ::-1] if flip == "lr" else img[::-1] if flip == "ud" else img


def unmirror(rboxes: Any, flip: str, shape: tuple[int, int]) -> Any:
    """Boxes found on view ``flip`` of an input of ``shape`` (h, w), back on the input (exact)."""
    if flip == "lr":
        return ops.flip_rboxes(rboxes, width=shape[1])
    if flip == "ud":
        return ops.flip_rboxes(rboxes, height=shape[0])
    return rboxes


def fuse_views(
    views: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    iou_thr: float,
    max_det: int,
    match_iou: float = MATCH_IOU,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse the detections ``(rboxes [n, 5], scores [n], cls [n])`` that several views of one window
    gave, all in the window's pixels (see the module doc); best score first, at most ``max_det``."""
    rb = np.concatenate([np.asarray(v[0], np.float64).reshape(-1, 5) for v in views])
    sc = np.concatenate([np.asarray(v[1], np.float64).reshape(-1) for v in views])
    cl = np.concatenate([np.asarray(v[2], np.int64).reshape(-1) for v in views])
    view = np.concatenate([np.full(len(np.reshape(v[1], -1)), k) for k, v in enumerate(views)])
    if not len(sc):
        return rb, sc, cl
    keep = np.asarray(ops.batched_nms_rotated(rb, sc, cl, iou_thr, max_keep=max_det), np.int64)
    k = len(keep)
    owner = _owners(rb, cl, keep, match_iou)  # index into keep, -1: no cluster
    member = owner >= 0
    o, v, s = owner[member], view[member], sc[member]
    best = np.zeros((k, len(views)))
    np.maximum.at(best, (o, v), s)
    score = best.mean(1)
    w = np.bincount(o, s, k)
    box = np.stack([np.bincount(o, s * rb[member, c], k) for c in range(4)], 1)
    t2 = 2 * rb[member, 4]
    theta = np.arctan2(np.bincount(o, s * np.sin(t2), k), np.bincount(o, s * np.cos(t2), k)) / 2
    fused = np.c_[box / np.maximum(w, 1e-300)[:, None], theta]
    fused[w <= 0] = rb[keep[w <= 0]]  # zero scores: the kept box as it is
    fused = np.asarray(ops.norm_rbox(fused), np.float64)
    order = np.argsort(-score, kind="stable")[:max_det]
    return fused[order], score[order], cl[keep][order]


def _owners(rb: np.ndarray, cl: np.ndarray, keep: np.ndarray, match_iou: float) -> np.ndarray:
    """For every box, the position in ``keep`` of the kept box of its class it overlaps most (IoU >
    ``match_iou``), or -1. Candidate pairs come from a grid sweep (``_near_pairs``) and are screened
    cheaply (circumscribed circles must meet; IoU is at most the ratio of the areas; ``_inter_bound``);
    the few left (a handful per kept box) get the exact IoU, in one call."""
    radius = np.hypot(rb[:, 2], rb[:, 3]) / 2
    area = rb[:, 2] * rb[:, 3]
    found_k, found_j = [], []
    for c in np.unique(cl[keep]):
        kk = np.nonzero(cl[keep] == c)[0]  # positions in keep
        jj = np.nonzero(cl == c)[0]
        for i, j in _near_pairs(rb[:, :2], radius, keep[kk], jj):
            pk, cj = kk[i], jj[j]
            ki = keep[pk]
            d2 = (rb[ki, 0] - rb[cj, 0]) ** 2 + (rb[ki, 1] - rb[cj, 1]) ** 2
            ratio = np.minimum(area[ki], area[cj]) / np.maximum(np.maximum(area[ki], area[cj]), 1e-300)
            ok = (d2 < (radius[ki] + radius[cj]) ** 2) & (ratio > match_iou)
            pk, ki, cj = pk[ok], ki[ok], cj[ok]
            # IoU > t needs an intersection > t / (1 + t) of the two areas: bound it from above
            ok = _inter_bound(rb[ki], rb[cj]) > match_iou / (1 + match_iou) * (area[ki] + area[cj])
            found_k.append(pk[ok])
            found_j.append(cj[ok])
    owner = np.full(len(rb), -1, np.int64)
    pk, cj = (np.concatenate(f) if f else np.zeros(0, np.int64) for f in (found_k, found_j))
    if len(pk):
        a, b = (x.astype(np.float32) for x in (rb[keep[pk]], rb[cj]))  # float32: 1.5x faster, ample here
        iou = np.asarray(ops.rbox_iou(a, b, aligned=True), np.float64)
        good = iou > match_iou
        pk, cj, iou = pk[good], cj[good], iou[good]
        order = np.lexsort((iou, cj))  # by box, then IoU: the last of each box's run is its best
        last = np.r_[cj[order][1:] != cj[order][:-1], True]
        owner[cj[order][last]] = pk[order][last]
    owner[keep] = np.arange(len(keep))  # a kept box is its own cluster's (even a degenerate one)
    return owner


def _near_pairs(xy: np.ndarray, radius: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Pairs ``(i, j)`` (positions in the index arrays ``a`` and ``b``) whose centres are within the sum
    of their circumscribed radii along x and y, in chunks of about ``_PAIR_CHUNK`` at most. The ``b``
    boxes go in levels of size (a power of two of the radius, so a few large boxes do not widen the
    search of the many small ones), each sorted by (row of the level's size, x): every row an ``a`` box
    reaches is one range of a sorted array."""
    level = np.floor(np.log2(np.maximum(radius[b], 1e-9))).astype(np.int64)
    x0, y0 = xy[:, 0].min(), xy[:, 1].min()
    span = xy[:, 0].max() - x0 + 4 * radius.max() + 1  # keys of two rows never interleave
    for lv in np.unique(level):
        members = np.nonzero(level == lv)[0]
        cell = float(radius[b[members]].max()) or 1.0
        row_b = np.floor((xy[b[members], 1] - y0) / cell)
        key = row_b * span + (xy[b[members], 0] - x0)
        order = np.argsort(key, kind="stable")
        key, members = key[order], members[order]
        reach = radius[a] + cell
        r0 = np.floor((xy[a, 1] - reach - y0) / cell)
        rows = (np.floor((xy[a, 1] + reach - y0) / cell) - r0 + 1).astype(np.int64)
        q = np.repeat(np.arange(len(a)), rows)  # one query per (a box, row it reaches)
        row = np.repeat(r0, rows) + np.arange(len(q)) - np.repeat(np.cumsum(rows) - rows, rows)
        xq = xy[a[q], 0] - x0
        lo = np.searchsorted(key, row * span + xq - reach[q], "left")
        cnt = np.searchsorted(key, row * span + xq + reach[q], "right") - lo
        ends = np.cumsum(cnt)
        start = 0
        while start < len(q):  # queries in chunks whose pairs fit the budget (at least one query)
            stop = max(int(np.searchsorted(ends, ends[start] - cnt[start] + _PAIR_CHUNK, "right")), start + 1)
            c = cnt[start:stop]
            offset = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
            yield np.repeat(q[start:stop], c), members[np.repeat(lo[start:stop], c) + offset]
            start = stop


def _inter_bound(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """An upper bound of the intersection area of rboxes ``a[i]`` and ``b[i]``: in each box's frame, the
    box times the other's bounding rectangle in that frame (the smaller of the two). Exact for boxes
    at the same angle, the usual case of two views of one object."""

    def in_frame(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        c, s = np.cos(p[:, 4]), np.sin(p[:, 4])
        dx, dy = q[:, 0] - p[:, 0], q[:, 1] - p[:, 1]
        du, dv = dx * c + dy * s, -dx * s + dy * c
        cd, sd = np.abs(np.cos(q[:, 4] - p[:, 4])), np.abs(np.sin(q[:, 4] - p[:, 4]))
        eu, ev = (q[:, 2] * cd + q[:, 3] * sd) / 2, (q[:, 2] * sd + q[:, 3] * cd) / 2
        ou = np.minimum(p[:, 2] / 2, du + eu) - np.maximum(-p[:, 2] / 2, du - eu)
        ov = np.minimum(p[:, 3] / 2, dv + ev) - np.maximum(-p[:, 3] / 2, dv - ev)
        return np.clip(ou, 0, None) * np.clip(ov, 0, None)

    return np.minimum(in_frame(a, b), in_frame(b, a))
