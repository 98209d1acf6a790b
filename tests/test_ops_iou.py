from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import obbslim.ops.iou as iou_mod
from obbslim.ops import poly_iou, rbox2poly, rbox_iou

SETTINGS = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2**31 - 1)


def shapely_iou_polys(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    a = shapely.polygons(pa.reshape(-1, 4, 2))
    b = shapely.polygons(pb.reshape(-1, 4, 2))
    inter = shapely.area(shapely.intersection(a[:, None], b[None]))
    union = shapely.area(a)[:, None] + shapely.area(b)[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def shapely_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return shapely_iou_polys(rbox2poly(a), rbox2poly(b))


def shifted(r: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Copies moved by dist along their short-side axis (dist = h: neighbours sharing the long edge)."""
    out = r.copy()
    out[:, 0] -= np.sin(r[:, 4]) * dist
    out[:, 1] += np.cos(r[:, 4]) * dist
    return out


def mixed_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random boxes plus derived nested, identical and axis-aligned (integer) ones."""
    r = np.c_[rng.uniform(0, 60, (n, 2)), rng.uniform(1, 40, (n, 2)), rng.uniform(-4, 4, n)]
    nested = r.copy()
    nested[:, 2:4] *= rng.uniform(0.2, 0.9, (n, 1))
    axis = r.copy()
    axis[:, 4] = rng.integers(-2, 2, n) * (math.pi / 2)
    axis[:, :4] = np.round(axis[:, :4])
    return np.concatenate([r, nested, r.copy(), axis])


@SETTINGS
@given(seeds)
def test_rbox_iou_matches_shapely_float64(seed):
    rng = np.random.default_rng(seed)
    a = mixed_boxes(rng, 12)
    b = mixed_boxes(np.random.default_rng(seed + 1), 8)
    b[: len(b) // 2] = a[: len(b) // 2]  # identical boxes across a and b as well
    got = rbox_iou(a, b)
    np.testing.assert_allclose(got, shapely_iou(a, b), atol=1e-5, rtol=0)
    assert got.shape == (len(a), len(b)) and got.dtype == np.float64
    assert np.all((got >= 0) & (got <= 1))
    np.testing.assert_allclose(got, rbox_iou(b, a).T, atol=1e-12)  # symmetric
    np.testing.assert_allclose(np.diag(rbox_iou(a, a)), 1.0, atol=1e-9)
    np.testing.assert_allclose(rbox_iou(a, a, aligned=True), 1.0, atol=1e-9)


@SETTINGS
@given(seeds)
def test_rbox_iou_float32_large_coordinates(seed):
    rng = np.random.default_rng(seed)
    a = mixed_boxes(rng, 10)
    a[:, :2] += rng.uniform(0, 5000, 2)  # DOTA-sized image coordinates
    b = a[rng.permutation(len(a))] + np.c_[rng.normal(0, 2, (len(a), 2)), np.zeros((len(a), 3))]
    a, b = a.astype(np.float32), b.astype(np.float32)  # compare on the same (rounded) boxes
    ref = shapely_iou(a.astype(np.float64), b.astype(np.float64))
    got = rbox_iou(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, atol=2e-4, rtol=0)
    d = torch.diagonal(rbox_iou(torch.tensor(a, dtype=torch.float32), torch.tensor(a, dtype=torch.float32)))
    assert float(d.min()) > 1 - 1e-5


def test_hand_computed_cases():
    base = np.array([[0.0, 0.0, 10.0, 10.0, 0.0]])
    others = np.array(
        [
            [10, 0, 10, 10, 0],  # shares an edge -> 0
            [5, 0, 10, 10, 0],  # half overlap -> 50 / 150
            [0, 0, 4, 4, 0.3],  # nested -> 16 / 100
            [0, 0, 10, 10, math.pi / 2],  # the same square rotated by 90 degrees -> 1
            [0, 0, 10, 10, math.pi],  # rotated by pi -> 1
            [30, 30, 10, 10, 0.7],  # disjoint -> 0
            [10, 10, 10, 10, 0],  # touches at a corner -> 0
            [0, 0, 10, 10, math.pi / 4],  # square vs the same square at 45 degrees
        ]
    )
    got = rbox_iou(base, others)[0]
    inter45 = 8 * 25 * math.tan(math.pi / 8)  # a regular octagon of inradius 5: 8 r^2 tan(pi/8)
    expect = [0, 1 / 3, 0.16, 1, 1, 0, 0, inter45 / (200 - inter45)]
    np.testing.assert_allclose(got, expect, atol=1e-12)


@SETTINGS
@given(seeds)
def test_shared_edge_and_thin_overlap_strips(seed):
    # GEOS itself sometimes returns the whole box for rotated boxes that share an edge, so these are
    # checked against the closed form: overlap strip of width d -> IoU = d / (2 h - d).
    rng = np.random.default_rng(seed)
    r = np.c_[
        rng.uniform(0, 3000, (30, 2)),
        rng.uniform(20, 60, (30, 1)),
        rng.uniform(1, 20, (30, 1)),
        rng.uniform(-4, 4, 30),
    ]
    h = r[:, 3]
    np.testing.assert_allclose(rbox_iou(r, shifted(r, h), aligned=True), 0, atol=1e-9)
    np.testing.assert_allclose(rbox_iou(r, shifted(r, -h), aligned=True), 0, atol=1e-9)
    np.testing.assert_allclose(rbox_iou(r, shifted(r, 1.0001 * h), aligned=True), 0, atol=0)
    d = h * rng.uniform(1e-3, 1, 30)
    np.testing.assert_allclose(rbox_iou(r, shifted(r, h - d), aligned=True), d / (2 * h - d), rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degenerate_boxes_give_zero_not_nan(dtype):
    a = torch.tensor(
        [[0, 0, 10, 1e-9, 0.2], [0, 0, 0, 0, 0], [0, 0, 10, 0, 0], [5, 5, 0, 3, 1.0]], dtype=dtype
    )
    b = torch.tensor([[0, 0, 10, 10, 0], [0, 0, 10, 1e-9, 0.2], [0, 0, 0, 0, 0]], dtype=dtype)
    for x, y in ((a, b), (b, a), (a, a)):
        got = rbox_iou(x, y)
        assert not torch.isnan(got).any()
        assert float(got.abs().max()) <= 1e-6


def test_empty_inputs():
    assert rbox_iou(np.zeros((0, 5)), np.ones((3, 5))).shape == (0, 3)
    assert rbox_iou(np.ones((2, 5)), np.zeros((0, 5))).shape == (2, 0)
    assert rbox_iou(torch.zeros(0, 5), torch.zeros(0, 5), aligned=True).shape == (0,)


def convex_quads(rng: np.random.Generator, n: int) -> np.ndarray:
    ang = np.sort(rng.uniform(0, 2 * np.pi, (n, 4)), axis=1)
    ax = rng.uniform(3, 40, (n, 2, 1))
    rot = rng.uniform(0, np.pi, (n, 1))
    x, y = ax[:, 0] * np.cos(ang), ax[:, 1] * np.sin(ang)
    xr = x * np.cos(rot) - y * np.sin(rot)
    yr = x * np.sin(rot) + y * np.cos(rot)
    return (np.stack([xr, yr], -1) + rng.uniform(0, 50, (n, 1, 2))).reshape(n, 8)


@SETTINGS
@given(seeds)
def test_poly_iou_matches_shapely_either_orientation(seed):
    rng = np.random.default_rng(seed)
    a, b = convex_quads(rng, 15), convex_quads(rng, 10)
    b[:3] = a[:3]
    ref = shapely_iou_polys(a, b)
    got = poly_iou(a, b)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    a_rev = a.reshape(-1, 4, 2)[:, ::-1].reshape(-1, 8)  # clockwise <-> counter-clockwise
    np.testing.assert_allclose(poly_iou(a_rev, b), got, atol=1e-12)
    np.testing.assert_allclose(poly_iou(a[:10], b, aligned=True), np.diag(got[:10]), atol=1e-12)


def test_chunking_gives_same_result(monkeypatch):
    rng = np.random.default_rng(3)
    a, b = mixed_boxes(rng, 20), mixed_boxes(rng, 20)
    full = rbox_iou(a, b)
    monkeypatch.setattr(iou_mod, "CHUNK_PAIRS", 7)
    np.testing.assert_allclose(rbox_iou(a, b), full, atol=0)


def test_torch_keeps_dtype_and_numpy_returns_numpy():
    a = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.1]], dtype=torch.float32)
    assert rbox_iou(a, a).dtype == torch.float32
    assert isinstance(rbox_iou(a.numpy(), a.numpy()), np.ndarray)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    rng = np.random.default_rng(0)
    a, b = mixed_boxes(rng, 50), mixed_boxes(rng, 40)
    ta, tb = torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype)
    got = rbox_iou(ta.cuda(), tb.cuda())
    assert got.is_cuda and got.dtype == dtype
    np.testing.assert_allclose(
        got.cpu().numpy(), rbox_iou(ta, tb).numpy(), atol=1e-5 if dtype == torch.float32 else 1e-10
    )


def convex_only(q: np.ndarray) -> np.ndarray:
    """The quads that are valid convex polygons (DOTA labels include a few non-convex ones)."""
    poly = shapely.polygons(q.reshape(-1, 4, 2))
    hull_area = shapely.area(shapely.convex_hull(poly))
    return q[shapely.is_valid(poly) & (hull_area > 0) & np.isclose(shapely.area(poly), hull_area)]


def test_poly_iou_on_real_dota_detections(shared_data):
    # Task1 detections vs ground truth of the same image (what the evaluation computes)
    root = shared_data / "dota_eval_example"
    gt_lines = (root / "row_DOTA_labels" / "P0019.txt").read_text().splitlines()
    gt = np.array([[float(v) for v in ln.split()[:8]] for ln in gt_lines if len(ln.split()) >= 9])
    det_lines = (root / "result_classname" / "Task1_ship.txt").read_text().splitlines()
    det = np.array([[float(v) for v in ln.split()[2:10]] for ln in det_lines if ln.split()[0] == "P0019"])
    gt, det = convex_only(gt), convex_only(det)
    assert len(gt) > 10 and len(det) > 10
    got = poly_iou(det, gt)
    ref = shapely_iou_polys(det, gt)
    assert (ref > 0.5).sum() > 5
    np.testing.assert_allclose(got, ref, atol=1e-6)


def nonconvex_quads(rng: np.random.Generator, n: int) -> np.ndarray:
    """Simple non-convex quads ("darts"): a triangle plus a 4th point pushed inside it."""
    c = rng.uniform(0, 40, (n, 1, 2))
    ang = np.sort(rng.uniform(0, 2 * np.pi, (n, 3)), axis=1)
    rad = rng.uniform(5, 30, (n, 3))
    tri = np.stack([rad * np.cos(ang), rad * np.sin(ang)], -1)
    inner = 0.5 * (tri[:, 2] + tri[:, 0]) * rng.uniform(0.1, 0.8, (n, 1))  # towards the centre
    q = np.concatenate([tri, inner[:, None]], 1) + c
    return q.reshape(n, 8)


@SETTINGS
@given(seeds)
def test_poly_iou_non_convex_quads(seed):
    rng = np.random.default_rng(seed)
    a = np.concatenate([nonconvex_quads(rng, 10), convex_quads(rng, 5)])
    b = np.concatenate([nonconvex_quads(rng, 8), convex_quads(rng, 4)])
    ok_a = shapely.is_valid(shapely.polygons(a.reshape(-1, 4, 2)))
    ok_b = shapely.is_valid(shapely.polygons(b.reshape(-1, 4, 2)))
    a, b = a[ok_a], b[ok_b]
    got = poly_iou(a, b)
    np.testing.assert_allclose(got, shapely_iou_polys(a, b), atol=1e-6)
    np.testing.assert_allclose(np.diag(poly_iou(a, a)), 1.0, atol=1e-9)
    a_rev = a.reshape(-1, 4, 2)[:, ::-1].reshape(-1, 8)
    np.testing.assert_allclose(poly_iou(a_rev, b), got, atol=1e-12)
