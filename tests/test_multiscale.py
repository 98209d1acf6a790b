"""Multi-scale (``rates``) and flip inference: the exact flip mapping, windows per rate, the merge over
rates and flips, and the options of `detect` and `val --full-images`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from obbslim import ops
from obbslim.data.augment import letterbox_polys
from obbslim.data.split import clip_objects, scaled_size, tile_windows
from obbslim.errors import ObbslimError
from obbslim.inference.detector import Detector


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def hand_flip(polys: np.ndarray, width: float | None = None, height: float | None = None) -> np.ndarray:
    """Polygons mirrored with their image, by hand: x -> width - x, y -> height - y."""
    p = np.array(polys, np.float64, copy=True)
    if width is not None:
        p[:, 0::2] = width - p[:, 0::2]
    if height is not None:
        p[:, 1::2] = height - p[:, 1::2]
    return p


def assert_same_rboxes(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    """Same rectangles in the convention (theta compared modulo pi, where -pi/2 and pi/2 meet)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 5), np.asarray(b, np.float64).reshape(-1, 5)
    assert a.shape == b.shape
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=atol)
    d = np.remainder(a[:, 4] - b[:, 4] + math.pi / 2, math.pi) - math.pi / 2
    np.testing.assert_allclose(d, 0, atol=atol)


# ----------------------------------------------------------------------------- ops.flip_rboxes


def test_flip_rboxes_hand_computed():
    r = np.array([[10.0, 20.0, 8.0, 2.0, 0.3], [5.0, 6.0, 4.0, 4.0, 0.0], [50, 1, 9, 3, -math.pi / 2]])
    np.testing.assert_allclose(ops.flip_rboxes(r, width=100)[0], [90, 20, 8, 2, -0.3])
    np.testing.assert_allclose(ops.flip_rboxes(r, height=50)[0], [10, 30, 8, 2, -0.3])
    np.testing.assert_allclose(ops.flip_rboxes(r, width=100, height=50)[0], [90, 30, 8, 2, 0.3])
    # a vertical box stays at -pi/2 (pi/2 is outside the convention), a square keeps theta 0
    np.testing.assert_allclose(ops.flip_rboxes(r, width=100)[2], [50, 1, 9, 3, -math.pi / 2])
    np.testing.assert_allclose(ops.flip_rboxes(r, height=50)[1], [5, 44, 4, 4, 0], atol=1e-12)
    # torch in, torch out (dtype kept), the input untouched
    t = torch.tensor(r, dtype=torch.float32)
    out = ops.flip_rboxes(t, width=100)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and t[0, 0] == 10
    # mirroring twice gives the box back
    assert_same_rboxes(ops.flip_rboxes(ops.flip_rboxes(r, width=100), width=100), r, 1e-12)


def test_flip_rboxes_match_polygons_flipped_by_hand():
    """Random boxes (any angle, both sides, near-vertical and near-horizontal): flip_rboxes agrees with
    poly2rbox of the corner polygons mirrored by hand, within float error, in the convention."""
    rng = np.random.default_rng(0)
    n = 500
    r = np.c_[rng.uniform(0, 1000, (n, 2)), rng.uniform(1, 200, (n, 2)), rng.uniform(-4, 4, n)]
    h = math.pi / 2
    r[:8, 4] = [-h, h, 0, 1e-9, -1e-9, h - 1e-9, -h + 1e-9, h / 2]
    r = ops.norm_rbox(r)
    polys = ops.rbox2poly(r)
    for kw in (dict(width=1000), dict(height=700), dict(width=1000, height=700)):
        got = ops.flip_rboxes(r, **kw)
        assert (got[:, 2] >= got[:, 3]).all()
        assert (got[:, 4] >= -math.pi / 2).all() and (got[:, 4] < math.pi / 2).all()
        assert_same_rboxes(got, ops.poly2rbox(hand_flip(polys, **kw)), 1e-9)
        # the corners themselves: the same rectangle (IoU 1)
        iou = ops.poly_iou(ops.rbox2poly(got), hand_flip(polys, **kw), aligned=True)
        np.testing.assert_allclose(iou, 1.0, atol=1e-6)


