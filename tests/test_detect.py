"""The Detector and `obbslim detect`: tiling, batching, merging, Task1 output and errors.

The ground-truth oracle is a Detector whose network call is replaced by one that answers from the
labels of the window it is shown; everything else (windows, letterbox, postprocess, un-letterbox,
merge, Task1 writing, evaluation) is the real pipeline, so perfect predictions must score mAP 1.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from obbslim import ops
from obbslim.data.augment import letterbox_polys
from obbslim.data.split import clip_objects, tile_windows
from obbslim.errors import InputError, ObbslimError
from obbslim.inference.detector import Detections, Detector


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine more threads make a step ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class GTOracle(Detector):
    """Answers each window with the ground-truth objects that overlap it, clipped to it (score = the
    kept fraction of the object, so whole objects outrank pieces), in network-input pixels."""

    def __init__(self, gt: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str], **kw):
        def no_network(x):  # never called: forward is overridden
            raise AssertionError

        super().__init__(no_network, names=names, device="cpu", **kw)
        self.gt = gt  # image stem -> (polys [n, 8] image pixels, cls [n])
        self.calls = 0

    def predict_batch(self, sources):
        self._stems = [Path(s).stem for s in sources]
        return super().predict_batch(sources)

    def forward(self, x, wins):
        self.calls += 1
        rows = []
        for w in wins:
            polys, cls = self.gt[self._stems[w.image]]
            if w.size:
                rect = (w.left, w.top, w.left + w.size, w.top + w.size)
                polys, keep = clip_objects(polys, rect)
                polys = polys - np.tile([w.left, w.top], 4)
            else:
                keep = np.ones(len(polys))
            sel = keep > 0
            p = letterbox_polys(polys[sel], w.ratio, w.pad).astype(np.float64)
            r = np.zeros((len(p), 6 + len(self.names)))
            r[:, :5] = ops.poly2rbox(p).reshape(-1, 5)
            r[:, 5] = keep[sel]
            r[np.arange(len(p)), 6 + cls[sel]] = 1.0
            rows.append(r)
        n = max([len(r) for r in rows] + [1])
        out = torch.zeros(len(wins), n, 6 + len(self.names))
        for b, r in enumerate(rows):
            out[b, : len(r)] = torch.from_numpy(r)
        return out


def dota_demo_gt(root: Path) -> tuple[dict, list[str]]:
    from obbslim.data.labeltxt import read_labeltxt

    labels = {p.stem: read_labeltxt(p) for p in sorted((root / "labelTxt").glob("*.txt"))}
    names = sorted({n for lf in labels.values() for n in lf.names})
    gt = {s: (lf.polys, np.array([names.index(n) for n in lf.names], np.int64)) for s, lf in labels.items()}
    return gt, names


def shoelace(polys: np.ndarray) -> np.ndarray:
    x, y = polys[:, 0::2], polys[:, 1::2]
    return 0.5 * np.abs((x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y).sum(1))


def without_degenerate(root: Path, dst: Path) -> Path:
    """dota_demo with its zero-area labels dropped (P1478 has two: 1-pixel-wide slivers left by an
    earlier split, which no box can overlap); images are linked, not copied."""
    from obbslim.data.labeltxt import read_labeltxt, write_labeltxt

    (dst / "images").mkdir(parents=True)
    (dst / "labelTxt").mkdir()
    for im in (root / "images").iterdir():
        (dst / "images" / im.name).symlink_to(im)
    for p in (root / "labelTxt").glob("*.txt"):
        lf = read_labeltxt(p)
        ok = shoelace(lf.polys) > 0
        write_labeltxt(dst / "labelTxt" / p.name, lf.polys[ok], [n for n, k in zip(lf.names, ok) if k],
                       lf.difficult[ok])
    return dst


def test_oracle_on_dota_demo_full_images_scores_one(shared_data, tmp_path):
    """Large images tiled (1024 tiles, 200 gap, each letterboxed to 512), merged, written as Task1,
    scored with evaluate_dota against the original labelTxt: mAP 1 (VOC07 and VOC12)."""
    from obbslim.data.labeltxt import read_labeltxt
    from obbslim.eval.val import val

    root = without_degenerate(shared_data / "dota_demo", tmp_path / "src")
    gt, names = dota_demo_gt(root)
    oracle = GTOracle(gt, names, imgsz=512, tile=1024, gap=200, conf=0.25, batch=3)
    r = val(None, full_images=root, detector=oracle, project=tmp_path, name="v", plots=False,
            verbose=False, progress=False)
    assert r["mAP50"] == pytest.approx(1.0) and r["mAP50_voc12"] == pytest.approx(1.0)
    assert r["mAP50_95"] > 0.8  # min-area rectangles of the labelled quads are not the quads
    assert r["precision"] == pytest.approx(1.0) and r["recall"] == pytest.approx(1.0)
    n_easy = sum(int((read_labeltxt(p).difficult == 0).sum()) for p in (root / "labelTxt").glob("*.txt"))
    assert r["rows"]["all"]["n_gt"] == n_easy and r["n_images"] == 4
    # the two images larger than a tile were tiled (P0003 1147x1023 -> 2, P0004 824x1464 -> 2 windows)
    assert oracle.n_windows == 2 + 2 + 1 + 1 and oracle.calls == 4  # batch 3: one image per call
    # the Task1 files are what `obbslim evaluate` reads: the same score from the files
    from obbslim.eval import evaluate_dota

    assert evaluate_dota(r["task1_dir"], root / "labelTxt")["mAP"] == pytest.approx(1.0)
    # on the untouched labels (same images, same objects but the slivers) everything is found too
    orig = evaluate_dota(r["task1_dir"], shared_data / "dota_demo" / "labelTxt")
    assert orig["n_tp"] == orig["n_gt"] and orig["per_class"]["large-vehicle"] == pytest.approx(1.0)


def test_oracle_merge_removes_tile_duplicates(shared_data):
    """P0003 in 600 px tiles (3 x 3 windows, overlaps >= 200 px): each object is found once after merging."""
    root = shared_data / "dota_demo"
    gt, names = dota_demo_gt(root)
    oracle = GTOracle(gt, names, imgsz=300, tile=600, gap=200, conf=0.5)
    d = oracle.predict(root / "images" / "P0003.png")
    assert d.windows == 9 and d.shape == (1023, 1147)
    polys, cls = gt["P0003"]
    # each ground-truth object is matched by exactly one detection of its class (IoU > 0.5)
    iou = ops.poly_iou(polys, d.polys)
    same = cls[:, None] == d.cls[None, :]
    hits = ((iou > 0.5) & same).sum(1)
    assert (hits == 1).all()
    assert len(d) == len(polys)


def test_oracle_on_dota8_detect_task1_round_trip(shared_data, tmp_path):
    """dota8 1024 tiles (YOLO-OBB labels) through `detect` (letterboxed 1024 -> 256, one window each)
    with --save-dota/--save-txt: Task1 files read back equal the detections; evaluate_dota scores 1."""
    from obbslim.data.labels import load_data_yaml, load_split
    from obbslim.data.labeltxt import read_task1, write_labeltxt
    from obbslim.data.merge import read_tile_detections
    from obbslim.inference.detect import detect

    data = load_data_yaml(shared_data / "dota8" / "dota8.yaml")
    samples, _ = load_split(data, "val", cache=False, verbose=False)
    names = [n.replace(" ", "-") for n in data["names"]]
    gt = {Path(s.im_file).stem: (np.asarray(s.polys, np.float64), s.cls) for s in samples}
    ann = tmp_path / "ann"
    ann.mkdir()
    for s in samples:
        write_labeltxt(ann / f"{Path(s.im_file).stem}.txt", s.polys, [names[c] for c in s.cls])
    oracle = GTOracle(gt, names, imgsz=256, tile=1024, conf=0.25)
    out = detect(None, [s.im_file for s in samples], detector=oracle, save_txt=True,
                 save_dota=tmp_path / "task1", project=tmp_path / "runs", name="exp", progress=False,
                 verbose=False)
    assert out["n_images"] == 4 and out["n_tiled"] == 0
    assert out["n_det"] == sum(len(g[1]) for g in gt.values())
    from obbslim.eval import evaluate_dota

    res = evaluate_dota(tmp_path / "task1", ann)
    assert res["mAP"] == pytest.approx(1.0)
    # Task1 round trip: same detections (image, class, score, polygon) as the Detections
    back = {}
    for f in sorted((tmp_path / "task1").glob("Task1_*.txt")):
        for i, s, p in zip(*read_task1(f)):
            back.setdefault(i, []).append((f.stem[6:], s, p))
    assert {f.stem for f in (tmp_path / "task1").glob("*.txt")} == {f"Task1_{n}" for n in names}
    txt = read_tile_detections(Path(out["run_dir"]) / "labels")
    for f, d in out["results"]:
        stem = Path(f).stem
        got = sorted(back[stem], key=lambda t: (-t[1], t[0]))
        want = sorted(zip(d.labels, d.scores, d.polys), key=lambda t: (-t[1], t[0]))
        assert [g[0] for g in got] == [w[0] for w in want]
        np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=1e-6)
        np.testing.assert_allclose(np.array([g[2] for g in got]), np.array([w[2] for w in want]), atol=0.01)
        # per-image labels/<stem>.txt: same polygons and classes
        tp, ts, tn = txt[stem]
        assert sorted(tn.tolist()) == sorted(d.labels)
        np.testing.assert_allclose(np.sort(tp.ravel()), np.sort(d.polys.ravel()), atol=0.006)


# ----------------------------------------------------------------------------- a real (tiny) model

SIZE = 96
OBJECTS = [  # (cls, cx, cy, long, short, theta) in SIZE pixels
    [(0, 26, 27, 33, 9, 0.3), (1, 66, 30, 27, 14, -0.9), (0, 45, 72, 38, 11, 1.3)],
    [(1, 30, 63, 30, 15, -1.45), (0, 69, 66, 35, 9, -0.35), (1, 23, 23, 23, 11, 0.75)],
]
COLOURS = [(40, 40, 230), (60, 210, 60)]


def draw(objs, shape=(SIZE, SIZE), offset=(0, 0)):
    im = np.full((*shape, 3), 90, np.uint8)
    rbs = []
    for c, cx, cy, w, h, t in objs:
        rb = np.array([[cx + offset[0], cy + offset[1], w, h, t]], np.float64)
        quad = ops.rbox2poly(rb)[0].reshape(4, 2)
        cv2.fillPoly(im, [np.round(quad).astype(np.int32)], COLOURS[c])
        rbs.append((c, rb[0]))
    return im, rbs


@pytest.fixture(scope="module")
def tiny_trained(tmp_path_factory, one_thread) -> Path:
    """yolov5n-obb at width 0.125 overfit on two 96 px images of rotated rectangles (~10 s)."""
    from obbslim.cfg import load_hyp
    from obbslim.engine.loss import OBBLoss, scale_gains
    from obbslim.model import build, load_spec, save

    torch.manual_seed(0)
    imgs, targets = [], []
    for k, objs in enumerate(OBJECTS):
        im, rbs = draw(objs)
        imgs.append(torch.from_numpy(im[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255)
        targets += [[k, c, *rb] for c, rb in rbs]
    x, t = torch.stack(imgs), torch.tensor(targets, dtype=torch.float32)
    spec = load_spec("yolov5n-obb")
    spec["width_multiple"] = 0.125
    model = build(spec, nc=2, names=["red", "green"])
    # the loss pinned (YOLOv5's shared assignment, no angle overlap term): these weights test the inference
    # path, and must not change when the training recipe's defaults do
    hyp = load_hyp({"theta_iou": 0.0, "assign": "shared"})
    crit = OBBLoss(model, scale_gains(hyp, nl=3, nc=2, imgsz=SIZE))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        loss, _ = crit(model(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in model.modules():  # BN running stats = the exact statistics of the data
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model(x)
    path = tmp_path_factory.mktemp("w") / "tiny.pt"
    save(model.eval(), path)
    return path


def big_scene() -> tuple[np.ndarray, list]:
    """A 1500x1200 image: the two training images repeated on a 15 x 12 grid of 96 px cells (grey
    beyond 1440 x 1152), so that 96 px windows without overlap see exactly the training images."""
    img = np.full((1200, 1500, 3), 90, np.uint8)
    gts = []
    for gy in range(12):
        for gx in range(15):
            cell, rbs = draw(OBJECTS[(gx + gy) % 2])
            img[gy * SIZE : (gy + 1) * SIZE, gx * SIZE : (gx + 1) * SIZE] = cell
            gts += [(c, rb + [gx * SIZE, gy * SIZE, 0, 0, 0]) for c, rb in rbs]
    return img, gts


def test_tiny_trained_model_detects_on_a_large_image(tiny_trained, tmp_path):
    """The model sees its training images as tiles of a large image: the tile offsets must put the
    detections back on the right objects (a wrong offset gives mAP 0)."""
    from obbslim.eval import evaluate_images
    from obbslim.inference.detect import detect

    img, gts = big_scene()
    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), img)
    det = Detector(tiny_trained, device="cpu", imgsz=SIZE, gap=0, conf=0.25, batch=32)
    d = det.predict(path)
    assert d.windows == len(tile_windows(1500, 1200, SIZE, 0)) == 16 * 13
    assert len(d) > 0 and d.path == str(path) and d.shape == (1200, 1500)
    assert d.names == ["red", "green"] and d.rboxes.shape == (len(d), 5) and d.polys.shape == (len(d), 8)
    assert (d.rboxes[:, 2] >= d.rboxes[:, 3]).all() and (np.abs(d.rboxes[:, 4]) <= math.pi / 2).all()
    g_cls = np.array([c for c, _ in gts])
    g_polys = ops.rbox2poly(np.array([rb for _, rb in gts])).reshape(-1, 8)
    res = evaluate_images([(g_polys, g_cls, None)], [(d.polys, d.scores, d.cls)], ["red", "green"])
    assert res["mAP"] > 0.5, res["per_class"]  # 0.82 measured
    # the detect entry point on the same image: same detections, the drawn image saved
    out = detect(tiny_trained, path, imgsz=SIZE, gap=0, conf=0.25, device="cpu", batch=32, save_img=True,
                 project=tmp_path / "runs", progress=False, verbose=False)
    assert (Path(out["run_dir"]) / "scene.png").is_file()
    assert out["n_det"] == len(d) and out["n_tiled"] == 1 and out["n_windows"] == d.windows


def test_predict_batch_matches_single_and_arrays(tiny_trained):
    """Batching windows of several images, or passing arrays instead of paths, changes nothing."""
    imgs = [draw(OBJECTS[k % 2], (SIZE + 20 * k, SIZE + 8 * k), (4 * k, 3 * k))[0] for k in range(3)]
    det = Detector(tiny_trained, device="cpu", imgsz=SIZE, conf=0.1, batch=4)
    batch = det.predict_batch(imgs)
    for im, b in zip(imgs, batch):
        s = det.predict(im)
        assert isinstance(s, Detections) and len(s) == len(b) > 0 and s.path is None
        np.testing.assert_allclose(s.rboxes, b.rboxes, atol=1e-3)
        np.testing.assert_allclose(s.scores, b.scores, atol=1e-4)
    sp = det.speed()
    assert set(sp) == {"preprocess", "inference", "nms"} and all(v > 0 for v in sp.values())


def test_cpu_detector_runs_channels_last_with_the_same_detections(tiny_trained):
    """On the CPU a checkpoint runs in the channels_last layout (faster there); the boxes are the
    contiguous model's to rounding."""
    img = draw(OBJECTS[0])[0]
    det = Detector(tiny_trained, device="cpu", imgsz=SIZE, conf=0.1)
    convs = [m.weight for m in det.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    got = det.predict(img)
    det.model.to(memory_format=torch.contiguous_format)
    assert not convs[0].is_contiguous(memory_format=torch.channels_last)
    want = det.predict(img)
    assert len(got) == len(want) > 0
    np.testing.assert_allclose(got.rboxes, want.rboxes, atol=1e-3)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)


