"""Merge-NMS (ops.merge_rotated and the standalone deployment copy) against hand-computed means and
shapely's IoU for the membership."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon

from obbslim import ops


def T(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_same_angle_boxes_average_centre_and_sides_by_score():
    r = T([[50, 50, 20, 10, 0.3], [52, 49, 24, 8, 0.3], [150, 50, 20, 10, 0.3]])
    s = T([0.9, 0.6, 0.8])
    out = ops.merge_rotated(r, s, torch.tensor([0, 2]), 0.4)
    # same angle: the second's centre is (1.615, -1.546) in the first's frame, overlap 20 x 7.454,
    # IoU 149.1 / (200 + 192 - 149.1) = 0.61 > 0.4; weights 0.9 / 1.5 and 0.6 / 1.5
    assert out[0].tolist() == pytest.approx([50.8, 49.6, 21.6, 9.2, 0.3], abs=1e-9)
    assert torch.equal(out[1], r[2])  # nothing overlaps it: returned exactly
    # a member scoring under a quarter of the kept box is left out (min_ratio 0.25)
    weak = ops.merge_rotated(r, T([0.9, 0.22, 0.8]), torch.tensor([0]), 0.4)
    assert torch.equal(weak[0], r[0])
    assert ops.merge_rotated(r, T([0.9, 0.22, 0.8]), torch.tensor([0]), 0.4, min_ratio=0.2)[0, 0] > 50


def test_long_side_swap_and_the_angle_seam_average_as_the_same_rectangles():
    a = [60, 40, 30, 10, -math.pi / 2 + 0.05]  # nearly vertical, just past the seam one way
    b = [60, 40, 30, 10, math.pi / 2 - 0.05]  # the same, just past it the other way
    merged = ops.merge_rotated(T([a, b]), T([1.0, 1.0]), torch.tensor([0]), 0.4)[0]
    # the mean orientation is vertical (-pi/2), not horizontal (the mean of the two numbers, 0)
    assert merged.tolist() == pytest.approx([60, 40, 30, 10, -math.pi / 2], abs=1e-9)
    # a member written (h, w, theta + pi/2) or theta + pi is the same rectangle: the same merge
    c = [61, 41, 28, 12, 0.2]
    def merged_with(member):
        return ops.merge_rotated(T([a, member]), T([0.7, 0.5]), torch.tensor([0]), 0.1)[0]

    plain = merged_with(c)
    torch.testing.assert_close(merged_with([61, 41, 12, 28, 0.2 + math.pi / 2]), plain, atol=1e-9, rtol=0)
    torch.testing.assert_close(merged_with([61, 41, 28, 12, 0.2 - math.pi]), plain, atol=1e-9, rtol=0)


def random_boxes(rng, n: int, lo: float, hi: float, min_long: float) -> np.ndarray:
    """Normalised rboxes, as NMS gets them, centres in [lo, hi)."""
    xy = rng.uniform(lo, hi, (n, 2))
    wh = np.column_stack([rng.uniform(min_long, 30, n), rng.uniform(4, 12, n)])
    return ops.norm_rbox(np.column_stack([xy, wh, rng.uniform(-1.57, 1.57, n)]))


def shapely_iou(p: np.ndarray, q: np.ndarray) -> float:
    a, b = Polygon(p.reshape(4, 2)), Polygon(q.reshape(4, 2))
    return a.intersection(b).area / a.union(b).area


def reference_merge(r: np.ndarray, s: np.ndarray, g: np.ndarray, k: int, thr: float, ratio: float):
    """The definition, written plainly: members by shapely IoU, each written as the one of its four
    forms (w, h, t), (h, w, t + pi/2), (w, h, t + pi), (h, w, t - pi/2) whose angle is nearest the
    kept box's, then the score-weighted mean of (x, y, w, h, t)."""
    polys = ops.rbox2poly(r)
    mem = [j for j in range(len(r)) if g[j] == g[k] and s[j] >= ratio * s[k]
           and (j == k or shapely_iou(polys[k], polys[j]) > thr)]  # fmt: skip
    if len(mem) == 1:
        return r[k]
    rows = []
    for x, y, a, b, t in r[mem]:
        forms = [(a, b, t + q * math.pi / 2) if q % 2 == 0 else (b, a, t + q * math.pi / 2)
                 for q in (-2, -1, 0, 1, 2)]  # fmt: skip
        rows.append((x, y, *min(forms, key=lambda f: abs(f[2] - r[k, 4]))))
    return ops.norm_rbox((s[mem] / s[mem].sum()) @ np.array(rows))


