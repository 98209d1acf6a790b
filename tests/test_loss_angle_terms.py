"""The angle's own overlap term (``theta_iou``) and the rotated objectness target (``obj_target``).

References: shapely polygon IoU for the rotated objectness target; ``probiou`` of the two boxes for the
rotation term (a sharp angle distribution must give the loss of the box turned by that angle).
"""

from __future__ import annotations

import math

import pytest
import torch
from shapely.geometry import Polygon

from obbslim import ops
from obbslim.engine.loss import (
    MAX_ASPECT,
    TURN_ASPECTS,
    OBBLoss,
    expected_turn_loss,
    probiou,
    squareness,
    turn_cost,
)
from tests.test_loss import NBINS, NC, TARGETS, Head, matched_preds


def sharp_logits(angles_deg: list[float]) -> torch.Tensor:
    """Theta logits that put (almost) all the mass on the bin of each angle."""
    x = torch.full((len(angles_deg), NBINS), -30.0)
    bins = ops.csl_bin(torch.tensor([math.radians(a) for a in angles_deg]), NBINS)
    x[torch.arange(len(angles_deg)), torch.as_tensor(bins).long()] = 30.0
    return x


def test_rotation_loss_is_the_probiou_of_the_turned_box():
    tbox = torch.tensor([[0.3, 0.7, 4.6, 1.2], [0.5, 0.5, 3.0, 3.0]])  # long thin; square
    ttheta = torch.tensor([0.0, 0.0])
    for deg in (0.0, 5.0, 20.0, 60.0):
        loss = OBBLoss._rotation_loss(sharp_logits([deg, deg]), tbox, ttheta)
        turned = torch.cat((tbox, torch.full((2, 1), math.radians(deg))), 1)
        ref = 1 - probiou(turned, torch.cat((tbox, ttheta[:, None]), 1))
        assert loss.tolist() == pytest.approx(ref.tolist(), abs=1e-5)
        assert loss[1].item() == pytest.approx(0.0, abs=1e-5)  # a square has no angle to get wrong
    errs = [OBBLoss._rotation_loss(sharp_logits([d]), tbox[:1], ttheta[:1]).item() for d in (2, 5, 10, 20)]
    assert errs == sorted(errs) and errs[0] > 0.02  # grows with the error, not flat near the answer


def test_rotation_loss_pulls_the_bins_towards_the_target():
    logits = torch.zeros(1, NBINS, requires_grad=True)  # uniform: the box looks round
    loss = OBBLoss._rotation_loss(logits, torch.tensor([[0.0, 0.0, 5.0, 1.0]]), torch.tensor([0.3]))
    loss.sum().backward()
    target_bin = int(ops.csl_bin(torch.tensor([0.3]), NBINS)[0])
    assert logits.grad[0].argmin().item() == pytest.approx(target_bin, abs=1)  # descent raises it most


@pytest.mark.parametrize("form", ["probiou", "expected"])
def test_theta_iou_gain_adds_to_the_theta_item(form):
    base = OBBLoss(Head(), {"theta_iou": 0.0})
    rot = OBBLoss(Head(), {"theta_iou": 1.0, "theta_iou_form": form})
    preds = matched_preds(base, TARGETS, bs=2)
    for p in preds:  # turn every angle prediction by 30 bins
        p[..., 8:] = p[..., 8:].roll(30, -1)
    t0, t1 = base(preds, TARGETS)[1][3].item(), rot(preds, TARGETS)[1][3].item()
    assert t1 > t0 + 0.05


def shapely_iou(a, b) -> float:
    pa, pb = (
        Polygon(ops.rbox2poly(torch.tensor([r], dtype=torch.float64))[0].reshape(4, 2).tolist())
        for r in (a, b)
    )
    return pa.intersection(pb).area / pa.union(pb).area


