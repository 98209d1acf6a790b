"""Distillation losses: the teacher's raw outputs as soft targets, and neck-feature imitation.

Every term is a divergence, so a student that equals its teacher scores exactly 0:
- soft-target BCE is written as ``BCE(s, p_t) - H(p_t)``, the Bernoulli KL (:func:`bernoulli_kl`);
- the angle and (optionally) the classes use a softmax KL with temperature ``T`` (times ``T^2``, Hinton);
- the box term is ``1 - DIoU`` between the decoded student and teacher boxes (grid units);
- features: channel-wise distillation (:func:`cwd_loss`) or masked imitation (:func:`mimic_loss`).

Output terms are computed per anchor/cell of the same input batch and weighted by the teacher's
objectness ``sigmoid(obj_t)`` so that the background (most cells) does not dominate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from obbslim.engine.loss import BALANCE
from obbslim.options.train import KD_CLS_KINDS as CLS_KINDS
from obbslim.options.train import KD_OUTPUT_TERMS as OUTPUT_TERMS


def bernoulli_kl(s_logits: torch.Tensor, t_logits: torch.Tensor, temp: float = 1.0) -> torch.Tensor:
    """Elementwise KL(Bern(sigmoid(t/T)) || Bern(sigmoid(s/T))) * T^2 = soft-target BCE minus the
    teacher's entropy: its gradient is the soft-target BCE's, and identical logits give exactly 0."""
    s, t = s_logits.float() / temp, t_logits.float() / temp
    p = torch.sigmoid(t)
    # log sigmoid(x) = -softplus(-x), log(1 - sigmoid(x)) = -softplus(x)
    kl = p * (F.softplus(-s) - F.softplus(-t)) + (1 - p) * (F.softplus(s) - F.softplus(t))
    return kl * temp**2


def softmax_kl(s_logits: torch.Tensor, t_logits: torch.Tensor, temp: float = 1.0) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2 over the last dim (summed), shape ``[...]``. The teacher is
    a constant: its probabilities and entropy are computed once without a graph, so the KL is
    ``sum p_t log p_t - sum p_t log_softmax(s)``: the same numbers as ``F.kl_div(..., log_target=True)``
    in 0.7x its time (forward and backward over the 180 angle bins of every cell of the demo's batch, one
    thread: 56 against 79 ms). At T = 1 the division and the factor are skipped."""
    s, t = s_logits.float(), t_logits.detach().float()
    if temp != 1.0:
        s, t = s / temp, t / temp
    with torch.no_grad():
        log_pt = t.log_softmax(-1)
        pt = log_pt.exp()
        neg_entropy = (pt * log_pt).sum(-1)
    kl = neg_entropy - (pt * s.log_softmax(-1)).sum(-1)
    return kl if temp == 1.0 else kl * temp**2


def decode_grid_boxes(raw: torch.Tensor, anchors_grid: torch.Tensor) -> torch.Tensor:
    """Raw ``[..., na, H, W, no]`` -> (x, y, long, short) in grid units of the level: xy the offset in
    the cell (``2 sigmoid - 0.5``), wh ``(2 sigmoid)^2 * anchor`` (anchors ``[na, 2]`` in grid units)."""
    xy = raw[..., 0:2].float().sigmoid() * 2 - 0.5
    wh = (raw[..., 2:4].float().sigmoid() * 2) ** 2 * anchors_grid.view(-1, 1, 1, 2).to(raw.device)
    return torch.cat((xy, wh), -1)


