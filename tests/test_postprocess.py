from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from obbslim import ops
from obbslim.inference.postprocess import postprocess, scale_rboxes

NC, NBINS = 2, 180


def row(rbox, obj, cls, theta_peak=None, spread=()):
    """One decoded row: rbox, obj, class probs, theta probs peaked at the rbox's bin (+ extra bins)."""
    r = torch.zeros(6 + NC + NBINS)
    r[:5] = torch.tensor(rbox)
    r[5] = obj
    r[6 : 6 + NC] = torch.tensor(cls)
    peak = int(ops.csl_bin(torch.tensor(float(rbox[4])))) if theta_peak is None else theta_peak
    r[6 + NC + peak] = 0.9
    for b, p in spread:
        r[6 + NC + b] = p
    return r


def test_conf_filter_nms_per_class_and_normalisation():
    img0 = torch.stack(
        [
            row([50, 50, 20, 10, 0.0], 0.9, [0.9, 0.1]),  # A: score .81
            row([51, 50, 20, 10, 0.0], 0.8, [0.9, 0.1]),  # B: IoU with A .9, same class -> suppressed
            row([51, 50, 20, 10, 0.0], 0.8, [0.1, 0.9]),  # C: same place, class 1 -> kept per class
            row([10, 10, 20, 10, 0.0], 0.0005, [0.9, 0.9]),  # D: below conf
            row([100, 100, 10, 30, 0.2], 0.5, [0.2, 0.6]),  # E: w < h, class 1, score .3
        ]
    )
    img1 = torch.zeros_like(img0)
    out = postprocess(torch.stack([img0, img1]), conf_thr=0.01, iou_thr=0.4)
    assert len(out) == 2
    d = out[0]
    assert d["cls"].dtype == torch.int64
    assert d["scores"].tolist() == pytest.approx([0.81, 0.72, 0.3])
    assert d["cls"].tolist() == [0, 1, 1]
    # merge-NMS: A becomes the score-weighted mean of A and B, the box it suppressed
    x_ab = (50 * 0.81 + 51 * 0.72) / 1.53
    assert d["rboxes"][0].tolist() == pytest.approx([x_ab, 50, 20, 10, 0.0], abs=1e-5)
    plain = postprocess(img0[None], conf_thr=0.01, iou_thr=0.4, merge=False)[0]
    assert plain["rboxes"][0].tolist() == pytest.approx([50, 50, 20, 10, 0.0])
    assert plain["scores"].tolist() == d["scores"].tolist()
    assert torch.equal(plain["rboxes"][1:], d["rboxes"][1:])  # boxes that suppressed nothing: untouched
    # E normalised: long side first, theta + pi/2 folded into [-pi/2, pi/2)
    assert d["rboxes"][2].tolist() == pytest.approx([100, 100, 30, 10, 0.2 + math.pi / 2 - math.pi], abs=1e-6)
    assert out[1]["rboxes"].shape == (0, 5) and out[1]["scores"].shape == (0,) and out[1]["cls"].shape == (0,)
    # class-agnostic NMS: C is suppressed by A too
    agn = postprocess(img0[None], conf_thr=0.01, iou_thr=0.4, nms_per_class=False)[0]
    assert agn["scores"].tolist() == pytest.approx([0.81, 0.3])
    # a looser IoU threshold keeps B (IoU of A and B is 19/21 ~ 0.905)
    loose = postprocess(img0[None], conf_thr=0.01, iou_thr=0.95)[0]
    assert loose["scores"].tolist() == pytest.approx([0.81, 0.72, 0.72, 0.3])