def test_rotated_objectness_target_is_the_rotated_iou_at_the_argmax_bin():
    crit = OBBLoss(Head(), {"obj_target": "rotated"})
    pbox = torch.tensor([[0.4, 0.6, 5.0, 1.5], [0.5, 0.5, 2.0, 2.0]])
    tbox = torch.tensor([[0.5, 0.5, 5.0, 1.5], [0.5, 0.5, 2.0, 2.0]])
    ttheta = torch.tensor([0.2, math.radians(-80.0)])  # the square: 90 degrees from its bin, the same box
    logits = sharp_logits([30.0, 10.0])
    got = crit._obj_score(torch.zeros(2), pbox, logits, tbox, ttheta)
    bins = ops.csl_bin(torch.tensor([math.radians(30.0), math.radians(10.0)]), NBINS)
    angle = [float(a) for a in ops.csl_bin_angle(torch.as_tensor(bins, dtype=torch.float64), NBINS)]
    for k in range(2):
        ref = shapely_iou([*pbox[k].tolist(), angle[k]], [*tbox[k].tolist(), float(ttheta[k])])
        assert got[k].item() == pytest.approx(ref, abs=1e-4)
    assert got[0] < 0.8 and got[1] > 0.99  # the thin box pays for its angle, the square does not
    box = OBBLoss(Head(), {"obj_target": "box"})  # the box loss's own similarity
    assert box._obj_score(torch.tensor([0.3, -0.2]), pbox, logits, tbox, ttheta).tolist() == pytest.approx(
        [0.3, 0.0]
    )


def test_rciou_is_the_ciou_of_the_box_turned_to_the_target_angle():
    """rciou's IoU part is shapely's IoU of the predicted box at the target's angle, whatever the
    angle; plain CIoU reads the centre offset in image axes and misses it on a turned box."""
    tbox = torch.tensor([[10.0, 20.0, 30.0, 6.0]])
    pbox = torch.tensor([[10.0, 22.0, 28.0, 7.0]])  # 2 px off in image y
    rciou = OBBLoss(Head(), {"box_loss": "rciou"})._box_loss
    ciou = OBBLoss(Head(), {"box_loss": "ciou"})._box_loss
    logits = sharp_logits([0.0])  # (not read by either)
    for deg in (0.0, 30.0, 90.0, -60.0):
        th = torch.tensor([math.radians(deg)])
        p, t = (Polygon(ops.rbox2poly(torch.cat((b, th[:, None]), 1)).reshape(4, 2).tolist())
                for b in (pbox, tbox))
        iou = p.intersection(t).area / p.union(t).area
        # CIoU = IoU - centre and aspect penalties: at most the IoU, and close to it for a 2 px offset
        assert iou - 0.06 < rciou(pbox, logits, tbox, th).item() <= iou + 1e-6
    # a vertical long box, 2 px off in image x (across it): most of the overlap is lost
    across, vertical = torch.tensor([[12.0, 20.0, 30.0, 6.0]]), torch.tensor([math.pi / 2])
    assert rciou(across, logits, tbox, vertical).item() < 0.5 < ciou(across, logits, tbox, vertical).item()


HEIGHTS = [(1.0, 1.0), (1.1, 2 / 1.2 - 1), (1.25, 2 / 1.5 - 1), (1.5, 0.0), (3.0, 0.0)]  # (aspect, height)


@pytest.mark.parametrize("aspect, height", HEIGHTS)
def test_near_square_boxes_also_target_the_quarter_turn(aspect, height):
    # a box turned by pi/2 overlaps itself by IoU 1 / (2 r - 1); the second window's height
    # is 2 IoU - 1 (hand values: 1, 0.667, 0.333, 0 at r = 1, 1.1, 1.25, 1.5)
    crit = OBBLoss(Head(), {"csl_square": 1.0})
    theta = torch.tensor([math.radians(20.0)])
    tt = crit.theta_target(theta, torch.tensor([[0.5, 0.5, 3.0 * aspect, 3.0]]))[0]
    plain = torch.as_tensor(ops.csl_encode(theta, NBINS))[0]
    quarter = torch.as_tensor(ops.csl_encode(theta + math.pi / 2, NBINS))[0]
    main_bin, turned_bin = int(ops.csl_bin(theta, NBINS)[0]), int(ops.csl_bin(theta + math.pi / 2, NBINS)[0])
    assert abs(main_bin - turned_bin) == NBINS // 2
    assert tt[main_bin].item() == pytest.approx(1.0)
    assert tt[turned_bin].item() == pytest.approx(height, abs=1e-6)
    torch.testing.assert_close(tt, torch.maximum(plain, quarter * height))
    off = OBBLoss(Head()).theta_target(theta, torch.tensor([[0.5, 0.5, 3.0, 3.0]]))[0]
    torch.testing.assert_close(off, plain)  # the default, csl_square 0: the paper's single window