# ----------------------------------------------------------------------------- a network that sees pixels


def moment_net(x: torch.Tensor) -> torch.Tensor:
    """Finds each bright blob of its input: centre and axes from its pixel moments (pixel ``i`` covers
    ``[i, i + 1)``), score from its mean brightness. It looks at pixels only, so a mirrored input gives
    mirrored boxes: what the Detector maps back must equal the unmirrored answer."""
    outs = []
    for img in x.float().cpu().numpy():
        grey = img.mean(0)
        n, lab = cv2.connectedComponents((grey > 0.6).astype(np.uint8))
        rows = []
        for k in range(1, n):
            ys, xs = np.nonzero(lab == k)
            if len(xs) < 4:
                continue
            px, py = xs + 0.5, ys + 0.5
            cov = np.cov(np.stack([px, py]), bias=True) + np.eye(2) / 12  # + a pixel's own extent
            vals, vecs = np.linalg.eigh(cov)
            t = math.atan2(vecs[1, 1], vecs[0, 1])
            rows.append([px.mean(), py.mean(), math.sqrt(12 * vals[1]), math.sqrt(12 * vals[0]), t,
                         float(grey[ys, xs].mean()), 1.0])  # fmt: skip
        outs.append(torch.tensor(rows, dtype=torch.float64).reshape(-1, 7))
    n = max([len(o) for o in outs] + [1])
    out = torch.zeros(len(outs), n, 7, dtype=torch.float64)
    for b, o in enumerate(outs):
        out[b, : len(o)] = o
    return out


class Spy(Detector):
    """Keeps every window's boxes as mapped back to window pixels (before the merge)."""

    def postprocess(self, decoded, wins):
        res = super().postprocess(decoded, wins)
        self.seen += [(w.rate, w.left, w.top, w.flip, r) for w, r in zip(wins, res)]
        return res

    def reset_times(self):
        super().reset_times()
        self.seen = []


def scene(shape=(100, 150)) -> np.ndarray:
    img = np.zeros((*shape, 3), np.uint8)
    for cx, cy, w, h, t in ((40, 30, 40, 12, 0.4), (100, 60, 50, 18, -1.1), (120, 20, 20, 8, 1.5)):
        quad = ops.rbox2poly(np.array([[cx, cy, w, h, t]]))[0].reshape(4, 2)
        cv2.fillPoly(img, [np.round(quad * 16).astype(np.int32)], (255, 255, 255), cv2.LINE_AA, shift=4)
    return img


def test_flip_boxes_map_back_exactly():
    """Each window's mirrored inputs give, once mapped back, the boxes of the unmirrored input (float
    error only: a 1 px slip, x -> w - 1 - x, fails by far); the image is letterboxed (150x100 -> 64 px,
    padded above and below), so the mirror acts on the padded input."""
    det = Spy(moment_net, names=["a"], device="cpu", imgsz=64, tile=200, conf=0.1, flip=True)
    d = det.predict(scene())
    assert d.windows == 3 and d.per_rate == {1.0: 1} and not d.tiled
    by_flip = {f: r for _, _, _, f, r in det.seen}
    assert set(by_flip) == {"", "lr", "ud"} and len(by_flip[""][0]) == 3
    order = np.argsort(by_flip[""][0][:, 0])
    for f in ("lr", "ud"):
        rb = by_flip[f][0]
        assert len(rb) == 3
        assert_same_rboxes(rb[np.argsort(rb[:, 0])], by_flip[""][0][order], 1e-4)
        np.testing.assert_allclose(np.sort(by_flip[f][1]), np.sort(by_flip[""][1]), atol=1e-6)
    # merged: each blob once, where the unmirrored input put it
    assert len(d) == 3
    assert_same_rboxes(d.rboxes[np.argsort(d.rboxes[:, 0])], by_flip[""][0][order], 1e-4)
    # the image mirrored by hand, predicted without --flip, its polygons mirrored back by hand:
    # the same boxes again (left-right: no horizontal padding, the input is the exact mirror)
    plain = Detector(moment_net, names=["a"], device="cpu", imgsz=64, tile=200, conf=0.1)
    m = plain.predict(np.ascontiguousarray(scene()[:, ::-1]))
    back = ops.poly2rbox(hand_flip(m.polys, width=150))
    assert_same_rboxes(back[np.argsort(back[:, 0])], by_flip[""][0][order], 1e-4)


