"""The centre-free side term ``box_size``: why it exists (an IoU loss grows a side past a centre's
offset) and what it adds to the box item. References: hand-computed ratios and 1-D overlaps."""

from __future__ import annotations

import math

import pytest
import torch

from obbslim.engine.loss import OBBLoss, bbox_ciou, size_loss
from tests.test_loss import TARGETS, Head, logit, matched_preds


def test_size_loss_is_the_log_ratio_of_each_side():
    pwh = torch.tensor([[20.0, 6.0], [10.0, 5.0]])
    twh = torch.tensor([[10.0, 3.0], [10.0, 5.0]])
    assert size_loss(pwh, twh).tolist() == pytest.approx([2 * math.log(2.0), 0.0], abs=1e-6)
    # a ratio: too long by 2x costs what too short by 2x costs
    assert size_loss(torch.tensor([[5.0, 1.5]]), twh[:1]).item() == pytest.approx(2 * math.log(2.0), abs=1e-6)


def test_iou_grows_the_short_side_under_a_centre_offset_and_size_loss_does_not():
    """A 30 x 6 box predicted 1.5 px off across its short side: 1 - CIoU is least for a short side
    longer than 6 (the grown box covers the offset); the side term is least at 6 whatever the offset."""
    truth = torch.tensor([[0.0, 0.0, 30.0, 6.0]])
    shorts = torch.linspace(4.0, 10.0, 121)
    pred = torch.stack([torch.zeros_like(shorts), torch.full_like(shorts, 1.5), torch.full_like(shorts, 30.0),
                        shorts], 1)
    best_iou = shorts[(1 - bbox_ciou(pred, truth.expand_as(pred))).argmin()].item()
    best_size = shorts[size_loss(pred[:, 2:], truth[:, 2:].expand(len(pred), 2)).argmin()].item()
    assert best_iou > 7.0  # hand: equal long sides, IoU = overlap / union of the short: 0.6 at 6, 0.667 at 9
    assert best_size == pytest.approx(6.0, abs=0.05)


def test_box_size_gain_adds_to_the_box_item_only_when_sides_are_wrong():
    plain = OBBLoss(Head(), {"box_size": 0.0})
    sized = OBBLoss(Head(), {"box_size": 1.0})
    preds = matched_preds(plain, TARGETS, bs=2)
    assert sized(preds, TARGETS)[1][0].item() == pytest.approx(plain(preds, TARGETS)[1][0].item(), abs=1e-4)
    for p in preds:  # every predicted side 1.5x too long: sigmoid(x) * 2 squared grows by 1.5
        p[..., 2:4] = logit(p[..., 2:4].sigmoid() * math.sqrt(1.5))
    gap = sized(preds, TARGETS)[1][0].item() - plain(preds, TARGETS)[1][0].item()
    assert gap > 0.5 * 2 * math.log(1.5)  # the term's gain times its mean over the assigned cells