def test_a_square_labelled_either_way_gets_one_target():
    # a square whose long side flips with labelling noise: (w, h, t) and (h, w, t + pi/2), normalised
    crit = OBBLoss(Head(), {"csl_square": 1.0})
    a = crit.theta_target(torch.tensor([0.3]), torch.tensor([[0.5, 0.5, 3.0, 2.999]]))
    b = crit.theta_target(torch.tensor([0.3 + math.pi / 2 - math.pi]), torch.tensor([[0.5, 0.5, 3.0, 2.999]]))
    torch.testing.assert_close(a, b, atol=2e-3, rtol=0)


@pytest.mark.parametrize("row_index", [0, 3, 16, 40])  # aspect 1, 1.30, 4, 32
def test_turn_cost_is_shapelys_overlap_lost_by_turning(row_index):
    table = turn_cost(NBINS, torch.zeros(1, dtype=torch.float64))
    row, aspect = table[row_index], MAX_ASPECT ** (row_index / (TURN_ASPECTS - 1))
    for k in (0, 7, 30, 45, 90, 150):
        ref = 1 - shapely_iou([0.0, 0.0, aspect, 1.0, 0.0], [0.0, 0.0, aspect, 1.0, k * math.pi / NBINS])
        assert row[k].item() == pytest.approx(ref, abs=1e-9)
    assert (row[45].item() == pytest.approx(1 - 1 / math.sqrt(2))) if aspect == 1.0 else row[90] > 0.2


def test_expected_turn_loss_weighs_each_bin_by_its_cost():
    box = torch.tensor([[0.5, 0.5, 3.0, 3.0], [0.5, 0.5, 12.0, 3.0]])  # a square, aspect 4
    theta = torch.tensor([0.2, 0.2])
    # sharp at the target, at a quarter turn, at 45 degrees off
    right, quarter, half = (sharp_logits([math.degrees(0.2) + d] * 2) for d in (0, 90, 45))
    assert expected_turn_loss(right, box, theta).tolist() == pytest.approx([0, 0], abs=1e-6)
    q = expected_turn_loss(quarter, box, theta)
    assert q[0].item() == pytest.approx(0, abs=1e-6) and q[1].item() > 0.5  # a square's quarter turn is free
    assert expected_turn_loss(half, box, theta)[0].item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-3)
    # a mixture costs the mixture of the costs (linear in the probabilities)
    two = torch.full((1, NBINS), -30.0)
    b0, b45 = (int(ops.csl_bin(torch.tensor(a), NBINS)) for a in (0.2, 0.2 + math.pi / 4))
    two[0, b0] = two[0, b45] = 30.0
    got = expected_turn_loss(two, box[1:], theta[1:]).item()
    assert got == pytest.approx(0.5 * expected_turn_loss(half[1:], box[1:], theta[1:]).item(), abs=1e-4)


@pytest.mark.parametrize("aspect, height", HEIGHTS)
def test_squareness_is_the_quarter_turns_window_height(aspect, height):
    assert squareness(torch.tensor([[0.5, 0.5, 3.0 * aspect, 3.0]])).item() == pytest.approx(height, abs=1e-6)


TURNS = [(45.0, 1 - 1 / math.sqrt(2)), (90.0, 0.0), (0.0, 0.0)]  # (turn, a square's 1 - IoU)


