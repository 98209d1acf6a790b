from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from obbslim import ops
from obbslim.cfg import load_hyp
from obbslim.engine.loss import (
    OBBLoss,
    bbox_ciou,
    kld_loss,
    one_target_per_cell,
    probiou,
    scale_gains,
    soft_rotation,
    soft_theta,
)

NC, NBINS = 3, 180
STRIDES = [8.0, 16.0, 32.0]
ANCHORS = [[[16, 8], [80, 40], [8, 8]], [[32, 16], [64, 32], [128, 64]], [[64, 32], [128, 64], [256, 128]]]


class Head(nn.Module):
    """Just the attributes of the Detect head that the loss reads."""

    def __init__(self, nc=NC):
        super().__init__()
        self.nc, self.na, self.nbins, self.nl = nc, 3, NBINS, 3
        self.register_buffer("anchors", torch.tensor(ANCHORS, dtype=torch.float32))
        self.register_buffer("stride", torch.tensor(STRIDES))


def empty_preds(bs=1, size=64, nc=NC, fill=-20.0):
    return [torch.full((bs, 3, size // int(s), size // int(s), 5 + nc + NBINS), fill) for s in STRIDES]


def logit(p):
    p = torch.as_tensor(p, dtype=torch.float32).clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


BIN17 = -math.pi / 2 + 107 * math.pi / 180  # exactly on a bin (17 degrees)


def matched_preds(crit, targets, bs=1, size=64):
    """Raw logits that decode exactly to each target at every assigned cell, obj on, right class and CSL
    (the angle logits at the minimum of the loss's ``theta_loss``)."""
    preds = empty_preds(bs, size)
    tcls, tbox, indices, anch, ttheta = crit.build_targets(preds, targets)
    for i, p in enumerate(preds):
        b, a, gj, gi = indices[i]
        if not len(b):
            continue
        row = torch.full((len(b), p.shape[-1]), -20.0)
        row[:, :2] = logit((tbox[i][:, :2] + 0.5) / 2)
        row[:, 2:4] = logit((tbox[i][:, 2:4] / anch[i]).sqrt() / 2)
        row[:, 4] = 20.0
        row[torch.arange(len(b)), 5 + tcls[i]] = 20.0
        csl = torch.as_tensor(ops.csl_encode(ttheta[i], NBINS, radius=2.0, window="gaussian"))
        ce = crit.hyp["theta_loss"] == "ce"  # softmax's minimum: log of the normalised window
        row[:, 5 + NC :] = (csl / csl.sum(1, keepdim=True)).log().clamp(min=-20) if ce else logit(csl)
        p[b, a, gj, gi] = row
    return preds


# ---------------------------------------------------------------- box similarity functions


def test_bbox_ciou_hand_values():
    b = torch.tensor
    assert bbox_ciou(b([1.0, 1, 2, 2]), b([1.0, 1, 2, 2])).item() == pytest.approx(1.0, abs=1e-6)
    # disjoint, same shape: IoU 0, enclosing box 5 x 2 (c^2 = 29), centre distance 3
    assert bbox_ciou(b([1.0, 1, 2, 2]), b([4.0, 1, 2, 2])).item() == pytest.approx(-9 / 29, abs=1e-6)
    # half overlap: IoU 2/6, enclosing 3 x 2 (c^2 = 13), centre distance 1
    assert bbox_ciou(b([1.0, 1, 2, 2]), b([2.0, 1, 2, 2])).item() == pytest.approx(1 / 3 - 1 / 13, abs=1e-6)
    # same centre, 2x1 vs 1x2: IoU 1/3, rho 0, aspect term v
    v = 4 / math.pi**2 * (math.atan(0.5) - math.atan(2)) ** 2
    alpha = v / (v - 1 / 3 + 1)
    got = bbox_ciou(b([0.0, 0, 2, 1]), b([0.0, 0, 1, 2])).item()
    assert got == pytest.approx(1 / 3 - alpha * v, abs=1e-6)


def _probiou_ref(r1, r2):
    """Bhattacharyya coefficient via explicit 2x2 matrices (numpy), independent of the loss code."""

    def gauss(r):
        x, y, w, h, t = r
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        return np.array([x, y]), rot @ np.diag([w * w / 12, h * h / 12]) @ rot.T

    m1, s1 = gauss(r1)
    m2, s2 = gauss(r2)
    s = (s1 + s2) / 2
    d = m1 - m2
    det = np.linalg.det
    bd = d @ np.linalg.inv(s) @ d / 8 + 0.5 * math.log(det(s) / math.sqrt(det(s1) * det(s2)))
    return 1 - math.sqrt(1 - math.exp(-bd))


def _kld_ref(rp, rt):
    def gauss(r):
        x, y, w, h, t = r
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        return np.array([x, y]), rot @ np.diag([w * w / 12, h * h / 12]) @ rot.T

    mp, sp = gauss(rp)
    mt, st_ = gauss(rt)
    inv = np.linalg.inv(st_)
    d = mp - mt
    kl = 0.5 * (np.trace(inv @ sp) + d @ inv @ d - 2 + math.log(np.linalg.det(st_) / np.linalg.det(sp)))
    return 1 - 1 / (1 + math.log1p(kl))


rbox_st = st.tuples(
    st.floats(-20, 20), st.floats(-20, 20), st.floats(1, 30), st.floats(1, 30), st.floats(-math.pi, math.pi)
)


@settings(max_examples=40, deadline=None)
@given(rbox_st, rbox_st)
def test_probiou_matches_reference_and_is_symmetric(r1, r2):
    a, b = torch.tensor(r1, dtype=torch.float64), torch.tensor(r2, dtype=torch.float64)
    v = probiou(a, b).item()
    assert 0.0 <= v <= 1.0
    assert v == pytest.approx(probiou(b, a).item(), abs=1e-9)
    assert v == pytest.approx(_probiou_ref(r1, r2), abs=1e-5)
    # the same orientation half a turn later
    a2 = a.clone()
    a2[4] += math.pi
    assert probiou(a2, b).item() == pytest.approx(v, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(rbox_st, rbox_st)
def test_kld_matches_reference(r1, r2):
    a, b = torch.tensor(r1, dtype=torch.float64), torch.tensor(r2, dtype=torch.float64)
    loss, sim = kld_loss(a, b)
    assert loss.item() == pytest.approx(_kld_ref(r1, r2), abs=1e-5)
    assert sim.item() == pytest.approx(1 - loss.item())


def test_probiou_identical_distance_and_hand_value():
    r = torch.tensor([[10.0, 5.0, 12.0, 4.0, 0.4]])
    assert probiou(r, r).item() == pytest.approx(1.0, abs=2e-3)
    assert (1 - probiou(r, r)).item() < 2e-3
    assert kld_loss(r, r)[0].item() == pytest.approx(0.0, abs=1e-6)
    vals = [probiou(r, r + torch.tensor([d, 0, 0, 0, 0])).item() for d in (0.0, 1.0, 3.0, 6.0, 12.0)]
    assert all(x > y for x, y in zip(vals, vals[1:]))
    # axis-aligned, equal shapes, shifted by d along x: B = d^2 / (8 w^2 / 12) = 1.5 d^2 / w^2
    a = torch.tensor([0.0, 0, 6, 2, 0])
    b = torch.tensor([3.0, 0, 6, 2, 0])
    assert probiou(a, b).item() == pytest.approx(1 - math.sqrt(1 - math.exp(-1.5 * 9 / 36)), abs=1e-5)
    # a rotation of the box away from the target lowers it
    rot = r.clone()
    rot[0, 4] += 0.5
    assert probiou(rot, r).item() < 0.9


def test_soft_theta_peak_seam_and_gradient():
    logits = torch.full((3, NBINS), -10.0)
    logits[0, 107] = 10.0  # 17 degrees
    logits[1, [0, 179]] = 10.0  # -90 and 89 degrees: the seam, mean is +-90
    logits[2, [30, 32]] = 10.0  # -60 and -58 -> -59
    logits.requires_grad_(True)
    th = soft_theta(logits)
    assert th[0].item() == pytest.approx(BIN17, abs=1e-4)
    assert abs(abs(th[1].item()) - (math.pi / 2 - math.pi / 360)) < 1e-3
    assert th[2].item() == pytest.approx(math.radians(-59), abs=1e-4)
    th[2].backward()
    assert logits.grad[2].abs().sum() > 0
    # uniform bins: the expected rotation vector is 0 (a round box), with finite gradients
    u = torch.zeros(1, NBINS, requires_grad=True)
    c, s = soft_rotation(u)
    assert abs(c.item()) < 1e-6 and abs(s.item()) < 1e-6
    (c + s).sum().backward()
    assert torch.isfinite(u.grad).all() and u.grad.abs().max() < 1.0
    # the expected covariance equals the box's covariance for a sharp distribution
    c, s = soft_rotation(logits[:1].detach())
    assert c.item() == pytest.approx(math.cos(2 * BIN17), abs=1e-4)
    assert s.item() == pytest.approx(math.sin(2 * BIN17), abs=1e-4)


# ---------------------------------------------------------------- target assignment


def test_build_targets_hand_placed():
    crit = OBBLoss(Head())
    # image 0, class 2, centre (18, 14) px, 16 x 8 px, theta 0.3
    t = torch.tensor([[0, 2, 18.0, 14.0, 16.0, 8.0, 0.3]])
    tcls, tbox, indices, anch, ttheta = crit.build_targets(empty_preds(), t)
    # level 0 (stride 8): g = (2.25, 1.75), wh (2, 1); anchors (2, 1) ok, (10, 5) ratio 5 rejected, (1, 1) ok;
    # x frac .25 -> left neighbour, y frac .75 -> the cell below
    got = sorted(zip(*(x.tolist() for x in indices[0])))
    want = sorted((0, a, gy, gx) for a in (0, 2) for gx, gy in ((2, 1), (1, 1), (2, 2)))
    assert got == want
    by_cell = {(a, gy, gx): tb.tolist() for (_, a, gy, gx), tb in zip(got_idx(indices[0]), tbox[0])}
    assert by_cell[(0, 1, 2)] == pytest.approx([0.25, 0.75, 2.0, 1.0])
    assert by_cell[(0, 1, 1)] == pytest.approx([1.25, 0.75, 2.0, 1.0])
    assert by_cell[(2, 2, 2)] == pytest.approx([0.25, -0.25, 2.0, 1.0])
    assert tcls[0].tolist() == [2] * 6 and ttheta[0].tolist() == pytest.approx([0.3] * 6)
    assert sorted(map(tuple, anch[0].tolist())) == sorted([(2.0, 1.0)] * 3 + [(1.0, 1.0)] * 3)
    # level 1 (stride 16): g = (1.125, 0.875), wh (1, .5); only anchor 0 (ratio 2);
    # anchor 1 has ratio exactly 4
    assert sorted(zip(*(x.tolist() for x in indices[1]))) == [(0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 1, 1)]
    # level 2 (stride 32): every anchor has ratio >= 4
    assert len(indices[2][0]) == 0


def got_idx(ind):
    return list(zip(*(x.tolist() for x in ind)))


def test_build_targets_no_targets_and_border():
    crit = OBBLoss(Head())
    tcls, tbox, indices, anch, ttheta = crit.build_targets(empty_preds(), torch.zeros((0, 7)))
    assert all(len(i[0]) == 0 for i in indices)
    # a target in the first cell gets no neighbour outside the grid (gxy > 1 rule)
    t = torch.tensor([[0, 0, 2.0, 2.0, 8.0, 8.0, 0.0]])
    _, _, indices, _, _ = crit.build_targets(empty_preds(), t)
    assert sorted(got_idx(indices[0])) == [(0, 0, 0, 0), (0, 2, 0, 0)]  # anchors (2, 1) and (1, 1)


def test_one_target_per_cell_keeps_the_nearest_centre():
    cell = torch.tensor([5, 3, 5, 5, 7, 3])
    # offsets from the cell's corner; squared distances to (0.5, 0.5): .16, 0, .01, .5, 1.62, 0
    off = torch.tensor([[0.9, 0.5], [0.5, 0.5], [0.5, 0.6], [0.0, 0.0], [1.4, 1.4], [0.5, 0.5]])
    assert one_target_per_cell(cell, off).tolist() == [1, 2, 4]  # cell 3: a tie, the earlier one
    assert one_target_per_cell(torch.zeros(0, dtype=torch.long), torch.zeros((0, 2))).tolist() == []


@pytest.mark.parametrize("assign", ["shared", "unique"])
def test_build_targets_neighbours_share_a_cell_only_when_shared(assign):
    """Two 16 x 8 px cars side by side, 8 px apart: the right one's left-neighbour cell is the left one's
    own cell. YOLOv5 (shared) regresses that predictor to both; unique keeps the car centred in it."""
    crit = OBBLoss(Head(), {"assign": assign})
    t = torch.tensor([[0, 0, 18.0, 14.0, 16.0, 8.0, 0.0], [0, 1, 26.0, 14.0, 16.0, 8.0, 0.0]])
    tcls, tbox, indices, _, _ = crit.build_targets(empty_preds(), t)
    cells = got_idx(indices[0])
    # level 0: each car takes its cell, the left neighbour and the one below, at anchors 0 and 2
    assert len(cells) == (12 if assign == "shared" else 10)
    assert len(set(cells)) == 10
    at = [(k, tb.tolist()) for k, (c, tb) in enumerate(zip(cells, tbox[0])) if c[1:] == (0, 1, 2)]
    if assign == "unique":  # the left car: offset (0.25, 0.75) from the corner, the right one (1.25, 0.75)
        assert [tb for _, tb in at] == [pytest.approx([0.25, 0.75, 2.0, 1.0])]
        assert tcls[0][at[0][0]].item() == 0
    else:
        assert sorted(tcls[0][k].item() for k, _ in at) == [0, 1]


def test_mixed_takes_box_and_objectness_from_unique_and_class_and_angle_from_shared():
    """``assign: mixed``: the box and objectness terms are unique's to the last digit, the class and angle
    terms shared's; the two cars share a cell and differ in class and angle, so unique and shared differ
    in every term and a swap of the two sets fails."""
    t = torch.tensor([[0, 0, 18.0, 14.0, 16.0, 8.0, 0.0], [0, 1, 26.0, 14.0, 16.0, 8.0, BIN17]])
    g = torch.Generator().manual_seed(0)
    preds = [torch.randn(p.shape, generator=g) for p in empty_preds()]
    items = {a: OBBLoss(Head(), {"assign": a})(preds, t)[1] for a in ("shared", "unique", "mixed")}
    assert (items["shared"] != items["unique"]).all()
    assert torch.equal(items["mixed"][:2], items["unique"][:2])
    assert torch.equal(items["mixed"][2:], items["shared"][2:])


# ---------------------------------------------------------------- the loss


def test_scale_gains_by_hand():
    hyp = load_hyp()
    h = scale_gains(hyp, nl=3, nc=15, imgsz=1024)
    assert h["box"] == pytest.approx(0.05)
    assert h["cls"] == pytest.approx(0.5 * 15 / 80)
    assert h["obj"] == pytest.approx(1.0 * 1.6**2)
    assert h["theta"] == pytest.approx(0.01)  # the default angle gain, not scaled (3 levels)
    h4 = scale_gains(hyp, nl=4, nc=80, imgsz=320)
    assert h4["box"] == pytest.approx(0.0375) and h4["cls"] == pytest.approx(0.375)
    assert h4["obj"] == pytest.approx(0.25 * 0.75) and h4["theta"] == pytest.approx(0.0075)
    assert hyp["box"] == 0.05  # not modified in place


BIN_M69 = -math.pi / 2 + 21 * math.pi / 180
TARGETS = torch.tensor([[0, 2, 18.0, 14.0, 16.0, 8.0, BIN17], [1, 0, 40.0, 44.0, 30.0, 12.0, BIN_M69]])


@pytest.mark.parametrize(
    "box_loss,theta_loss",
    # ce's minimum is the window itself, spread over bins: only the box losses that ignore the angle
    # logits (ciou, rciou) are then also at their minimum; probiou / kld want a sharper peak
    [("ciou", "bce"), ("rciou", "bce"), ("probiou", "bce"), ("kld", "bce"), ("ciou", "ce"), ("rciou", "ce")],
)
def test_matched_prediction_gives_small_loss(box_loss, theta_loss):
    crit = OBBLoss(Head(), {"box_loss": box_loss, "theta_loss": theta_loss})
    preds = matched_preds(crit, TARGETS, bs=2)
    loss, items = crit(preds, TARGETS)
    lbox, lobj, lcls, ltheta = items.tolist()
    assert loss.item() == pytest.approx(items.sum().item() * 2, rel=1e-5)
    assert lbox < 1e-4 and lobj < 1e-5 and lcls < 1e-5
    # the CSL target's entropy is the least possible BCE / cross-entropy: the theta logits sit at the
    # minimum, which is only true if the targets are ops.csl_encode of the target angle. (With ce the
    # overlap term is off here: it too wants a peak sharper than the window.)
    p = [x.clone().requires_grad_(True) for x in preds]
    only_theta = {"box_loss": "ciou", "box": 0, "obj": 0, "cls": 0, "theta_loss": theta_loss}
    crit_theta = OBBLoss(Head(), {**only_theta, **({"theta_iou": 0.0} if theta_loss == "ce" else {})})
    l, _ = crit_theta(p, TARGETS)
    l.backward()
    assert max(x.grad.abs().max().item() for x in p) < 1e-6
    assert ltheta > 0


def test_softmax_angle_loss_by_hand():
    """theta_loss ce: flat logits cost log(180) per assigned box (the window sums to 1 after
    normalising), so the item is the gain times log(180) per level that has a target."""
    hyp = {"theta_loss": "ce", "theta_iou": 0.0, "box": 0, "obj": 0, "cls": 0}
    crit = OBBLoss(Head(), hyp)
    preds = empty_preds(2, 64)
    levels = sum(len(ix[0]) > 0 for ix in crit.build_targets(preds, TARGETS)[2])
    ltheta = crit(preds, TARGETS)[1][3].item()
    assert levels >= 1
    assert ltheta == pytest.approx(crit.hyp["theta"] * math.log(NBINS) * levels, rel=1e-5)
    # and a right angle costs less than a wrong one
    right = matched_preds(crit, TARGETS, bs=2)
    wrong = [x.clone() for x in right]
    wrong[0][..., 5 + NC :] = wrong[0][..., 5 + NC :].roll(45, dims=-1)
    assert crit(right, TARGETS)[1][3] < crit(wrong, TARGETS)[1][3]


def test_mismatched_predictions_cost_more():
    crit = OBBLoss(Head())
    good = matched_preds(crit, TARGETS, bs=2)
    base = crit(good, TARGETS)[1]
    tcls, tbox, indices, anch, ttheta = crit.build_targets(good, TARGETS)
    b, a, gj, gi = indices[0]

    def worse(edit):
        p = [x.clone() for x in good]
        edit(p[0], (b, a, gj, gi))
        return crit(p, TARGETS)[1]

    def shift_xy(p, idx):
        p[idx[0], idx[1], idx[2], idx[3], 0] += 2.0

    def wrong_cls(p, idx):
        p[idx[0], idx[1], idx[2], idx[3], 5:8] = p[idx[0], idx[1], idx[2], idx[3], 5:8].flip(-1)

    def rotate(p, idx):
        p[idx[0], idx[1], idx[2], idx[3], 8:] = p[idx[0], idx[1], idx[2], idx[3], 8:].roll(20, -1)

    def no_obj(p, idx):
        p[idx[0], idx[1], idx[2], idx[3], 4] = -5.0

    assert worse(shift_xy)[0] > base[0] + 1e-3
    assert worse(wrong_cls)[2] > base[2] + 1e-2
    assert worse(rotate)[3] > base[3] + 1e-3
    assert worse(no_obj)[1] > base[1] + 1e-3


def test_rotation_aware_box_loss_sees_the_angle_and_gradients_flow():
    crit = OBBLoss(Head(), {"box_loss": "probiou"})
    good = matched_preds(crit, TARGETS, bs=2)
    _, _, indices, _, _ = crit.build_targets(good, TARGETS)
    b, a, gj, gi = indices[0]
    rot = [x.clone() for x in good]
    rot[0][b, a, gj, gi, 8:] = rot[0][b, a, gj, gi, 8:].roll(30, -1)
    assert crit(rot, TARGETS)[1][0] > crit(good, TARGETS)[1][0] + 1e-3
    # ciou ignores the angle in the box term
    ciou = OBBLoss(Head())
    assert ciou(rot, TARGETS)[1][0].item() == pytest.approx(ciou(good, TARGETS)[1][0].item(), abs=1e-7)
    # with the theta BCE switched off, the angle bins still get a gradient, from the box loss
    crit = OBBLoss(Head(), {"box_loss": "probiou", "theta": 0.0})
    p = [x.clone().requires_grad_(True) for x in empty_preds(2, fill=0.0)]
    crit(p, TARGETS)[0].backward()
    g = p[0].grad[b, a, gj, gi]
    assert g[:, :4].abs().sum() > 0 and g[:, 8:].abs().sum() > 0


def test_no_targets_only_objectness():
    crit = OBBLoss(Head())
    loss, items = crit(empty_preds(2, fill=0.0), torch.zeros((0, 7)))
    assert items[0] == 0 and items[2] == 0 and items[3] == 0
    # all cells have target 0 and logit 0: BCE = ln 2 per level, weighted by balance
    assert items[1].item() == pytest.approx(math.log(2) * (4.0 + 1.0 + 0.4), rel=1e-5)
    assert loss.item() == pytest.approx(2 * items[1].item(), rel=1e-5)


def test_bad_box_loss_name():
    with pytest.raises(ValueError, match="box_loss"):
        OBBLoss(Head(), {"box_loss": "giou"})


def test_ciou_of_identical_float32_boxes_is_finite():
    # regression: alpha = v / (v - iou + 1 + eps) was 0/0 in float32 when 1 + eps rounded to 1
    g = torch.Generator().manual_seed(0)
    b = torch.cat([torch.rand(256, 2, generator=g) * 1000, torch.rand(256, 2, generator=g) * 200 + 0.5], 1)
    c = bbox_ciou(b, b.clone())
    assert torch.isfinite(c).all() and torch.allclose(c, torch.ones_like(c), atol=1e-3)  # float32 corners
