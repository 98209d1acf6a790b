from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import shapely
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from obbslim.ops import norm_rbox, poly2rbox, rbox2poly

SETTINGS = settings(max_examples=40, deadline=None)
seeds = st.integers(0, 2**31 - 1)


def random_rboxes(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.c_[rng.uniform(-500, 3000, (n, 2)), rng.uniform(0.5, 300, (n, 2)), rng.uniform(-7, 7, n)]


def assert_convention(r: np.ndarray) -> None:
    assert np.all(r[:, 2] >= r[:, 3])
    assert np.all(r[:, 4] >= -math.pi / 2) and np.all(r[:, 4] < math.pi / 2)


def test_rbox2poly_hand_computed():
    p = rbox2poly(np.array([[0.0, 0.0, 4.0, 2.0, 0.0], [10.0, 20.0, 4.0, 2.0, math.pi / 2]]))
    np.testing.assert_allclose(p[0], [-2, -1, 2, -1, 2, 1, -2, 1])
    np.testing.assert_allclose(p[1], [11, 18, 11, 22, 9, 22, 9, 18], atol=1e-12)


def test_poly2rbox_hand_computed():
    # a 10 x 4 rectangle rotated by +30 degrees (clockwise on screen), given from a middle corner
    r = np.array([[100.0, 50.0, 10.0, 4.0, math.radians(30)]])
    p = np.roll(rbox2poly(r), 4, axis=1)
    np.testing.assert_allclose(poly2rbox(p), r, atol=1e-9)
    # long side vertical -> theta = -pi/2 (pi/2 is folded to -pi/2)
    got = poly2rbox(np.array([[0.0, 0, 2, 0, 2, 6, 0, 6]]))
    np.testing.assert_allclose(got, [[1, 3, 6, 2, -math.pi / 2]], atol=1e-12)


@SETTINGS
@given(seeds)
def test_rectangle_round_trip(seed):
    rng = np.random.default_rng(seed)
    r = random_rboxes(rng, 50)
    p = rbox2poly(r)
    p = np.stack([np.roll(q, 2 * int(k)) for q, k in zip(p, rng.integers(0, 4, len(p)))])  # any start corner
    flip = rng.random(len(p)) < 0.5  # either orientation
    p[flip] = p[flip].reshape(-1, 4, 2)[:, ::-1].reshape(-1, 8)
    back = poly2rbox(p)
    assert_convention(back)
    a = shapely.polygons(p.reshape(-1, 4, 2))
    b = shapely.polygons(rbox2poly(back).reshape(-1, 4, 2))
    # same rectangle: Hausdorff distance ~0 (GEOS overlay ops are unreliable on exactly coincident
    # edges: its symmetric difference of two identical rectangles is sometimes the whole area)
    dist = shapely.hausdorff_distance(a, b)
    assert np.all(dist <= 1e-9 * np.sqrt(shapely.area(a)))


@SETTINGS
@given(seeds, st.sampled_from(["convex", "any"]))
def test_poly2rbox_matches_cv2_min_area_rect(seed, kind):
    rng = np.random.default_rng(seed)
    n = 60
    if kind == "convex":  # 4 points on an ellipse, in angle order
        ang = np.sort(rng.uniform(0, 2 * np.pi, (n, 4)), axis=1)
        ax = rng.uniform(5, 200, (n, 2, 1))
        pts = np.stack([ax[:, 0] * np.cos(ang), ax[:, 1] * np.sin(ang)], -1) + rng.uniform(0, 1000, (n, 1, 2))
    else:  # arbitrary 4 points: non-convex and self-intersecting quads included
        pts = rng.uniform(0, 200, (n, 4, 2)) + rng.uniform(0, 1000, (n, 1, 2))
    r = poly2rbox(pts.reshape(n, 8))
    assert_convention(r)
    cv_area = np.array([np.prod(cv2.minAreaRect(q.astype(np.float32))[1]) for q in pts])
    # cv2 computes in float32: ~1e-4 px position error at 1000 px, i.e. ~1e-2 px^2 on small quads
    np.testing.assert_allclose(r[:, 2] * r[:, 3], cv_area, rtol=1e-4, atol=2e-2)
    # the rectangle encloses the 4 points
    rect = shapely.polygons(rbox2poly(r).reshape(-1, 4, 2))
    for q, rr in zip(pts, rect):
        assert rr.buffer(1e-6).contains(shapely.multipoints(q))


def test_poly2rbox_degenerate_points():
    r = poly2rbox(np.array([[5.0, 5, 5, 5, 5, 5, 5, 5], [0, 0, 4, 0, 4, 0, 0, 0]]))
    assert np.all(np.isfinite(r))
    np.testing.assert_allclose(r[0, :4], [5, 5, 0, 0])
    np.testing.assert_allclose(r[1, :4], [2, 0, 4, 0], atol=1e-12)


@SETTINGS
@given(seeds)
def test_norm_rbox_rotation_by_pi_and_swap(seed):
    rng = np.random.default_rng(seed)
    r = random_rboxes(rng, 100)
    n0 = norm_rbox(r)
    assert_convention(n0)
    k = rng.integers(-3, 4, len(r))
    n1 = norm_rbox(r + np.c_[np.zeros((len(r), 4)), k * math.pi])
    swapped = np.c_[r[:, :2], r[:, 3], r[:, 2], r[:, 4] + math.pi / 2]
    n2 = norm_rbox(swapped)
    for other in (n1, n2):
        assert_convention(other)
        np.testing.assert_allclose(other[:, :4], n0[:, :4], rtol=1e-12)
        d = np.abs((other[:, 4] - n0[:, 4] + math.pi / 2) % math.pi - math.pi / 2)  # same orientation
        assert d.max() < 1e-9


def test_norm_rbox_boundaries():
    r = np.array(
        [
            [0, 0, 4, 2, math.pi / 2],
            [0, 0, 4, 2, -math.pi / 2],
            [0, 0, 2, 4, 0.0],
            [0, 0, 4, 2, 3 * math.pi / 2],
            [0, 0, 4, 2, -math.pi / 2 - 1e-17],
            [0, 0, 4, 2, math.pi / 2 - 1e-12],
        ]
    )
    got = norm_rbox(r)
    np.testing.assert_allclose(got[:4, 4], -math.pi / 2)
    np.testing.assert_allclose(got[:4, 2:4], [[4, 2]] * 4)
    assert -math.pi / 2 <= got[4, 4] < math.pi / 2
    assert got[5, 4] == pytest.approx(math.pi / 2 - 1e-12)
    for dt in (torch.float32, torch.float64):
        t = torch.tensor(r, dtype=dt)
        g = norm_rbox(t)
        assert g.dtype == dt
        assert bool((g[:, 4] >= -math.pi / 2).all() and (g[:, 4] < math.pi / 2).all())
        assert g[0, 4].item() == pytest.approx(-math.pi / 2)


def test_types_and_shapes():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.5]], dtype=torch.float32)
    assert rbox2poly(r).dtype == torch.float32 and rbox2poly(r).shape == (1, 8)
    assert poly2rbox(rbox2poly(r)).dtype == torch.float32
    assert isinstance(poly2rbox(np.zeros((0, 8))), np.ndarray) and poly2rbox(np.zeros((0, 8))).shape == (0, 5)
    assert rbox2poly(np.zeros((0, 5))).shape == (0, 8)
    assert isinstance(norm_rbox(r.numpy()), np.ndarray)


def read_quads(path) -> np.ndarray:
    """The 8 coordinates of each object line of a DOTA labelTxt (header lines skipped)."""
    rows = [ln.split() for ln in path.read_text().splitlines()]
    return np.array([[float(v) for v in r[:8]] for r in rows if len(r) >= 9], dtype=np.float64)


def test_poly2rbox_on_real_dota_labels(shared_data):
    quads = np.concatenate(
        [read_quads(p) for p in sorted((shared_data / "dota_demo" / "labelTxt").glob("*.txt"))]
    )
    assert len(quads) > 500
    r = poly2rbox(quads)
    assert_convention(r)
    cv_area = np.array([np.prod(cv2.minAreaRect(q.reshape(4, 2).astype(np.float32))[1]) for q in quads])
    np.testing.assert_allclose(r[:, 2] * r[:, 3], cv_area, rtol=1e-4, atol=1e-2)
    # float32 torch gives rectangles of the same area (for non-rectangular quads two directions can
    # tie to within float32 rounding, so the rectangle itself may differ)
    r32 = poly2rbox(torch.tensor(quads, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(r32[:, 2] * r32[:, 3], r[:, 2] * r[:, 3], rtol=1e-4)