@pytest.mark.parametrize("turn_deg, square_cost", TURNS)
def test_theta_square_costs_a_square_its_lost_overlap_and_a_long_box_nothing(turn_deg, square_cost):
    """Every level's term is the mean over its near-square boxes: the one square's exact loss (hand:
    1 - 1/sqrt 2 at 45 degrees, nothing at a quarter turn, where a square is itself), not diluted by the
    aspect-3 box beside it, which gets no term at all (squareness 0)."""
    gain, theta = 0.7, 0.2
    square, long = [0, 1, 32.0, 32.0, 12.0, 12.0, theta], [0, 2, 20.0, 20.0, 12.0, 4.0, theta]
    for rows, cost in (([square], square_cost), ([square, long], square_cost), ([long], 0.0)):
        targets = torch.tensor(rows)
        base = OBBLoss(Head(), {"theta_iou": 0.0})
        sq = OBBLoss(Head(), {"theta_iou": 0.0, "theta_square": gain})
        preds = matched_preds(base, targets)
        only_square = torch.tensor([square])
        levels = sum(len(ind[0]) > 0 for ind in base.build_targets(preds, only_square)[2])
        for p in preds:  # every angle sharp at theta + turn
            p[..., 5 + NC :] = sharp_logits([math.degrees(theta) + turn_deg])[0]
        delta = sq(preds, targets)[1][3].item() - base(preds, targets)[1][3].item()
        assert levels >= 1 and delta == pytest.approx(gain * cost * levels, abs=1e-4)


def test_theta_square_grad_head_teaches_the_angle_head_only():
    """``theta_square_grad: head`` gives the same loss, but the term's gradient reaches the angle rows of
    the head's last convolutions only: every other parameter gets exactly its gradient without the term."""
    from obbslim.model import build, load_spec

    spec = load_spec("yolov5n-obb")
    spec["width_multiple"] = 0.125
    torch.manual_seed(0)
    model = build(spec, nc=NC).train()
    imgs = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 1, 32.0, 32.0, 14.0, 13.0, 0.3], [1, 0, 20.0, 40.0, 12.0, 11.0, -0.7]])

    def run(hyp):
        model.zero_grad()
        crit = OBBLoss(model, {"theta_iou": 0.0, **hyp})
        loss, items = crit(model(imgs), targets)
        loss.backward()
        return items, {k: p.grad.clone() for k, p in model.named_parameters()}

    plain_items, plain = run({})
    all_items, full = run({"theta_square": 2.0})
    head_items, head = run({"theta_square": 2.0, "theta_square_grad": "head"})
    assert torch.allclose(all_items, head_items, atol=1e-6)
    assert all_items[3] > plain_items[3] + 1e-3  # the term is there
    det = model.model[-1]
    last = len(model.model) - 1
    head_names = {f"model.{last}.m.{i}.{w}" for i in range(det.nl) for w in ("weight", "bias")}
    for name, g in head.items():
        if name in head_names:  # the box, objectness and class rows as without the term
            rows = g.view(det.na, det.no, -1)[:, : 5 + NC]
            assert torch.allclose(rows, plain[name].view(det.na, det.no, -1)[:, : 5 + NC], atol=1e-6)
        else:
            assert torch.allclose(g, plain[name], atol=1e-6), name
    assert any(not torch.allclose(head[k], plain[k], atol=1e-6) for k in head_names)  # the angle rows learn
    assert any(not torch.allclose(full[k], plain[k], atol=1e-6) for k in full if k not in head_names)
    model.eval()  # validation: the eval logits (another size) without a gradient, the same loss
    with torch.no_grad():
        raw = model(torch.rand(2, 3, 96, 96))[1]
        crit = OBBLoss(model, {"theta_iou": 0.0, "theta_square": 2.0})
        head_crit = OBBLoss(model, {"theta_iou": 0.0, "theta_square": 2.0, "theta_square_grad": "head"})
        assert torch.allclose(crit(raw, targets)[1], head_crit(raw, targets)[1], atol=1e-6)
