from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import obbslim.ops.iou as iou_mod
import obbslim.ops.nms as nms_mod
from obbslim.ops import batched_nms_rotated, nms_rotated, rbox2poly, rbox_iou

SETTINGS = settings(max_examples=15, deadline=None)
seeds = st.integers(0, 2**31 - 1)


def shapely_nms(r: np.ndarray, s: np.ndarray, thr: float) -> np.ndarray:
    """Textbook greedy NMS with shapely IoU (ties in score keep input order)."""
    order = np.argsort(-s, kind="stable")
    polys = shapely.polygons(rbox2poly(r).reshape(-1, 4, 2))[order]
    area = shapely.area(polys)
    alive = np.ones(len(r), bool)
    keep = []
    for k in range(len(r)):
        if not alive[k]:
            continue
        keep.append(order[k])
        rest = np.flatnonzero(alive[k + 1 :]) + k + 1
        if rest.size:
            inter = shapely.area(shapely.intersection(polys[k], polys[rest]))
            alive[rest[inter / (area[k] + area[rest] - inter) > thr]] = False
    return np.asarray(keep, dtype=np.int64)


def clustered(
    rng: np.random.Generator, n: int, k: int, extent: float = 600.0
) -> tuple[np.ndarray, np.ndarray]:
    cen = rng.uniform(0, extent, (k, 2))
    size = rng.uniform(8, 60, (k, 2))
    ang = rng.uniform(-1.6, 1.6, k)
    c = rng.integers(0, k, n)
    r = np.c_[
        cen[c] + rng.normal(0, 5, (n, 2)),
        size[c] * rng.uniform(0.7, 1.3, (n, 2)),
        ang[c] + rng.normal(0, 0.2, n),
    ]
    return r, rng.uniform(0, 1, n)


@SETTINGS
@given(seeds, st.sampled_from([0.1, 0.3, 0.5, 0.7]))
def test_matches_shapely_greedy_on_clustered_boxes(seed, thr):
    rng = np.random.default_rng(seed)
    r, s = clustered(rng, 300, 20)
    s[rng.random(len(s)) < 0.1] = 0.5  # some ties
    got = nms_rotated(r, s, thr)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, shapely_nms(r, s, thr))


def test_torch_input_and_descending_order():
    rng = np.random.default_rng(0)
    r, s = clustered(rng, 200, 15)
    got = nms_rotated(torch.tensor(r, dtype=torch.float32), torch.tensor(s, dtype=torch.float32), 0.4)
    assert got.dtype == torch.int64
    assert bool((torch.diff(torch.tensor(s)[got]) <= 0).all())
    np.testing.assert_array_equal(got.numpy(), shapely_nms(r.astype(np.float32).astype(np.float64), s, 0.4))


def test_zero_and_one_box():
    assert nms_rotated(np.zeros((0, 5)), np.zeros(0), 0.5).shape == (0,)
    out = nms_rotated(torch.zeros(0, 5), torch.zeros(0), 0.5)
    assert out.shape == (0,) and out.dtype == torch.int64
    assert batched_nms_rotated(np.zeros((0, 5)), np.zeros(0), np.zeros(0, dtype=np.int64), 0.5).shape == (0,)
    np.testing.assert_array_equal(nms_rotated(np.array([[5.0, 5, 4, 2, 0]]), np.array([0.3]), 0.5), [0])


def test_hand_computed():
    r = np.array(
        [[0, 0, 10, 10, 0], [5, 0, 10, 10, 0], [0, 0, 10, 10, 0.2], [100, 0, 10, 10, 0.0]], dtype=float
    )
    s = np.array([0.9, 0.8, 0.7, 0.95])
    # IoU(0, 1) = 1/3; IoU(0, 2) = 0.8484 (square vs the same square turned 0.2 rad); IoU(1, 2) < 1/3
    np.testing.assert_array_equal(nms_rotated(r, s, 0.5), [3, 0, 1])
    np.testing.assert_array_equal(nms_rotated(r, s, 0.3), [3, 0])
    np.testing.assert_array_equal(nms_rotated(r, s, 0.848), [3, 0, 1])
    np.testing.assert_array_equal(nms_rotated(r, s, 0.849), [3, 0, 1, 2])