def test_rates_resize_tile_and_map_back():
    """Rates 0.5, 1 and 1.5 on a 150x100 image: the windows of each rate are those of the resized image
    (64 px tiles); with 256 px tiles (one padded window per rate) each rate finds the three blobs, and
    its boxes, divided by the rate, land on them in original pixels."""
    img = scene()
    rates = (0.5, 1.0, 1.5)
    det = Detector(moment_net, names=["a"], device="cpu", imgsz=64, gap=16, conf=0.1, rates=rates)
    d = det.predict(img)
    want = {r: len(tile_windows(*scaled_size(150, 100, r), 64, 16)) for r in rates}
    assert want == {0.5: 2, 1.0: 6, 1.5: 15}
    assert d.per_rate == want and d.windows == sum(want.values()) and d.tiled
    assert det.rate_windows == want and det.n_windows == d.windows
    # at 0.5 the image (75x50) is smaller than the tile: padded to the tile, not enlarged
    assert [w.size for w in det.windows(img.shape, 0, 0.5)] == [64, 64]
    assert [w.size for w in det.windows((50, 60), 0, 0.5)] == [64]
    single = Detector(moment_net, names=["a"], device="cpu", imgsz=64)
    assert [w.size for w in single.windows((50, 60))] == [0]  # one rate, 1.0: letterboxed as always

    ref = Detector(moment_net, names=["a"], device="cpu", imgsz=150, conf=0.1).predict(img)
    ref = ref.rboxes[np.argsort(ref.rboxes[:, 0])]
    spy = Spy(moment_net, names=["a"], device="cpu", imgsz=256, conf=0.1, rates=rates)
    d = spy.predict(img)
    assert d.per_rate == {0.5: 1, 1.0: 1, 1.5: 1} and not d.tiled
    for rate, left, top, _, (rb, _, _) in spy.seen:
        assert (left, top) == (0, 0) and len(rb) == 3
        assert spy.windows(img.shape, 0, rate)[0].size == 256  # padded: the input is the rate's size
        back = rb[np.argsort(rb[:, 0])] / [rate, rate, rate, rate, 1]
        np.testing.assert_allclose(back[:, :2], ref[:, :2], atol=0.5)  # the centres, within resampling
        np.testing.assert_allclose(back[:, 2:4], ref[:, 2:4], rtol=0.1)  # a 10x4 px blob at 0.5: rough
    assert len(d) == 3  # merged over the rates: each blob once


def test_one_window_at_another_rate_comes_back_to_image_pixels():
    """--rates 0.5 alone on an image that fits one tile at 0.5: nothing to merge, but the boxes still
    go back to original pixels (divided by the rate)."""
    img = scene()
    ref = Detector(moment_net, names=["a"], device="cpu", imgsz=150, conf=0.1).predict(img)
    d = Detector(moment_net, names=["a"], device="cpu", imgsz=128, conf=0.1, rates=0.5).predict(img)
    assert d.per_rate == {0.5: 1} and d.windows == 1 and len(d) == len(ref) == 3
    got, want = d.rboxes[np.argsort(d.rboxes[:, 0])], ref.rboxes[np.argsort(ref.rboxes[:, 0])]
    np.testing.assert_allclose(got[:, :2], want[:, :2], atol=0.5)


def test_bad_rates():
    for bad in ((), (0.0,), (-1.0, 1.0), ("x",), (float("nan"),)):
        with pytest.raises(ObbslimError, match="rates"):
            Detector(moment_net, names=["a"], device="cpu", imgsz=64, rates=bad)
    det = Detector(moment_net, names=["a"], device="cpu", imgsz=64, rates=[1, 0.5, 1.0])
    assert det.rates == (1.0, 0.5)
    assert Detector(moment_net, names=["a"], device="cpu", rates=0.5).rates == (0.5,)