def test_windows_and_letterbox_back_to_image_pixels():
    """A fake network answering one box at a known place of the network input: the Detector maps it
    back through the letterbox (and the tile offset) to the expected image pixels."""

    def net(x):  # one box at (40, 30) in network pixels, 20x10, theta 0.25
        out = torch.zeros(x.shape[0], 1, 7)
        out[:, 0, :5] = torch.tensor([40.0, 30.0, 20.0, 10.0, 0.25])
        out[:, 0, 5] = 0.9
        out[:, 0, 6] = 1.0
        return out

    det = Detector(net, names=["a"], device="cpu", imgsz=64, tile=128, gap=32)
    small = det.predict(np.zeros((32, 48, 3), np.uint8))  # 48x32 -> 64x43, padded 10 rows on top
    gx, gy = 64 / 48, 43 / 32
    expect = [40 / gx, (30 - 10) / gy, 20 / ((gx + gy) / 2), 10 / ((gx + gy) / 2), 0.25]
    np.testing.assert_allclose(small.rboxes[0], expect, rtol=1e-5)
    assert small.windows == 1 and small.scores[0] == pytest.approx(0.9) and small.shape == (32, 48)
    # 200x100 image: two 128 tiles at x = 0 and 72 (flush with the border), each halved to 64 px
    wide = det.predict(np.zeros((100, 200, 3), np.uint8))
    assert wide.windows == len(det.windows((100, 200))) == len(tile_windows(200, 100, 128, 32)) == 2
    np.testing.assert_allclose(sorted(wide.rboxes[:, 0]), [80.0, 72 + 80.0], rtol=1e-5)
    np.testing.assert_allclose(wide.rboxes[:, 1:], [[60.0, 40.0, 20.0, 0.25]] * 2, rtol=1e-5)
    assert wide.labels == ["a", "a"]
    # a network that finds nothing: empty arrays of the right shapes, tiled or not
    silent = Detector(lambda x: torch.zeros(x.shape[0], 5, 7), names=["a"], device="cpu", imgsz=64, gap=16)
    for shape in ((100, 200, 3), (30, 40, 3)):
        e = silent.predict(np.zeros(shape, np.uint8))
        assert len(e) == 0 and e.rboxes.shape == (0, 5) and e.polys.shape == (0, 8)
        assert e.cls.dtype == np.int64
    assert silent.predict_batch([]) == []