@SETTINGS
@given(seeds)
def test_batched_is_per_class(seed):
    rng = np.random.default_rng(seed)
    r, s = clustered(rng, 300, 15)
    cls = rng.integers(0, 4, len(r))
    got = batched_nms_rotated(r, s, cls, 0.3)
    ref = np.concatenate(
        [np.flatnonzero(cls == c)[shapely_nms(r[cls == c], s[cls == c], 0.3)] for c in range(4)]
    )
    ref = ref[np.argsort(-s[ref], kind="stable")]
    np.testing.assert_array_equal(np.sort(got), np.sort(ref))
    assert np.all(np.diff(s[got]) <= 0)
    # float class ids and torch input work too
    got_t = batched_nms_rotated(torch.tensor(r), torch.tensor(s), torch.tensor(cls, dtype=torch.float32), 0.3)
    np.testing.assert_array_equal(np.sort(got_t.numpy()), np.sort(ref))


@pytest.mark.parametrize("block0", [1, 3, 1024])
def test_long_suppression_chain_uses_fallbacks(monkeypatch, block0):
    # boxes in a row, each overlapping the next with IoU 0.6, scores falling along the row: greedy
    # keeps every other box; the chain is longer than the vectorised round limits, so every stage
    # (blocks against kept boxes, lazy rounds, edge resolution, sequential loop) gets used
    monkeypatch.setattr(nms_mod, "_BLOCK0", block0)
    monkeypatch.setattr(nms_mod, "_LAZY_ROUNDS", 3)
    monkeypatch.setattr(nms_mod, "_MAX_ROUNDS", 4)
    n = 40
    r = np.c_[np.arange(n) * 2.5, np.zeros(n), np.full(n, 10.0), np.full(n, 4.0), np.zeros(n)]
    s = np.linspace(1, 0.1, n)
    got = nms_rotated(r, s, 0.5)
    np.testing.assert_array_equal(got, np.arange(0, n, 2))
    np.testing.assert_array_equal(got, shapely_nms(r, s, 0.5))
    rng = np.random.default_rng(5)
    r2, s2 = clustered(rng, 200, 8)
    np.testing.assert_array_equal(nms_rotated(r2, s2, 0.2), shapely_nms(r2, s2, 0.2))
    cls = rng.integers(0, 3, len(r2))
    ref = np.concatenate(
        [np.flatnonzero(cls == c)[shapely_nms(r2[cls == c], s2[cls == c], 0.2)] for c in range(3)]
    )
    np.testing.assert_array_equal(
        batched_nms_rotated(r2, s2, cls, 0.2), ref[np.argsort(-s2[ref], kind="stable")]
    )


