"""Autoanchor: the ratio metric by hand, numpy k-means, anchor replacement, defaults on real DOTA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from obbslim.model import DEFAULT_ANCHORS, anchor_metrics, build, check_anchors, kmean_anchors
from obbslim.model.anchors import kmeans

torch.set_num_threads(1)


def test_bpr_and_aat_by_hand():
    anchors = [[10, 10], [40, 10]]
    wh = [[10, 10],  # ratios vs a0 (1, 1) -> 1; vs a1 (0.25, 1) -> 0.25 (not > 1/4)
          [50, 10],  # a0: (5, 1) -> 0.2; a1: (1.25, 1) -> 0.8
          [30, 10],  # a0: (3, 1) -> 1/3; a1: (0.75, 1) -> 0.75
          [200, 10]]  # a0: 0.05; a1: (5, 1) -> 0.2: no anchor
    bpr, aat = anchor_metrics(wh, anchors, thr=4.0)
    assert bpr == pytest.approx(3 / 4)
    assert aat == pytest.approx((1 + 1 + 2 + 0) / 4)
    # (short, long) input is read as (long, short)
    assert anchor_metrics([[10, 50]], anchors) == anchor_metrics([[50, 10]], anchors)
    assert anchor_metrics(np.zeros((0, 2)), anchors) == (1.0, 0.0)


@settings(max_examples=40, deadline=None)
@given(
    wh=st.lists(st.tuples(st.floats(2, 500), st.floats(2, 500)), min_size=1, max_size=20),
    scale=st.floats(0.1, 10),
)
def test_metric_is_scale_invariant_and_bounded(wh, scale):
    wh = np.array(wh)
    anchors = np.array(DEFAULT_ANCHORS, dtype=np.float64).reshape(-1, 2)
    bpr, aat = anchor_metrics(wh, anchors)
    assert 0 <= bpr <= 1 and 0 <= aat <= 9
    b2, a2 = anchor_metrics(wh * scale, anchors * scale)
    assert b2 == pytest.approx(bpr) and a2 == pytest.approx(aat)
    assert anchor_metrics(np.sort(anchors, 1)[:, ::-1], anchors)[0] == 1.0


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + rng.normal(0, 0.3, (50, 2)) for c in centres])
    c = kmeans(x, 3, rng=np.random.default_rng(1))
    d = np.linalg.norm(c[:, None] - centres[None], axis=2)
    assert sorted(d.argmin(1).tolist()) == [0, 1, 2]  # one centroid per cluster
    assert d.min(1).max() < 0.2


def test_kmean_anchors_sorted_long_short_and_deterministic():
    rng = np.random.default_rng(0)
    wh = np.concatenate([rng.uniform(5, 15, (200, 2)), rng.uniform(80, 160, (200, 2)) * [1, 0.3]])
    a = kmean_anchors(wh, n=9, gen=100, seed=3)
    b = kmean_anchors(wh, n=9, gen=100, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (9, 2)
    assert (np.diff(a.prod(1)) >= 0).all() and (a[:, 0] >= a[:, 1]).all()
    assert anchor_metrics(wh, a)[0] > 0.98


def test_check_anchors_replaces_badly_fitting_anchors():
    torch.manual_seed(0)
    model = build("yolov5n-obb", nc=2)
    rng = np.random.default_rng(0)
    # huge objects, far from the default (DOTA) anchors: 1100-1600 px long, 3-10:1 ratio
    long = rng.uniform(1100, 1600, 400)
    wh = np.stack([long, long / rng.uniform(3, 10, 400)], 1)
    before = anchor_metrics(wh, DEFAULT_ANCHORS)[0]
    assert before < 0.5
    lines = []
    res = check_anchors(model, torch.as_tensor(wh), thr=4.0, imgsz=2048, gen=300, print_fn=lines.append)
    assert res["replaced"] and res["bpr"] > 0.98
    new = model.detect.anchors
    assert new.shape == (3, 3, 2) and new.dtype == torch.float32
    flat = new.reshape(-1, 2)
    assert (flat[1:].prod(1) >= flat[:-1].prod(1)).all()  # small -> P3
    assert anchor_metrics(wh, flat.numpy())[0] == pytest.approx(res["bpr"])
    assert res["anchors"] == new.tolist()
    assert len(lines) == 1 and "installed" in lines[0] and "2048" in lines[0]
    assert model.arch["anchors"] == new.tolist()  # the record (and so checkpoints) follow


def test_check_anchors_keeps_fitting_anchors():
    model = build("yolov5n-obb", nc=2)
    anchors = np.array(DEFAULT_ANCHORS, dtype=np.float64).reshape(-1, 2)
    rng = np.random.default_rng(1)
    wh = anchors[rng.integers(0, 9, 300)] * rng.uniform(0.7, 1.4, (300, 1))
    before = model.detect.anchors.clone()
    res = check_anchors(model, wh, print_fn=None)
    assert not res["replaced"] and res["bpr"] == 1.0
    assert torch.equal(model.detect.anchors, before)


def _dota8_long_short(root: Path, size: int = 1024) -> np.ndarray:
    """(long, short) sides of the dota8 YOLO-OBB polygons at the native 1024 px tile size."""
    out = []
    for f in sorted((root / "dota8" / "labels").glob("*/*.txt")):
        a = np.loadtxt(f, ndmin=2)
        if a.size:
            out.append(a[:, 1:9].reshape(-1, 4, 2) * size)
    p = np.concatenate(out)
    e1 = np.linalg.norm(p[:, 1] - p[:, 0], axis=1)
    e2 = np.linalg.norm(p[:, 2] - p[:, 1], axis=1)
    return np.stack([np.maximum(e1, e2), np.minimum(e1, e2)], 1)


def test_default_anchors_fit_real_dota(shared_data):
    wh = _dota8_long_short(shared_data)
    assert len(wh) > 100
    bpr, aat = anchor_metrics(wh, DEFAULT_ANCHORS)
    assert bpr > 0.98 and aat > 3