def test_near_squares_keep_their_angle_when_the_long_side_flips():
    # two near-squares 0.1 rad apart, the second labelled with its other side as the long one:
    # the merge is the mean in the first's frame (the angle 0.25), not a round box with a random angle
    a = [50, 50, 20.0, 19.9, 0.3]
    b = ops.norm_rbox(np.array([[50, 50, 19.9, 20.0, 0.2]]))[0].tolist()  # -> (20, 19.9, 0.2 + pi/2 - pi)
    assert b[4] == pytest.approx(0.2 - math.pi / 2)
    m = ops.merge_rotated(T([a, b]), T([1.0, 1.0]), torch.tensor([0]), 0.4)[0]
    assert m[2].item() == pytest.approx(19.95) and m[3].item() == pytest.approx(19.95)
    assert math.remainder(m[4].item() - 0.25, math.pi / 2) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_membership_is_exact_iou_above_the_threshold_within_the_group(seed):
    rng = np.random.default_rng(seed)
    n = 60
    r = random_boxes(rng, n, 40, 60, 12)
    s, g = rng.uniform(0.01, 1, n), rng.integers(0, 2, n)
    keep = np.array([int(s.argmax()), int(np.argsort(s)[n // 2]), 3])
    out = ops.merge_rotated(torch.from_numpy(r), torch.from_numpy(s), torch.from_numpy(keep), 0.3,
                            torch.from_numpy(g), min_ratio=0.1).numpy()  # fmt: skip
    for o, k in zip(out, keep):
        ref = reference_merge(r, s, g, k, 0.3, 0.1)
        np.testing.assert_allclose(o[:4], ref[:4], atol=1e-7)
        assert abs(math.remainder(o[4] - ref[4], math.pi)) < 1e-7


def test_postprocess_merges_only_what_nms_kept_and_keeps_scores():
    from obbslim.inference.postprocess import postprocess

    nc, nbins = 1, 180
    x = torch.zeros(3, 6 + nc + nbins)
    x[:, :5] = torch.tensor([[50, 50, 20, 10, 0.0], [50, 52, 20, 10, 0.0], [90, 50, 20, 10, 0.0]])
    x[:, 5], x[:, 6] = torch.tensor([0.9, 0.6, 0.5]), 1.0
    d = postprocess(x[None], conf_thr=0.01, iou_thr=0.4)[0]
    assert d["scores"].tolist() == pytest.approx([0.9, 0.5])
    assert d["rboxes"][0, :2].tolist() == pytest.approx([50, 50 + 2 * 0.6 / 1.5])
    assert d["rboxes"][1].tolist() == pytest.approx([90, 50, 20, 10, 0.0])


def test_the_standalone_deployment_merge_equals_the_library():
    pytest.importorskip("onnxruntime")
    from obbslim.deploy import standalone

    rng = np.random.default_rng(5)
    n = 80
    r = random_boxes(rng, n, 30, 70, 8)
    s, g = rng.uniform(0.01, 1, n), rng.integers(0, 3, n)
    keep = np.asarray(ops.batched_nms_rotated(r, s, g, 0.4))
    lib = ops.merge_rotated(torch.from_numpy(r), torch.from_numpy(s), torch.from_numpy(keep), 0.4,
                            torch.from_numpy(g)).numpy()  # fmt: skip
    dep = standalone.merge_rotated(r, s, g, keep, 0.4)
    np.testing.assert_allclose(dep[:, :4], lib[:, :4], atol=1e-7)
    assert np.abs(np.remainder(dep[:, 4] - lib[:, 4] + math.pi / 2, math.pi) - math.pi / 2).max() < 1e-7