def test_30000_boxes_in_chunks(monkeypatch):
    # 15,000 grid cells with a box and a slightly shifted lower-scored duplicate: keep exactly the
    # first of each pair. Small chunks prove that no N x N matrix is needed.
    monkeypatch.setattr(iou_mod, "CHUNK_PAIRS", 4096)
    monkeypatch.setattr(nms_mod, "PAIR_BUDGET", 4096)
    rng = np.random.default_rng(0)
    g = np.stack(np.meshgrid(np.arange(150), np.arange(100)), -1).reshape(-1, 2) * 50.0
    a = np.c_[
        g + rng.uniform(-3, 3, g.shape), rng.uniform(15, 30, (len(g), 2)), rng.uniform(-1.5, 1.5, len(g))
    ]
    b = a.copy()
    b[:, :2] += rng.uniform(-1, 1, g.shape)
    r = np.concatenate([a, b])
    s = np.concatenate([rng.uniform(0.5, 1, len(a)), rng.uniform(0, 0.5, len(b))])
    got = nms_rotated(r, s, 0.5)
    assert len(r) == 30000
    np.testing.assert_array_equal(np.sort(got), np.arange(len(a)))
    assert np.all(np.diff(s[got]) <= 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(1)
    r, s = clustered(rng, 2000, 60)
    got = nms_rotated(torch.tensor(r).cuda(), torch.tensor(s).cuda(), 0.3)
    assert got.is_cuda
    np.testing.assert_array_equal(got.cpu().numpy(), nms_rotated(r, s, 0.3))
    cls = torch.tensor(rng.integers(0, 3, len(r))).cuda()
    got = batched_nms_rotated(torch.tensor(r).cuda(), torch.tensor(s).cuda(), cls, 0.3)
    np.testing.assert_array_equal(got.cpu().numpy(), batched_nms_rotated(r, s, cls.cpu().numpy(), 0.3))


@settings(max_examples=8, deadline=None)
@given(seeds, st.sampled_from([torch.float32, torch.float64]))
def test_iou_bounds_are_rigorous_and_decisions_exact(seed, dtype):
    # the cheap bounds NMS uses to skip clipping must bracket the exact IoU, and the decision made
    # through them must equal rbox_iou > thr (in float64: a float32 IoU can round onto the threshold,
    # as seed 10336 found, 0.50000011 -> 0.5; within float32's resolution of it either answer is right)
    rng = np.random.default_rng(seed)
    r, _ = clustered(rng, 150, 5, extent=100)
    t = torch.tensor(r, dtype=dtype)
    boxes = nms_mod._Boxes(t)
    i, j = torch.triu_indices(len(r), len(r), 1)
    exact = rbox_iou(t.double(), t.double())[i, j]
    tol = 1e-6 if dtype == torch.float32 else 0.0
    for thr in (0.05, 0.3, 0.5, 0.8):
        sure = (exact - thr).abs() > tol
        got = boxes.suppress(i, j, thr)
        np.testing.assert_array_equal(got[sure].numpy(), (exact > thr)[sure].numpy())
    calls = []
    orig = nms_mod._rect_inter

    def spy(*args):
        calls.append(args[0].shape[0])
        return orig(*args)

    nms_mod._rect_inter = spy
    try:
        boxes.suppress(i, j, 0.3)
    finally:
        nms_mod._rect_inter = orig
    assert 0 < sum(calls) < len(i)  # the bounds decided some pairs, the exact area the rest


def rect_inter_of(a: np.ndarray, b: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """nms._rect_inter on rbox pairs a[k], b[k], given in b's coordinates relative to a's frame."""
    a, b = torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype)
    ca, sa = torch.cos(a[:, 4]), torch.sin(a[:, 4])
    dx, dy = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
    d = b[:, 4] - a[:, 4]
    return nms_mod._rect_inter(
        dx * ca + dy * sa, dy * ca - dx * sa, torch.cos(d), torch.sin(d),
        a[:, 2] / 2, a[:, 3] / 2, b[:, 2] / 2, b[:, 3] / 2,
    ).numpy()  # fmt: skip


@SETTINGS
@given(seeds, st.sampled_from([torch.float32, torch.float64]))
def test_rect_intersection_matches_shapely(seed, dtype):
    # the exact area NMS uses for pairs its bounds cannot decide, against shapely, with the hard cases:
    # identical, nested, sharing an edge, sharing a corner, disjoint and nearly identical boxes
    rng = np.random.default_rng(seed)
    n = 300
    a = np.c_[rng.uniform(0, 500, (n, 2)), rng.uniform(2, 80, (n, 2)), rng.uniform(-1.6, 1.6, n)]
    b = np.c_[a[:, :2] + rng.normal(0, 20, (n, 2)), rng.uniform(2, 80, (n, 2)), rng.uniform(-1.6, 1.6, n)]
    w, h, t = a[:, 2], a[:, 3], a[:, 4]
    shift = np.c_[w * np.cos(t), w * np.sin(t)]  # a's neighbour along its long axis: an edge in common
    hard = [
        a,  # identical
        np.c_[a[:, :2], 0.5 * a[:, 2:4], t],  # nested, same angle
        np.c_[a[:, :2], 0.4 * h, 0.4 * h, t + 0.7],  # nested, turned
        np.c_[a[:, :2] + shift, a[:, 2:]],  # sharing an edge
        np.c_[a[:, :2] + shift + np.c_[-h * np.sin(t), h * np.cos(t)], a[:, 2:]],  # sharing a corner
        np.c_[a[:, :2] + 3 * shift, a[:, 2:]],  # disjoint
        a + rng.normal(0, 1e-4, a.shape),  # nearly identical
        b,
    ]
    pairs = [(a, other) for other in hard]
    flat = np.c_[a[:, :4], np.zeros(n)]  # axis-aligned: edges exactly parallel to the clip lines
    pairs += [
        (flat, flat + np.c_[w / 3, h / 3, np.zeros((n, 3))]),
        (flat, flat + np.c_[3 * w, np.zeros((n, 4))]),
    ]
    for a, other in pairs:
        got = rect_inter_of(a, other, dtype)
        pa = shapely.polygons(rbox2poly(a).reshape(-1, 4, 2))
        pb = shapely.polygons(rbox2poly(other).reshape(-1, 4, 2))
        ref = shapely.area(shapely.intersection(pa, pb))
        tol = 1e-3 if dtype == torch.float32 else 1e-7
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * (w * h)[:, None].max())