# ----------------------------------------------------------------------------- fusing the views of a window


def test_fuse_views_hand_computed():
    """Three views: an object all see (scores 0.9, 0.6, 0.3; boxes a pixel apart), one only the first
    sees (0.6). Fused: the object at the mean score 0.6, its box the score-weighted mean; the lone box
    at a third of its score. Theta is averaged on the doubled angle: -pi/2 + 0.02 and pi/2 - 0.02 are
    0.04 apart, not pi."""
    from obbslim.inference.tta import fuse_views

    h = math.pi / 2
    obj = [[100.0, 50, 40, 10, h - 0.02], [101, 50, 40, 10, -h + 0.02], [100, 51, 42, 10, h - 0.02]]
    views = [
        (np.array([obj[0], [300, 300, 20, 8, 0.5]]), np.array([0.9, 0.6]), np.array([0, 0])),
        (np.array([obj[1]]), np.array([0.6]), np.array([0])),
        (np.array([obj[2]]), np.array([0.3]), np.array([0])),
    ]
    rb, sc, cl = fuse_views(views, iou_thr=0.4, max_det=10)
    np.testing.assert_allclose(sc, [0.6, 0.2])
    w = np.array([0.9, 0.6, 0.3]) / 1.8
    np.testing.assert_allclose(rb[0, :4], w @ np.array(obj)[:, :4])
    t = (rb[0, 4] + h) % math.pi - h  # the fused angle, next to +-pi/2
    assert abs(abs(t) - h) < 0.03 and (cl == 0).all()
    np.testing.assert_allclose(rb[1], [300, 300, 20, 8, 0.5])
    # another class never joins; no views at all, or empty views: empty arrays
    views[1] = (np.array([obj[1]]), np.array([0.6]), np.array([1]))
    rb2, sc2, cl2 = fuse_views(views, iou_thr=0.4, max_det=10)
    assert sorted(zip(cl2.tolist(), np.round(sc2, 6).tolist())) == [(0, 0.2), (0, 0.4), (1, 0.2)]
    e = fuse_views([(np.zeros((0, 5)), np.zeros(0), np.zeros(0, np.int64))] * 3, 0.4, 10)
    assert e[0].shape == (0, 5) and len(e[1]) == len(e[2]) == 0


def test_cluster_owners_match_brute_force():
    """The grid sweep and the cheap bounds never lose a pair: every box's owner (the kept box of its
    class with the highest IoU above 0.5) is the one all exact IoUs give, on crowded random scenes with
    sizes from 2 to 300 px."""
    from obbslim.inference.tta import _inter_bound, _owners

    rng = np.random.default_rng(1)
    for n in (50, 600):
        base = np.c_[rng.uniform(0, 1000, (n, 2)), np.exp(rng.uniform(np.log(2), np.log(300), (n, 2))),
                     rng.uniform(-2, 2, n)]  # fmt: skip
        noise = [np.c_[rng.normal(0, 0.05, (n, 4)) * base[:, 2:3], rng.normal(0, 0.2, n)] for _ in range(3)]
        rb = np.concatenate([base + z for z in noise])
        rb[:, 2:4] = np.maximum(np.abs(rb[:, 2:4]), 0.5)
        rb = np.asarray(ops.norm_rbox(rb))
        sc = rng.uniform(0, 1, len(rb))
        cl = rng.integers(0, 3, len(rb))
        keep = np.asarray(ops.batched_nms_rotated(rb, sc, cl, 0.4))
        iou = np.asarray(ops.rbox_iou(rb[keep], rb)) * (cl[keep][:, None] == cl[None, :])
        want = np.where(iou.max(0) > 0.5, iou.argmax(0), -1)
        want[keep] = np.arange(len(keep))
        got = _owners(rb, cl, keep, 0.5)
        assert (got >= 0).sum() > len(keep)  # some boxes joined a cluster
        np.testing.assert_array_equal(got, want)
        # the intersection bound is an upper bound (exact for boxes at the same angle)
        a, b = rb[keep][:, None].repeat(5, 1).reshape(-1, 5), rb[rng.integers(0, len(rb), 5 * len(keep))]
        i = np.asarray(ops.rbox_iou(a, b, aligned=True))
        inter = i * (a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3]) / (1 + i)
        assert (_inter_bound(a, b) >= inter - 1e-6).all()


