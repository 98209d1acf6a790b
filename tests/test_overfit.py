"""Overfit check: a tiny model must learn two tiny images perfectly, boxes and angles.

This exercises target assignment, the loss, the head's decode and postprocess end to end; a wrong
sign, swapped axis or off-by-one bin in any of them shows up as a low mAP or wrong angles.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from obbslim import ops
from obbslim.cfg import load_hyp
from obbslim.engine.loss import OBBLoss, scale_gains
from obbslim.eval import evaluate_images
from obbslim.inference.postprocess import postprocess
from obbslim.model import build, load_spec

SIZE = 96
# (cls, cx, cy, long, short, theta) per image, pixels of a 128 px canvas (scaled to SIZE)
OBJECTS = [
    [(0, 34, 36, 44, 12, 0.3), (1, 88, 40, 36, 18, -0.9), (0, 60, 96, 50, 14, 1.3)],
    [(1, 40, 84, 40, 20, -1.45), (0, 92, 88, 46, 12, -0.35), (1, 30, 30, 30, 15, 0.75)],
]
COLOURS = [(40, 40, 230), (60, 210, 60)]


def make_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Filled rotated rectangles on grey; targets [n, 7] = img, cls, cx, cy, w, h, theta (pixels)."""
    f = SIZE / 128
    imgs, targets = [], []
    for k, objs in enumerate(OBJECTS):
        im = np.full((SIZE, SIZE, 3), 90, np.uint8)
        for c, cx, cy, w, h, t in objs:
            rb = np.array([[cx * f, cy * f, w * f, h * f, t]])
            quad = ops.rbox2poly(rb)[0].reshape(4, 2)
            cv2.fillPoly(im, [np.round(quad).astype(np.int32)], COLOURS[c])
            targets.append([k, c, *rb[0]])
        imgs.append(torch.from_numpy(im).permute(2, 0, 1).float() / 255)
    return torch.stack(imgs), torch.tensor(targets, dtype=torch.float32)


def recalibrate_bn(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Set BN running stats to the exact statistics of x (few steps leave the EMA'd stats behind)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(x)


@pytest.fixture
def one_thread():
    """One intra-op thread: with the CPU shared, OpenMP threads spin-wait and a step gets 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_model_overfits_two_images(one_thread, seed):
    torch.manual_seed(seed)
    x, targets = make_images()
    spec = load_spec("yolov5n-obb")
    spec["width_multiple"] = 0.125
    model = build(spec, nc=2)
    crit = OBBLoss(model, scale_gains(load_hyp(), nl=3, nc=2, imgsz=SIZE))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first = None
    for _ in range(200):
        loss, items = crit(model(x), targets)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and loss.item() < 0.3 * first

    recalibrate_bn(model, x)
    model.eval()
    with torch.no_grad():
        decoded, _ = model(x)
    dets = postprocess(decoded, conf_thr=0.01, iou_thr=0.4)
    gts, det_list = [], []
    for k, d in enumerate(dets):
        t = targets[targets[:, 0] == k].double()
        gts.append((ops.rbox2poly(t[:, 2:7]).numpy(), t[:, 1].long().numpy(), None))
        det_list.append((ops.rbox2poly(d["rboxes"].double()).numpy(), d["scores"].numpy(), d["cls"].numpy()))
    res = evaluate_images(gts, det_list, ["red", "green"], metric="voc07", iou_thr=0.5)
    assert res["mAP"] > 0.95, res["per_class"]

    # the best-scoring detection on each object has the right class and angle (mod pi) within 3 deg
    for k, d in enumerate(dets):
        t = targets[targets[:, 0] == k]
        iou = ops.rbox_iou(t[:, 2:7].double(), d["rboxes"].double())
        for g in range(len(t)):
            ok = (iou[g] > 0.5) & (d["cls"] == t[g, 1].long())
            assert ok.any(), f"image {k} object {g} not found"
            best = int(torch.nonzero(ok)[0])  # detections are sorted by score
            dt = (d["rboxes"][best, 4] - t[g, 6]).item()
            dt = abs((dt + math.pi / 2) % math.pi - math.pi / 2)
            assert math.degrees(dt) < 3.0, (k, g, math.degrees(dt))
