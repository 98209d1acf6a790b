"""Angle precision: the mean absolute angle error of matched detections, the figure beside AP75.

AP75 mixes position, size and angle; this isolates the angle. A detection is matched as the DOTA
metric matches it (same image and class, IoU >= ``iou_thr``, each ground truth claimed by its
highest-scoring detection). Ground truths whose long side is under ``min_aspect`` times the short side
are left out: the angle of a square or a round storage tank is not defined. Angles compare modulo 180
degrees, so the error lies in [0, 90]. ``near_square=True`` scores only those left out, modulo 90
degrees (a square's box repeats every quarter turn, so the error lies in [0, 45] and chance is 22.5):
the figure for planes, whose box is near square, that AP75 still counts.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from obbslim.eval.dota import best_candidates
from obbslim.ops import poly2rbox


def angle_error(
    gts: Sequence[tuple],
    dets: Sequence[tuple],
    iou_thr: float = 0.5,
    min_aspect: float = 1.5,
    near_square: bool = False,
) -> dict:
    """``{"mean", "median", "n"}`` in degrees over matched, elongated ground truths (NaN when none);
    with ``near_square`` over the others instead, modulo 90 degrees.

    ``gts[i] = (polys [n, 8], cls [n], ...)`` and ``dets[i] = (polys [m, 8], scores [m], cls [m])`` per image,
    as ``evaluate_images`` takes them.
    """
    errs = []
    for g, d in zip(gts, dets):
        gp, gc = np.asarray(g[0], np.float64).reshape(-1, 8), np.asarray(g[1], np.int64).reshape(-1)
        dp, ds = np.asarray(d[0], np.float64).reshape(-1, 8), np.asarray(d[1], np.float64).reshape(-1)
        dc = np.asarray(d[2], np.int64).reshape(-1)
        if not len(gp) or not len(dp):
            continue
        order = np.argsort(-ds, kind="stable")
        dp, dc = dp[order], dc[order]
        ov, j = best_candidates(dp, dc, gp, gc, min_iou=iou_thr)
        hit = np.flatnonzero(ov >= iou_thr)
        _, first = np.unique(j[hit], return_index=True)  # the highest-scoring claim of each ground truth
        hit = hit[first]
        if not len(hit):
            continue
        grb, drb = poly2rbox(gp[j[hit]]), poly2rbox(dp[hit])
        keep = (grb[:, 2] >= min_aspect * grb[:, 3]) != near_square
        period = math.pi / 2 if near_square else math.pi
        diff = np.abs(grb[keep, 4] - drb[keep, 4]) % period
        errs.append(np.degrees(np.minimum(diff, period - diff)))
    e = np.concatenate(errs) if errs else np.zeros(0)
    if not len(e):
        return {"mean": float("nan"), "median": float("nan"), "n": 0}
    return {"mean": float(e.mean()), "median": float(np.median(e)), "n": int(len(e))}