# ----------------------------------------------------------------------------- the truth over rates, flips


class RateFlipOracle(Detector):
    """Answers each window with the ground truth it shows: objects scaled by the window's rate, clipped
    to it, letterboxed and, for a mirrored input, mirrored by hand (score: the kept fraction)."""

    def __init__(self, gt, names, **kw):
        super().__init__(lambda x: None, names=names, device="cpu", **kw)
        self.gt = gt

    def predict_batch(self, sources):
        self._stems = [Path(s).stem for s in sources]
        return super().predict_batch(sources)

    def forward(self, x, wins):
        h_in, w_in = x.shape[2:]
        rows = []
        for w in wins:
            polys, cls = self.gt[self._stems[w.image]]
            polys = polys * w.rate
            if w.size:
                polys, keep = clip_objects(polys, (w.left, w.top, w.left + w.size, w.top + w.size))
                polys = polys - np.tile([w.left, w.top], 4)
            else:
                keep = np.ones(len(polys))
            sel = keep > 0
            p = letterbox_polys(polys[sel], w.ratio, w.pad).astype(np.float64)
            p = hand_flip(p, width=w_in) if w.flip == "lr" else hand_flip(p, height=h_in) if w.flip else p
            r = np.zeros((len(p), 6 + len(self.names)))
            r[:, :5] = ops.poly2rbox(p).reshape(-1, 5)
            r[:, 5] = keep[sel]
            r[np.arange(len(p)), 6 + cls[sel]] = 1.0
            rows.append(torch.from_numpy(r))
        n = max([len(r) for r in rows] + [1])
        out = torch.zeros(len(wins), n, 6 + len(self.names), dtype=torch.float64)
        for b, r in enumerate(rows):
            out[b, : len(r)] = r
        return out


def test_oracle_over_rates_and_flips_finds_each_object_once(shared_data):
    """A DOTA image (P0003, 1147x1023) at rates 0.5, 1 and 1.5 with flips (600 px tiles, 200 gap):
    every network input shows the true objects; after the one merge each object is found exactly once,
    at its place (IoU > 0.99 with its min-area rectangle)."""
    from obbslim.data.labeltxt import read_labeltxt

    lf = read_labeltxt(shared_data / "dota_demo" / "labelTxt" / "P0003.txt")
    names = sorted(set(lf.names))
    polys = np.asarray(lf.polys, np.float64)
    ok = ops.poly_area(polys) > 1  # drop slivers no box can match
    polys, cls = polys[ok], np.array([names.index(n) for n, k in zip(lf.names, ok) if k], np.int64)
    det = RateFlipOracle({"P0003": (polys, cls)}, names, imgsz=300, tile=600, gap=200, conf=0.5,
                         rates=(0.5, 1.0, 1.5), flip=True, batch=16)  # fmt: skip
    d = det.predict(shared_data / "dota_demo" / "images" / "P0003.png")
    want = {r: len(tile_windows(*scaled_size(1147, 1023, r), 600, 200)) for r in (0.5, 1.0, 1.5)}
    assert d.per_rate == want and d.windows == 3 * sum(want.values())
    iou = ops.poly_iou(ops.rbox2poly(ops.poly2rbox(polys)), d.polys)
    same = cls[:, None] == d.cls[None, :]
    assert (((iou > 0.5) & same).sum(1) == 1).all() and len(d) == len(polys)
    assert (np.where(same, iou, 0).max(1) > 0.99).all()


# ----------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """An untrained yolov5n-obb at width 0.125, 5 classes: the plumbing, not the mAP."""
    from obbslim.data.synth import CLASSES
    from obbslim.model import build, load_spec, save

    torch.manual_seed(0)
    spec = load_spec("yolov5n-obb")
    spec["width_multiple"] = 0.125
    path = tmp_path_factory.mktemp("w") / "tiny.pt"
    save(build(spec, nc=len(CLASSES), names=list(CLASSES)), path)
    return path


