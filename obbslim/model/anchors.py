"""Default DOTA anchors and autoanchor (YOLOv5 check_anchors / kmean_anchors on (long, short) sides).

Anchors are pixels at the training image size, (long, short) pairs, 3 per level, smallest area on P3.
The defaults suit DOTA objects in 1024x1024 tiles: small vehicles and small ships (~15-30 x 8-12 px)
on P3, large vehicles, ships, storage tanks, small planes on P4, planes, harbours, bridges, courts and
fields on P5, with long/short ratios up to ~4 (the ratio metric's thr=4 then covers up to ~16).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

DEFAULT_ANCHORS = [
    [[14, 8], [26, 12], [24, 22]],  # P3/8
    [[48, 16], [52, 36], [90, 32]],  # P4/16
    [[110, 70], [200, 60], [260, 180]],  # P5/32
]


def _as_wh(wh) -> np.ndarray:
    wh = wh.detach().cpu().numpy() if isinstance(wh, torch.Tensor) else np.asarray(wh)
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    return -np.sort(-wh, axis=1)  # (long, short)


def _ratios(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """[N, K] ratio metric: the worse side's min(r, 1/r) of each box against each anchor."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = wh[:, None] / anchors[None]
        x = np.minimum(r, 1 / r).min(2)
    return np.nan_to_num(x, nan=0.0)


def anchor_metrics(wh, anchors, thr: float = 4.0) -> tuple[float, float]:
    """(best possible recall, anchors above threshold per target) as in YOLOv5 check_anchors:
    a box is matchable by an anchor when both side ratios lie within [1/thr, thr]."""
    wh, anchors = _as_wh(wh), _as_wh(anchors)
    if len(wh) == 0:
        return 1.0, 0.0
    x = _ratios(wh, anchors)
    bpr = float((x.max(1) > 1 / thr).mean())
    aat = float((x > 1 / thr).sum(1).mean())
    return bpr, aat


def kmeans(x: np.ndarray, k: int, iters: int = 30, rng: np.random.Generator | None = None) -> np.ndarray:
    """Plain Lloyd k-means with k-means++ seeding (numpy only). Returns [k, D] centroids."""
    rng = np.random.default_rng(0) if rng is None else rng
    x = np.asarray(x, dtype=np.float64)
    c = x[rng.integers(len(x))][None]
    for _ in range(1, k):
        d2 = ((x[:, None] - c[None]) ** 2).sum(-1).min(1)
        p = d2 / d2.sum() if d2.sum() > 0 else None
        c = np.concatenate([c, x[rng.choice(len(x), p=p)][None]])
    for _ in range(iters):
        lab = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        new = np.stack([x[lab == j].mean(0) if (lab == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return c


def _fitness(wh: np.ndarray, k: np.ndarray, thr: float) -> float:
    best = _ratios(wh, k).max(1)
    return float((best * (best > 1 / thr)).mean())


def kmean_anchors(
    wh,
    n: int = 9,
    thr: float = 4.0,
    gen: int = 1000,
    seed: int = 0,
    max_boxes: int = 30000,
) -> np.ndarray:
    """Anchors [n, 2] (long, short), sorted by area: k-means on whitened sides, then YOLOv5's
    genetic evolution (mutate all anchors, keep the child when the ratio fitness improves).
    Boxes under 2 px are dropped; at most `max_boxes` (random, fixed seed) drive the search."""
    rng = np.random.default_rng(seed)
    wh = _as_wh(wh)
    wh = wh[(wh >= 2.0).all(1)]
    if len(wh) == 0:
        raise ValueError("kmean_anchors: no boxes of at least 2 px")
    if len(wh) > max_boxes:
        wh = wh[rng.choice(len(wh), max_boxes, replace=False)]
    s = wh.std(0)
    s[s == 0] = 1.0
    if len(np.unique(wh, axis=0)) >= n:
        k = kmeans(wh / s, n, rng=rng) * s
    else:  # too few distinct boxes for n clusters: spread around them
        k = wh[rng.integers(len(wh), size=n)] * rng.uniform(0.5, 1.5, size=(n, 1))
    k = -np.sort(-np.clip(k, 2.0, None), axis=1)
    f = _fitness(wh, k, thr)
    mp, sigma = 0.9, 0.1
    for _ in range(gen):
        v = np.ones_like(k)
        while (v == 1).all():
            mutate = rng.random(k.shape) < mp
            v = (mutate * rng.random() * rng.standard_normal(k.shape) * sigma + 1).clip(0.3, 3.0)
        kg = -np.sort(-(k * v).clip(2.0, None), axis=1)
        fg = _fitness(wh, kg, thr)
        if fg > f:
            f, k = fg, kg
    return k[np.argsort(k.prod(1))]


def check_anchors(
    model: torch.nn.Module,
    rboxes_long_short,
    thr: float = 4.0,
    imgsz: int = 640,
    gen: int = 1000,
    seed: int = 0,
    print_fn: Callable[[str], None] | None = print,
) -> dict:
    """Best possible recall of the model's anchors on the training boxes ((long, short) pixels at the
    training size `imgsz`); when under 0.98, evolve new anchors and install them (small -> P3) if
    their recall is higher. Returns {bpr, aat, replaced, anchors (the model's, [nl, na, 2])}."""
    det = model.model[-1] if hasattr(model, "model") else model
    old = det.anchors.detach().cpu().numpy().reshape(-1, 2)
    wh = _as_wh(rboxes_long_short)
    bpr, aat = anchor_metrics(wh, old, thr)
    msg = f"autoanchor: {aat:.2f} anchors/target, best possible recall {bpr:.4f} (imgsz {imgsz}, thr {thr:g})"
    replaced = False
    if len(wh) and bpr < 0.98:
        new = kmean_anchors(wh, n=len(old), thr=thr, gen=gen, seed=seed)
        new_bpr, new_aat = anchor_metrics(wh, new, thr)
        if new_bpr > bpr:
            with torch.no_grad():
                det.anchors.copy_(torch.as_tensor(new, dtype=det.anchors.dtype).view_as(det.anchors))
            replaced = True
            msg += f" -> new anchors: {new_aat:.2f} anchors/target, recall {new_bpr:.4f}, installed"
            bpr, aat = new_bpr, new_aat
        else:
            msg += f" -> k-means anchors not better (recall {new_bpr:.4f}), kept the original ones"
    else:
        msg += ", anchors fit"
    if print_fn is not None:
        print_fn(msg)
    return {"bpr": bpr, "aat": aat, "replaced": replaced, "anchors": det.anchors.detach().cpu().tolist()}