def diou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance-IoU of axis-aligned (cx, cy, w, h) boxes, elementwise: ``IoU - d^2 / c^2`` (Zheng et al.
    2020), in float64 with a negligible eps so that identical boxes give exactly 1 (YOLOv5's CIoU eps of
    1e-7 is not negligible for boxes of a fraction of a grid cell); the distance term keeps a gradient
    when the boxes do not overlap."""
    a, b = a.double(), b.double()
    a1, a2 = a[..., :2] - a[..., 2:4] / 2, a[..., :2] + a[..., 2:4] / 2
    b1, b2 = b[..., :2] - b[..., 2:4] / 2, b[..., :2] + b[..., 2:4] / 2
    inter = (torch.min(a2, b2) - torch.max(a1, b1)).clamp(0).prod(-1)
    union = a[..., 2:4].prod(-1) + b[..., 2:4].prod(-1) - inter
    c2 = (torch.max(a2, b2) - torch.min(a1, b1)).pow(2).sum(-1)
    rho2 = (a[..., :2] - b[..., :2]).pow(2).sum(-1)
    eps = 1e-30
    return (inter / (union + eps) - rho2 / (c2 + eps)).float()


def output_losses(
    s_raw: list[torch.Tensor],
    t_raw: list[torch.Tensor],
    nc: int,
    s_anchors: torch.Tensor,
    t_anchors: torch.Tensor | None = None,
    temp: float = 1.0,
    cls_kind: str = "bce",
    box_thresh: float = 0.5,
    balance: list[float] | None = None,
    terms: tuple[str, ...] = OUTPUT_TERMS,
) -> dict[str, torch.Tensor]:
    """The four output-distillation terms (unweighted means) for raw level tensors ``[B, na, H, W, no]``;
    only those in ``terms`` are computed (the others are 0: the box term's decoding costs a distill step).

    - ``cls``: per-class Bernoulli KL (``cls_kind='bce'``, soft-target BCE minus the teacher entropy) or
      a softmax KL over the classes (``'kl'``), temperature ``temp``; teacher-objectness-weighted mean;
    - ``theta``: softmax KL over the CSL bins with temperature ``temp``; teacher-objectness-weighted mean;
    - ``obj``: Bernoulli KL of objectness over every cell, mean per level times the YOLOv5 level balance;
    - ``box``: ``1 - DIoU`` of the decoded boxes where ``sigmoid(obj_t) > box_thresh``, weighted mean.
    ``s_anchors`` / ``t_anchors`` (default: the same) are each model's ``[nl, na, 2]`` anchors in grid
    units (pixels / stride): the boxes are compared decoded, so the two may differ.
    """
    if cls_kind not in CLS_KINDS:
        raise ValueError(f"cls_kind must be one of {CLS_KINDS}, got {cls_kind!r}")
    balance = balance or (BALANCE if len(s_raw) == 3 else [1.0] * len(s_raw))
    t_anchors = s_anchors if t_anchors is None else t_anchors
    c0 = 5 + nc
    zero = s_raw[0].new_zeros((), dtype=torch.float32)
    w_sum, cls_sum, th_sum, obj, box_sum, box_w = zero, zero, zero, zero, zero, zero
    for i, (s, t) in enumerate(zip(s_raw, t_raw)):
        if s.shape != t.shape:
            raise ValueError(f"level {i}: student output {tuple(s.shape)} != teacher {tuple(t.shape)}")
        t = t.detach().float()
        w = t[..., 4].sigmoid()
        w_sum = w_sum + w.sum()
        if "cls" in terms and (nc > 1 or cls_kind == "bce"):
            if cls_kind == "bce":
                kc = bernoulli_kl(s[..., 5:c0], t[..., 5:c0], temp).mean(-1)
            else:
                kc = softmax_kl(s[..., 5:c0], t[..., 5:c0], temp)
            cls_sum = cls_sum + (w * kc).sum()
        if "theta" in terms and s.shape[-1] > c0:
            th_sum = th_sum + (w * softmax_kl(s[..., c0:], t[..., c0:], temp)).sum()
        if "obj" in terms:
            obj = obj + bernoulli_kl(s[..., 4], t[..., 4]).mean() * balance[i]
        conf = w > box_thresh if "box" in terms else None
        if conf is not None and conf.any():
            sb = decode_grid_boxes(s, s_anchors[i])[conf]
            tb = decode_grid_boxes(t, t_anchors[i])[conf]
            wc = w[conf]
            box_sum = box_sum + (wc * (1.0 - diou(sb, tb))).sum()
            box_w = box_w + wc.sum()
    eps = 1e-9
    return {
        "cls": cls_sum / (w_sum + eps),
        "theta": th_sum / (w_sum + eps),
        "obj": obj,
        "box": box_sum / (box_w + eps),
    }


def cwd_loss(s_feat: torch.Tensor, t_feat: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Channel-wise distillation (Shu et al. 2021): each channel's activation map becomes a distribution
    over the H*W positions (softmax with temperature ``tau``); KL(teacher || student) * tau^2, averaged
    over channels and images. ``[B, C, H, W]`` both (the student already adapted to C channels)."""
    b, c, h, w = t_feat.shape
    if s_feat.shape != t_feat.shape:
        raise ValueError(f"cwd_loss: student {tuple(s_feat.shape)} != teacher {tuple(t_feat.shape)}")
    s = s_feat.float().reshape(b * c, h * w)
    t = t_feat.detach().float().reshape(b * c, h * w)
    return softmax_kl(s, t, tau).mean()


def mimic_loss(s_feat: torch.Tensor, t_feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Feature imitation masked to the cells near objects (FGFI, Wang et al. 2019): squared error summed
    over the masked cells, divided by (masked cells x channels). ``mask`` ``[B, H, W]`` in {0, 1}."""
    if s_feat.shape != t_feat.shape:
        raise ValueError(f"mimic_loss: student {tuple(s_feat.shape)} != teacher {tuple(t_feat.shape)}")
    m = mask.to(s_feat.device, torch.float32)[:, None]
    se = (s_feat.float() - t_feat.detach().float()).pow(2) * m
    return se.sum() / (m.sum() * s_feat.shape[1]).clamp(min=1.0)


def object_masks(assign, preds: list[torch.Tensor], targets: torch.Tensor) -> list[torch.Tensor]:
    """Per level ``[B, H, W]`` masks of the cells that the YOLOv5 assignment gives to a target (its own
    cell and the two nearest neighbours, for every anchor that fits): the cells "near" the objects.
    ``assign`` is an ``OBBLoss`` (only its ``build_targets`` is used)."""
    _, _, indices, _, _ = assign.build_targets(preds, targets)
    masks = []
    for p, (b, _a, gj, gi) in zip(preds, indices):
        m = torch.zeros(p.shape[0], p.shape[2], p.shape[3], device=p.device)
        m[b, gj, gi] = 1.0
        masks.append(m)
    return masks