def test_tiny_boxes_far_apart_and_integer_input():
    # grid keys stay in int64 when boxes are tiny compared with the spread of their centres
    r = np.array([[0, 0, 1e-3, 1e-3, 0], [1e9, 1e9, 1e-3, 1e-3, 0], [1e9, 1e9, 1e-3, 1e-3, 0.0]])
    np.testing.assert_array_equal(nms_rotated(r, np.array([0.1, 0.3, 0.2]), 0.5), [1, 0])
    ri = np.array([[0, 0, 10, 4, 0], [1, 0, 10, 4, 0], [50, 0, 10, 4, 0]])  # ints: computed in float64
    np.testing.assert_array_equal(nms_rotated(ri, np.array([3, 2, 1]), 0.5), [0, 2])


@SETTINGS
@given(seeds, st.sampled_from([0.1, 0.4, 0.7]), st.integers(1, 60))
def test_max_keep_is_the_prefix_of_the_full_result(seed, thr, max_keep):
    rng = np.random.default_rng(seed)
    r, s = clustered(rng, 400, 25)
    cls = rng.integers(0, 3, len(r))
    full = batched_nms_rotated(r, s, cls, thr)
    np.testing.assert_array_equal(batched_nms_rotated(r, s, cls, thr, max_keep=max_keep), full[:max_keep])
    assert nms_rotated(r, s, thr, max_keep=0).shape == (0,)


def test_boxes_of_very_different_sizes():
    # a few huge boxes among many small ones: each size level has its own cells, the small boxes
    # still pair only with their neighbours; the result is the textbook one
    rng = np.random.default_rng(3)
    r, s = clustered(rng, 600, 40, extent=800)
    big = np.c_[rng.uniform(0, 800, (6, 2)), rng.uniform(500, 900, (6, 2)), rng.uniform(-1.5, 1.5, 6)]
    tiny = np.c_[rng.uniform(0, 800, (30, 2)), rng.uniform(0.5, 2, (30, 2)), rng.uniform(-1.5, 1.5, 30)]
    r = np.concatenate([r, big, big + [3, 0, 0, 0, 0.05], tiny, tiny + [0.2, 0, 0, 0, 0]])
    s = np.concatenate([s, rng.uniform(0, 1, 72)])
    for thr in (0.1, 0.5):
        np.testing.assert_array_equal(nms_rotated(r, s, thr), shapely_nms(r, s, thr))


