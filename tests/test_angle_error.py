"""obbslim.eval.angle_error against hand-set turns: the figure beside AP75 and the planes' figure."""

from __future__ import annotations

import math

import numpy as np
import pytest

from obbslim.eval import angle_error
from obbslim.ops import rbox2poly


def poly(cx, cy, w, h, deg):
    return rbox2poly(np.array([[cx, cy, w, h, math.radians(deg)]], np.float64)).reshape(8)


def one_image(gt_boxes, det_boxes, scores=None):
    """One image, one class: ``(gts, dets)`` as angle_error takes them."""
    gp = np.stack([poly(*b) for b in gt_boxes])
    dp = np.stack([poly(*b) for b in det_boxes])
    s = np.asarray(scores if scores is not None else [0.9] * len(det_boxes), np.float64)
    return [(gp, np.zeros(len(gp), np.int64))], [(dp, s, np.zeros(len(dp), np.int64))]


def test_elongated_error_is_the_turn_modulo_180():
    # a 60 x 12 box detected 4 degrees off, and another at -88 against +89 degrees: 3 degrees apart
    gts, dets = one_image(
        [(50, 50, 60, 12, 10), (150, 50, 60, 12, 89)], [(50, 50, 60, 12, 14), (150, 50, 60, 12, -88)]
    )
    r = angle_error(gts, dets)
    assert r["n"] == 2
    assert r["mean"] == pytest.approx(3.5, abs=1e-6) and r["median"] == pytest.approx(3.5, abs=1e-6)


def test_squares_are_left_out_by_default_and_scored_modulo_90_when_asked():
    # a 40 x 38 plane-like box detected turned by 80 degrees: the same box but 10 degrees, chance is 22.5
    gts, dets = one_image(
        [(50, 50, 40, 38, 5), (150, 50, 60, 12, 0)], [(50, 50, 40, 38, 85), (150, 50, 60, 12, 2)]
    )
    assert angle_error(gts, dets, iou_thr=0.1) == pytest.approx({"mean": 2.0, "median": 2.0, "n": 1})
    sq = angle_error(gts, dets, iou_thr=0.1, near_square=True)
    assert sq["n"] == 1 and sq["mean"] == pytest.approx(10.0, abs=1e-6)


def test_the_highest_scoring_match_counts_and_unmatched_gives_nan():
    # two detections on one truth: the higher score's 6 degrees count, not the lower one's 1 degree
    gts, dets = one_image([(50, 50, 60, 12, 0)], [(50, 50, 60, 12, 1), (50, 50, 60, 12, 6)], [0.3, 0.8])
    assert angle_error(gts, dets, iou_thr=0.1)["mean"] == pytest.approx(6.0, abs=1e-6)
    far = one_image([(50, 50, 60, 12, 0)], [(150, 150, 60, 12, 0)])
    r = angle_error(*far)
    assert r["n"] == 0 and math.isnan(r["mean"])
