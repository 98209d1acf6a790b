"""`obbslim val`: the per-class table, PR curves, stage timing, --json, the full-images protocol, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from obbslim import ops


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine more threads make a step ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from obbslim.data.synth import make_synthetic

    dst = tmp_path_factory.mktemp("s") / "ds"
    return Path(make_synthetic(dst, n_images=4, size=96, seed=0, val_frac=0.5))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """An untrained yolov5n-obb at width 0.125 for the 5 synthetic classes (the plumbing, not the mAP)."""
    from obbslim.data.synth import CLASSES
    from obbslim.model import build, load_spec, save

    torch.manual_seed(0)
    spec = load_spec("yolov5n-obb")
    spec["width_multiple"] = 0.125
    path = tmp_path_factory.mktemp("w") / "tiny.pt"
    save(build(spec, nc=len(CLASSES), names=list(CLASSES)), path)
    return path


def test_val_split_with_perfect_predictions(synth, tmp_path, capsys):
    """A model answering the letterboxed ground truth of each batch (the loader's order is fixed):
    every number of the table is 1, the JSON has evaluate's keys plus mAP50_95 and speed_ms."""
    from obbslim.data.dataset import build_dataloader
    from obbslim.data.labels import load_data_yaml, load_split
    from obbslim.eval.val import val

    data = load_data_yaml(synth)
    samples, _ = load_split(data, "val", verbose=False)
    loader = build_dataloader(samples, "val", 96, 2, augment=False, workers=0, stride=32)
    batches = [t for _, t, *_ in loader]
    nc = len(data["names"])

    class Oracle(nn.Module):
        stride = torch.tensor([8.0, 16.0, 32.0])

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))
            self.k = 0

        def forward(self, imgs):
            t = batches[self.k]
            self.k += 1
            out = torch.zeros(imgs.shape[0], 300, 6 + nc + 180)
            for b in range(imgs.shape[0]):
                tb = t[t[:, 0] == b]
                out[b, : len(tb), :5] = tb[:, 2:7]
                out[b, : len(tb), 5] = 1.0
                out[b, torch.arange(len(tb)), 6 + tb[:, 1].long()] = 1.0
            return out, None

    out_json = tmp_path / "m.json"
    r = val(Oracle(), synth, imgsz=96, batch=2, device="cpu", json_path=out_json, project=tmp_path, name="v",
            progress=False)
    printed = capsys.readouterr().out
    assert r["mAP50"] == pytest.approx(1.0) and r["mAP50_voc12"] == pytest.approx(1.0)
    assert r["mAP50_95"] == pytest.approx(1.0, abs=1e-6)
    for c, row in r["rows"].items():
        assert row["precision"] == pytest.approx(1.0) and row["recall"] == pytest.approx(1.0), c
        assert row["mAP50"] == pytest.approx(1.0) and row["mAP50_95"] == pytest.approx(1.0, abs=1e-6), c
    present = {data["names"][int(c)] for s in samples for c in s.cls}
    assert set(r["rows"]) == {"all"} | present
    js = json.loads(out_json.read_text())
    assert js["metric"] == "voc07" and js["mAP"] == pytest.approx(1.0)
    assert set(js["per_class"]) == present and js["mAP50_95"] == pytest.approx(1.0, abs=1e-6)
    assert set(js["speed_ms"]) == {"preprocess", "inference", "nms"}
    assert all(v >= 0 for v in js["speed_ms"].values()) and js["speed_ms"]["nms"] > 0
    assert js["n_gt"]["small-vehicle"] == sum(int((s.cls == 0).sum()) for s in samples)
    # the table (a row per class and 'all'), the speed line and the PR curve
    lines = printed.splitlines()
    head = ["class", "images", "labels", "dets", "P", "R", "mAP50", "mAP50", "mAP50-95"]
    assert lines[0].split() == head and lines[1].split() == ["(VOC07)", "(VOC12)", "(VOC12)"]
    assert lines[1].index("(VOC07)") + len("(VOC07)") == lines[0].index("mAP50") + len("mAP50")  # aligned
    assert lines[1].rstrip().endswith("(VOC12)") and len(lines[1].rstrip()) == len(lines[0])
    assert any(ln.split()[0] == "all" and ln.split()[1] == "2" for ln in lines[2:] if ln.strip())
    assert "Speed:" in printed and "per image at shape (2, 3, 96, 96)" in printed
    assert (tmp_path / "v" / "PR_curve.png").stat().st_size > 0