def test_default_gap_scales_with_the_tile_and_a_small_stride_warns():
    """The devkit's 200 px overlap belongs to 1024 px tiles: at 256 it would cut a 1147x1023 DOTA image
    into 255 windows (stride 56) instead of 30, each adding up to max_det boxes to the merge."""
    from obbslim.inference.detector import default_gap

    def net(x):
        return torch.zeros(x.shape[0], 1, 7)

    assert default_gap(1024) == 200 and default_gap(256) == 50 and default_gap(640) == 125
    det = Detector(net, names=["a"], device="cpu", imgsz=256)
    assert det.gap == 50 and len(det.windows((1023, 1147))) == 30
    assert Detector(net, names=["a"], device="cpu", imgsz=256, tile=512).gap == 100
    with pytest.warns(UserWarning, match="stride of 56 px"):
        many = Detector(net, names=["a"], device="cpu", imgsz=256, gap=200)
    assert len(many.windows((1023, 1147))) == 255


def test_theta_refine_option_uses_the_bins():
    """theta_refine reads the bin probabilities: a peak split between two bins gives their midpoint."""

    def net(x):
        out = torch.full((x.shape[0], 1, 7 + 180), 1e-4)
        out[:, 0, :5] = torch.tensor([32.0, 32.0, 20.0, 10.0, 0.0])
        out[:, 0, 5] = 0.9
        out[:, 0, 6] = 1.0
        out[:, 0, 7 + 100] = 0.9
        out[:, 0, 7 + 101] = 0.9
        return out

    img = np.zeros((64, 64, 3), np.uint8)
    plain = Detector(net, names=["a"], device="cpu", imgsz=64).predict(img)
    refined = Detector(net, names=["a"], device="cpu", imgsz=64, theta_refine=True).predict(img)
    assert plain.rboxes[0, 4] == pytest.approx(0.0)  # the decoded theta column is used as is
    assert refined.rboxes[0, 4] == pytest.approx(-math.pi / 2 + 100.5 * math.pi / 180, abs=1e-4)


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_give_clear_errors(tmp_path, tiny_trained, capsys):
    from obbslim.cli import main
    from obbslim.inference.detect import detect, list_sources

    bad_img = tmp_path / "broken.png"
    bad_img.write_bytes(b"not a png at all")
    det = Detector(tiny_trained, device="cpu", imgsz=64)
    with pytest.raises(InputError, match="broken.png"):
        det.predict(bad_img)
    with pytest.raises(InputError, match="missing.png"):
        det.predict(tmp_path / "missing.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images"):
        list_sources(empty)
    with pytest.raises(InputError, match="no images match"):
        list_sources(str(tmp_path / "*.jpg"))
    bad_w = tmp_path / "weights.pt"
    bad_w.write_bytes(b"garbage")
    with pytest.raises(ObbslimError, match="weights.pt"):
        detect(bad_w, bad_img, progress=False, verbose=False)
    with pytest.raises(ObbslimError, match="nowhere.pt"):
        Detector(tmp_path / "nowhere.pt")
    for argv, needle in (
        (["detect", "--weights", str(bad_w), "--source", str(bad_img)], "weights.pt"),
        (["detect", "--weights", str(tiny_trained), "--source", str(empty), "--device", "cpu"], "empty"),
        (["detect", "--weights", str(tiny_trained), "--source", str(bad_img), "--device", "cpu",
          "--imgsz", "64"], "broken.png"),
    ):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and err.startswith("obbslim detect: error:")