def test_real_model_flip_is_the_mirrored_image_mapped_back(tiny_ckpt):
    """A real (untrained) model on a 64 px image (no letterbox padding): the left-right input of --flip
    gives what the image mirrored by hand gives, its boxes mirrored back by hand."""
    from obbslim.data.synth import render_image

    img = render_image(0, 0, 64)[0]
    spy = Spy(tiny_ckpt, device="cpu", imgsz=64, conf=0.001, iou=0.99, flip=True)
    spy.predict(img)
    lr = next(r for *_, f, r in spy.seen if f == "lr")
    plain = Detector(tiny_ckpt, device="cpu", imgsz=64, conf=0.001, iou=0.99)
    m = plain.predict(np.ascontiguousarray(img[:, ::-1]))
    assert len(m) == len(lr[0]) > 5
    back = ops.poly2rbox(hand_flip(m.polys, width=64))
    o1, o2 = np.lexsort((-m.scores, m.cls)), np.lexsort((-lr[1], lr[2]))
    np.testing.assert_allclose(m.scores[o1], lr[1][o2], atol=1e-5)
    assert_same_rboxes(back[o1], lr[0][o2], 1e-3)


def test_cli_detect_and_val_with_rates_and_flip(tiny_ckpt, tmp_path, capsys):
    from obbslim.cli import main
    from obbslim.data.labeltxt import read_task1, write_labeltxt
    from obbslim.data.synth import render_image

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labelTxt").mkdir()
    for k in range(2):
        im, objs = render_image(0, k, 128)
        cv2.imwrite(str(src / "images" / f"im{k}.png"), im)
        polys = np.array([o.label for o in objs], np.float64).reshape(-1, 8)
        write_labeltxt(src / "labelTxt" / f"im{k}.txt", polys, [o.name for o in objs])
    rc = main(["detect", "--weights", str(tiny_ckpt), "--source", str(src / "images"), "--imgsz", "64",
               "--device", "cpu", "--conf", "0.01", "--rates", "0.5", "1.0", "--flip", "--save-dota",
               str(tmp_path / "task1"), "--project", str(tmp_path / "runs"), "--name", "d"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    # 128 px at 0.5: one window; at 1.0 with 64 px tiles and the default gap 12: 3 x 3
    assert "Windows per rate: rate 0.5: 2, rate 1: 18 (20 in all, 10.0 per image, x3 with --flip: 60" in out
    assert "2 images (2 tiled, 60 windows)" in out
    for f in (tmp_path / "task1").glob("Task1_*.txt"):
        ids, scores, polys = read_task1(f)
        assert set(ids) <= {"im0", "im1"} and polys.shape[1:] == (8,)
    js = tmp_path / "v.json"
    rc = main(["val", "--weights", str(tiny_ckpt), "--full-images", str(src), "--imgsz", "64", "--device",
               "cpu", "--rates", "0.5", "1", "--flip", "--json", str(js), "--project", str(tmp_path / "runs"),
               "--name", "v", "--noplots"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "Windows per rate: rate 0.5: 2, rate 1: 18" in out and 0 <= json.loads(js.read_text())["mAP"] <= 1
    for rates, line in ((["0.5"], "Windows per rate: rate 0.5: 2 (2 in all, 1.0 per image)"), ([], None)):
        assert main(["detect", "--weights", str(tiny_ckpt), "--source", str(src / "images"), "--imgsz", "64",
                     "--device", "cpu", "--conf", "0.01", *(["--rates", *rates] if rates else [])]) == 0
        out = capsys.readouterr().out
        assert (line in out) if line else ("Windows per rate" not in out and "2 images (2 tiled" in out)
    assert main(["detect", "--weights", str(tiny_ckpt), "--source", str(src / "images"), "--device", "cpu",
                 "--rates", "0", "1"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "rates must be positive" in err and len(err.strip().splitlines()) == 1