def test_multi_label_max_det_and_max_nms():
    x = torch.stack([row([20.0 * k, 30, 12, 6, 0.1], 1.0, [0.6 - 0.01 * k, 0.5]) for k in range(1, 11)])
    single = postprocess(x[None], conf_thr=0.1)[0]
    assert single["cls"].tolist() == [0] * 10
    multi = postprocess(x[None], conf_thr=0.1, multi_label=True)[0]
    assert len(multi["scores"]) == 20 and sorted(multi["cls"].tolist()) == [0] * 10 + [1] * 10
    assert torch.all(multi["scores"][:-1] >= multi["scores"][1:])
    top = postprocess(x[None], conf_thr=0.1, max_det=3)[0]
    assert top["scores"].tolist() == pytest.approx([0.59, 0.58, 0.57])
    assert top["rboxes"][:, 0].tolist() == pytest.approx([20, 40, 60])
    # only the max_nms best candidates enter NMS
    assert len(postprocess(x[None], conf_thr=0.1, max_nms=4)[0]["scores"]) == 4


def test_theta_refine_sub_bin():
    # peak at bin 107 (17 deg) with bin 108 as strong: the refined angle is 17.5 deg
    r = row([50, 50, 30, 10, math.radians(17)], 0.9, [0.9, 0.1], spread=[(108, 0.9)])
    plain = postprocess(r[None, None], conf_thr=0.01)[0]["rboxes"][0, 4].item()
    refined = postprocess(r[None, None], conf_thr=0.01, theta_refine=True)[0]["rboxes"][0, 4].item()
    assert plain == pytest.approx(math.radians(17), abs=1e-6)
    assert refined == pytest.approx(math.radians(17.5), abs=1e-4)
    # across the seam: bins 179 (89 deg) and 0 (-90 deg) equally strong -> -89.5 deg == 90.5 deg
    r = row([50, 50, 30, 10, math.radians(89)], 0.9, [0.9, 0.1], spread=[(0, 0.9)])
    refined = postprocess(r[None, None], conf_thr=0.01, theta_refine=True)[0]["rboxes"][0, 4].item()
    assert refined == pytest.approx(math.radians(89.5), abs=1e-4)


def test_bad_channel_count():
    with pytest.raises(ValueError, match="channels"):
        postprocess(torch.zeros(1, 3, 10))


def test_scale_rboxes_undoes_letterbox():
    # original 200 x 100 (h, w) letterboxed into 256 x 256: gain 1.28, resized 256 x 128, pad_w 64
    orig = np.array([[50.0, 100.0, 40.0, 20.0, 0.3], [10.0, 5.0, 8.0, 2.0, -1.2]])
    lb = orig.copy()
    lb[:, :4] *= 1.28
    lb[:, 0] += 64
    assert lb[0].tolist() == pytest.approx([128, 128, 51.2, 25.6, 0.3])
    back = scale_rboxes(lb, None, (256, 256), (200, 100))
    assert isinstance(back, np.ndarray) and np.allclose(back, orig)
    assert np.allclose(lb[0], [128, 128, 51.2, 25.6, 0.3])  # input untouched
    t = scale_rboxes(torch.tensor(lb), ((1.28, 1.28), (64.0, 0.0)))
    assert isinstance(t, torch.Tensor) and torch.allclose(t, torch.tensor(orig))
    with pytest.raises(ValueError):
        scale_rboxes(lb)


def test_decoded_without_theta_columns():
    """The ONNX export's output [B, N, 6 + nc] (no theta probabilities) goes through with nc or nbins=0."""
    full = torch.stack([row([50, 50, 20, 10, 0.3], 0.9, [0.2, 0.8]), row([10, 10, 8, 4, 0.0], 0.001, [1, 1])])
    short = full[None, :, : 6 + NC]
    want = postprocess(full[None], conf_thr=0.01)[0]
    for kw in ({"nc": NC}, {"nbins": 0}):
        got = postprocess(short, conf_thr=0.01, **kw)[0]
        assert torch.equal(got["rboxes"], want["rboxes"]) and got["cls"].tolist() == [1]
    with pytest.raises(ValueError):
        postprocess(short, nc=NC, theta_refine=True)