def test_cli_detect_writes_outputs(tiny_trained, tmp_path, capsys):
    from obbslim.cli import main

    for k in range(2):
        cv2.imwrite(str(tmp_path / f"im{k}.jpg"), draw(OBJECTS[k])[0])
    rc = main(["detect", "--weights", str(tiny_trained), "--source", str(tmp_path / "*.jpg"), "--imgsz", "96",
               "--device", "cpu", "--conf", "0.1", "--save-img", "--save-txt", "--save-dota",
               str(tmp_path / "dota"), "--project", str(tmp_path / "runs"), "--name", "e"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "2 images" in out and "Speed:" in out and "per image at shape (8, 3, 96, 96)" in out
    run = tmp_path / "runs" / "e"
    assert (run / "im0.jpg").is_file() and (run / "labels" / "im1.txt").is_file()
    assert sorted(p.name for p in (tmp_path / "dota").iterdir()) == ["Task1_green.txt", "Task1_red.txt"]
    lines = (tmp_path / "dota" / "Task1_red.txt").read_text().splitlines()
    assert lines and lines[0].split()[0] in ("im0", "im1") and len(lines[0].split()) == 10


def test_onnx_weights_give_the_same_detections(tiny_trained, tmp_path):
    """An .onnx export runs through the same Detector: same boxes as the .pt (a static export's size
    replaces imgsz); theta_refine is refused (the export drops the bin probabilities)."""
    pytest.importorskip("onnxruntime")
    from obbslim.deploy.export import export_onnx

    onnx_path = export_onnx(tiny_trained, imgsz=SIZE, out=tmp_path / "tiny.onnx", verbose=False)
    imgs = [draw(objs)[0] for objs in OBJECTS] + [big_scene()[0][:300, :250]]
    pt = Detector(tiny_trained, device="cpu", imgsz=SIZE, conf=0.25).predict_batch(imgs)
    ox = Detector(onnx_path, device="cpu", imgsz=1024, conf=0.25)
    assert ox.backend == "onnx" and ox.input_shape == (SIZE, SIZE) and ox.tile == SIZE
    for a, b in zip(pt, ox.predict_batch(imgs)):
        assert len(a) == len(b) > 0 and (a.cls == b.cls).all() and b.names == ["red", "green"]
        np.testing.assert_allclose(a.rboxes, b.rboxes, atol=0.05)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-3)
    with pytest.raises(ObbslimError, match="theta_refine"):
        Detector(onnx_path, device="cpu", theta_refine=True)


def test_no_merge_gives_the_plain_nms_boxes(tiny_trained, tmp_path):
    """`--no-merge` reaches the detector: the same detections as postprocess(merge=False) per window,
    while the default merges (some box moves, scores and count stay)."""
    from obbslim.cli import main

    img = draw(OBJECTS[0])[0]
    merged = Detector(tiny_trained, device="cpu", imgsz=SIZE, conf=0.01).predict(img)
    plain = Detector(tiny_trained, device="cpu", imgsz=SIZE, conf=0.01, merge=False).predict(img)
    assert len(merged) == len(plain) > 0
    np.testing.assert_array_equal(merged.scores, plain.scores)
    assert np.abs(merged.rboxes - plain.rboxes).max() > 1e-3
    cv2.imwrite(str(tmp_path / "im.png"), img)
    for flag, ref in (([], merged), (["--no-merge"], plain)):
        out = tmp_path / ("dota" + "".join(flag))
        args = ["--source", str(tmp_path / "im.png"), "--imgsz", str(SIZE), "--conf", "0.01"]
        args += ["--save-dota", str(out)]
        rc = main(["detect", "--weights", str(tiny_trained), "--device", "cpu", *args, *flag])
        assert rc == 0
        rows = [ln.split() for f in sorted(out.iterdir()) for ln in f.read_text().splitlines()]
        polys = np.array([[float(v) for v in r[2:]] for r in rows])
        assert len(polys) == len(ref)
        assert np.abs(np.sort(polys, 0) - np.sort(ref.polys, 0)).max() < 0.02