def test_metric_rows_hand_computed():
    """Class a: 2 objects, ranked TP, FP, TP -> VOC12 AP = 0.5 * 1 + 0.5 * 2/3, VOC07 (6 + 5 * 2/3) / 11;
    class b: 1 object found first -> AP 1. Exact matches: every IoU threshold counts the same."""
    from obbslim.eval import evaluate_images
    from obbslim.eval.metrics import IOU_THRS
    from obbslim.eval.val import metric_rows

    g = ops.rbox2poly(np.array([[20, 20, 10, 4, 0.1], [60, 60, 12, 6, -0.4], [30, 70, 8, 4, 1.0]]))
    g = g.reshape(-1, 8)
    far = ops.rbox2poly(np.array([[90, 10, 10, 4, 0.0]])).reshape(-1, 8)
    gts = [(g, np.array([0, 0, 1]), None)]
    ranked = np.concatenate([g[:1], far, g[1:2], g[2:]])
    dets = [(ranked, np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 0, 1]))]
    res07 = evaluate_images(gts, dets, ["a", "b"], "voc07", 0.5)
    res12 = evaluate_images(gts, dets, ["a", "b"], "voc12", IOU_THRS)
    rows = metric_rows(res07, res12, ["a", "b"])
    ap12, ap07 = 0.5 + 0.5 * 2 / 3, (6 + 5 * 2 / 3) / 11
    assert rows["a"]["mAP50_voc12"] == pytest.approx(ap12) and rows["a"]["mAP50"] == pytest.approx(ap07)
    assert rows["a"]["mAP50_95"] == pytest.approx(ap12)
    assert rows["b"]["mAP50"] == pytest.approx(1.0) and rows["b"]["recall"] == pytest.approx(1.0)
    assert rows["all"]["mAP50"] == pytest.approx((ap07 + 1) / 2)
    assert rows["all"]["mAP50_95"] == pytest.approx((ap12 + 1) / 2)
    assert rows["a"]["n_gt"] == 2 and rows["a"]["n_det"] == 3 and rows["all"]["n_det"] == 4
    # best mean F1: the confidence that keeps all four detections (a: P 2/3, R 1; b: P 1, R 1)
    assert rows["a"]["precision"] == pytest.approx(2 / 3, abs=0.01)
    assert rows["a"]["recall"] == pytest.approx(1.0)


def test_pr_envelope_and_plot(tmp_path):
    from obbslim.eval.plots import plot_pr_curves, pr_envelope

    grid = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    # ranked TP, FP, TP of 2 objects: recall .5 .5 1, precision 1 .5 .667 -> envelope 1 up to .5, then .667
    y = pr_envelope(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]), grid)
    np.testing.assert_allclose(y, [1.0, 1.0, 1.0, 2 / 3, 2 / 3])
    # a class that reached only recall 0.5: precision 0 beyond
    np.testing.assert_allclose(pr_envelope(np.array([0.5]), np.array([1.0]), grid), [1, 1, 1, 0, 0])
    res = {
        "per_class": {"a": 0.83, "b": 1.0},
        "recall": {"a": np.array([0.5, 0.5, 1.0]), "b": np.array([1.0])},
        "precision": {"a": np.array([1.0, 0.5, 2 / 3]), "b": np.array([1.0])},
        "metric": "voc12",
    }
    p = plot_pr_curves(res, tmp_path / "pr.png")
    assert p.stat().st_size > 1000


def test_cli_val_split_and_full_images(synth, tiny_ckpt, tmp_path, capsys):
    """A real checkpoint through both protocols via the CLI: exit 0, the JSON keys, Task1 files."""
    import cv2

    from obbslim.cli import main
    from obbslim.data.labeltxt import write_labeltxt
    from obbslim.data.synth import CLASSES, render_image

    out = tmp_path / "split.json"
    rc = main(["val", "--weights", str(tiny_ckpt), "--data", str(synth), "--imgsz", "64", "--batch", "2",
               "--device", "cpu", "--json", str(out), "--project", str(tmp_path / "runs"), "--name", "a"])
    assert rc == 0
    js = json.loads(out.read_text())
    assert {"metric", "mAP", "per_class", "mAP50_95", "speed_ms"} <= set(js)
    assert 0.0 <= js["mAP"] <= 1.0 and set(js["speed_ms"]) == {"preprocess", "inference", "nms"}
    assert (tmp_path / "runs" / "a" / "PR_curve.png").is_file()
    # full images: one 192x160 image made of synthetic renders, tiled by 96 px windows
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labelTxt").mkdir()
    big = np.zeros((160, 192, 3), np.uint8)
    polys, names = [], []
    for k, (x0, y0) in enumerate([(0, 0), (96, 64)]):
        im, objs = render_image(0, k, 96)
        big[y0 : y0 + 96, x0 : x0 + 96] = im
        polys += [np.asarray(o.label, np.float64) + np.tile([x0, y0], 4) for o in objs]
        names += [o.name for o in objs]
    cv2.imwrite(str(src / "images" / "big.png"), big)
    write_labeltxt(src / "labelTxt" / "big.txt", np.array(polys).reshape(-1, 8), names)
    out2 = tmp_path / "full.json"
    capsys.readouterr()
    rc = main(["val", "--weights", str(tiny_ckpt), "--full-images", str(src), "--imgsz", "96", "--gap", "32",
               "--device", "cpu", "--json", str(out2), "--project", str(tmp_path / "runs"), "--name", "b"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Speed:" in printed and "all" in printed
    js2 = json.loads(out2.read_text())
    assert {"metric", "mAP", "per_class", "mAP50_95", "speed_ms"} <= set(js2)
    assert set(js2["per_class"]) == set(names)
    task1 = sorted(p.name for p in (tmp_path / "runs" / "b" / "Task1").iterdir())
    assert task1 == sorted(f"Task1_{c}.txt" for c in CLASSES)


def test_cli_val_errors(synth, tiny_ckpt, tmp_path, capsys):
    from obbslim.cli import main

    cases = [
        (["val", "--weights", str(tiny_ckpt)], "--data"),
        (["val", "--weights", str(tiny_ckpt), "--full-images", str(tmp_path)], "images"),
        (["val", "--weights", str(tmp_path / "m.onnx"), "--data", str(synth)], "m.onnx"),
        (["val", "--weights", str(tmp_path / "none.pt"), "--data", str(synth)], "none.pt"),
    ]
    (tmp_path / "m.onnx").write_bytes(b"x")
    for argv, needle in cases:
        capsys.readouterr()
        assert main(argv + ["--device", "cpu", "--project", str(tmp_path / "runs")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and err.startswith("obbslim val: error:"), err