@settings(max_examples=10, deadline=None)
@given(seeds)
def test_slab_bounds_bracket_the_intersection(seed):
    # the bounds that decide most turned pairs without clipping must hold for any pair
    rng = np.random.default_rng(seed)
    n = 400
    a = np.c_[rng.uniform(0, 50, (n, 2)), rng.uniform(1, 60, (n, 2)), rng.uniform(-1.6, 1.6, n)]
    b = np.c_[a[:, :2] + rng.normal(0, 15, (n, 2)), rng.uniform(1, 60, (n, 2)), rng.uniform(-1.6, 1.6, n)]
    b[:50, 4] = a[:50, 4]  # parallel
    b[50:100, 4] = a[50:100, 4] + np.pi / 2  # perpendicular
    b[100:150] = a[100:150]  # identical
    ta, tb = torch.tensor(a), torch.tensor(b)
    c, s = torch.cos(ta[:, 4]), torch.sin(ta[:, 4])
    dx, dy = tb[:, 0] - ta[:, 0], tb[:, 1] - ta[:, 1]
    d = tb[:, 4] - ta[:, 4]
    lo, hi = nms_mod._slab_bounds(
        dx * c + dy * s, dy * c - dx * s, torch.cos(d), torch.sin(d),
        ta[:, 2] / 2, ta[:, 3] / 2, tb[:, 2] / 2, tb[:, 3] / 2,
    )  # fmt: skip
    pa = shapely.polygons(rbox2poly(a).reshape(-1, 4, 2))
    pb = shapely.polygons(rbox2poly(b).reshape(-1, 4, 2))
    ref = shapely.area(shapely.intersection(pa, pb))
    tol = 1e-9 * (a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3])
    assert np.all(lo.numpy() <= ref + tol) and np.all(hi.numpy() >= ref - tol)
    np.testing.assert_allclose(hi.numpy()[100:150], ref[100:150], rtol=1e-9)  # identical: exact


def test_one_thread_inside_and_restored():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        nms_rotated(torch.zeros(3, 5), torch.ones(3), 0.5)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


_BOUNDED_MEMORY_SCRIPT = r"""
import resource, sys
import numpy as np, torch
from obbslim.ops import nms_rotated

def vm_bytes(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

rng = np.random.default_rng(0)
# 1,089 piles 60 px apart: a best box and 130 copies each with IoU > 0.5 to it (all suppressed)
g = np.stack(np.meshgrid(np.arange(30, 2000, 60), np.arange(30, 2000, 60)), -1).reshape(-1, 2)
P = len(g)
top = np.c_[g, rng.uniform(28, 34, P), rng.uniform(20, 24, P), rng.uniform(-1.5, 1.5, P)]
c = np.repeat(np.arange(P), 130)
n = len(c)
jit = np.c_[rng.uniform(-1, 1, (n, 2)), rng.uniform(-0.5, 0.5, (n, 2)), rng.uniform(-0.03, 0.03, n)]
s_top = rng.uniform(0.9, 1.0, P)
# ~60,000 thin 60 x 4 boxes on 9 angles 20 degrees apart crossing the piles and each other (IoU < 0.2:
# all kept): per angle, lines 10 px apart, boxes end to end
thin = []
for k in range(9):
    a = np.pi * k / 9 - np.pi / 2
    u, v = np.arange(-3000, 3000, 60.0) + 7 * k, np.arange(-3000, 3000, 10.0) + 0.3 * k
    U, V = [t.ravel() for t in np.meshgrid(u, v)]
    x, y = 1000 + U * np.cos(a) - V * np.sin(a), 1000 + U * np.sin(a) + V * np.cos(a)
    m = (x > 0) & (x < 2000) & (y > 0) & (y < 2000)
    thin.append(np.c_[x[m], y[m], np.full(m.sum(), 60.0), np.full(m.sum(), 4.0), np.full(m.sum(), a)])
thin = np.concatenate(thin)
r = np.concatenate([top, top[c] + jit, thin])
s = np.concatenate([s_top, s_top[c] * rng.uniform(0, 0.999, len(c)), rng.uniform(0, 1, len(thin))])
expect = np.r_[np.arange(P), P + len(c) + np.arange(len(thin))]
torch.set_num_threads(1)
nms_rotated(r[:1000], s[:1000], 0.5)  # imports and allocator warm
cap = vm_bytes("VmSize") + int(sys.argv[1]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
keep = nms_rotated(torch.from_numpy(r), torch.from_numpy(s), 0.5)
assert len(r) > 200_000, len(r)
assert np.array_equal(np.sort(keep.numpy()), expect), (len(keep), len(expect))
print("ok", len(r), len(keep))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and RLIMIT_AS")
def test_200000_overlapping_boxes_under_a_memory_cap():
    # piles of near-duplicates (one kept per pile) crossed by thin boxes that overlap thousands of
    # others without suppressing them: millions of candidate pairs, processed in chunks, so the run
    # fits in 768 MB of address space above its start (building all pairs at once needs > 2 GB)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-c", _BOUNDED_MEMORY_SCRIPT, "768"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")
