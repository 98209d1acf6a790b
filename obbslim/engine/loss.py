"""The training loss of the OBB detector: YOLOv5 target assignment plus a circular-smooth-label angle.

``OBBLoss(model, hyp)(raw_preds, targets) -> (loss, items)`` follows yolov5_obb (hukaixuan19970627):

- targets ``[n, 7] = [img_idx, cls, cx, cy, w, h, theta]`` in pixels of the network input, ``w >= h``;
- :meth:`OBBLoss.build_targets` assigns each target to every anchor whose (long, short) ratio is
  within ``anchor_t`` (``max(r, 1/r) < 4``) and to its own grid cell plus the two nearest neighbour
  cells (offset 0.5), exactly as YOLOv5 does with horizontal (w, h), then (``assign: unique``, the
  default) keeps one target per predictor (:func:`one_target_per_cell`), or (``mixed``) keeps one for the
  box and objectness and every one for the class and angle; it is a separate method so the distillation
  code can reuse the assignment (its mimic mask marks the same cells either way);
- box: ``1 - CIoU`` of (cx, cy, long, short) treated as axis-aligned boxes (the paper's default), the
  same CIoU with the centre offset read in the target box's frame (``rciou``), or a rotation-aware
  ``1 - ProbIoU`` / KLD loss on the rotated box (``hyp['box_loss']``) whose predicted angle enters
  through the expected rotation of the softmax over the bins (:func:`soft_rotation`); with
  ``box_size`` also the centre-free side term :func:`size_loss`;
- objectness: BCE against the detached, clamped IoU at the assigned cells (``gr = 1``), per-level
  balance ``[4.0, 1.0, 0.4]``;
- class: BCE with optional label smoothing (only when ``nc > 1``, as YOLOv5);
- theta: BCE over the 180 bins against ``ops.csl_encode(theta, 180, radius, window)`` (with
  ``csl_square`` also a window a quarter turn away for boxes near square: :meth:`OBBLoss.theta_target`),
  plus the angle's overlap term ``theta_iou`` (:meth:`OBBLoss._rotation_loss`, or
  :func:`expected_turn_loss` with ``theta_iou_form: expected``) and, opt-in, ``theta_square``: the
  expected-overlap term as a mean over the near-square boxes only (weights :func:`squareness`).

The total is ``(lbox + lobj + lcls + ltheta) * batch_size`` like YOLOv5, whose gains are scaled by
:func:`scale_gains`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from obbslim import ops
from obbslim.cfg import load_hyp

BOX_LOSSES = ("ciou", "rciou", "probiou", "kld")
BALANCE = [4.0, 1.0, 0.4]  # objectness weight per level P3, P4, P5 (YOLOv5, 3 levels)


def scale_gains(hyp: dict, nl: int = 3, nc: int = 80, imgsz: int = 640) -> dict:
    """Return a copy of ``hyp`` with the loss gains scaled the way YOLOv5's train.py scales them.

    The gains in hyp files are tuned for 3 levels, 80 classes and 640 px; the training engine calls
    this once so that other level counts, class counts and image sizes keep the same balance:
    ``box *= 3/nl``, ``cls *= nc/80 * 3/nl``, ``obj *= (imgsz/640)**2 * 3/nl``, ``theta *= 3/nl``.
    """
    out = dict(hyp)
    k = 3.0 / nl
    out["box"] = hyp["box"] * k
    out["cls"] = hyp["cls"] * nc / 80.0 * k
    out["obj"] = hyp["obj"] * (imgsz / 640.0) ** 2 * k
    out["theta"] = hyp["theta"] * k
    out["theta_iou"] = hyp["theta_iou"] * k
    out["theta_square"] = hyp["theta_square"] * k
    out["box_size"] = hyp["box_size"] * k
    return out


def size_loss(pwh: torch.Tensor, twh: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """``|log(pred / true)|`` summed over the two sides: each side learned on its own, as a ratio.

    An IoU loss rewards a box grown past the truth when its centre is off (the grown box covers the
    offset: IoU h0 / (h0 + 2d) beats (h0 - d) / (h0 + d) for a centre off by d), so under the centre's
    noise it settles on sides too long, most for thin sides: the short side of a small vehicle. This
    term does not see the centre; its minimum is the median ratio, whatever the offset.
    """
    return (pwh.clamp(min=eps).log() - twh.clamp(min=eps).log()).abs().sum(1)


def smooth_bce(eps: float = 0.0) -> tuple[float, float]:
    """Positive and negative BCE targets with label smoothing (YOLOv5 ``smooth_BCE``)."""
    return 1.0 - 0.5 * eps, 0.5 * eps


def bbox_ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of axis-aligned boxes given as (cx, cy, w, h), elementwise over ``[..., 4]``.

    CIoU = IoU - rho^2 / c^2 - alpha * v (Zheng et al. 2020), with rho the centre distance, c the
    diagonal of the smallest enclosing box and v the aspect-ratio term (alpha has no gradient).
    """
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    b1x1, b1x2, b1y1, b1y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2x1, b2x2, b2y1, b2y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(0) * (
        torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)
    ).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)
    ch = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)
    c2 = cw**2 + ch**2 + eps
    rho2 = (x2 - x1) ** 2 + (y2 - y1) ** 2
    v = (4 / math.pi**2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + 1).clamp(min=eps)  # identical boxes: v = 0, iou = 1 -> 0, not 0/0
    return iou - (rho2 / c2 + v * alpha)


def _in_target_frame(pbox: torch.Tensor, tbox: torch.Tensor, ttheta: torch.Tensor):
    """Both (cx, cy, long, short) boxes with the centres in the target box's own frame (origin at its
    centre, x along its long side). There the target is axis-aligned, and CIoU is the rotated box's
    CIoU with the predicted box turned to the target angle: a centre offset across a long thin box
    costs what it costs the overlap. Plain CIoU reads the offset in image axes, as if every box lay
    at angle 0, so it teaches the offset across a vertical ship as cheaply as one along it."""
    d = pbox[:, :2] - tbox[:, :2]
    c, s = torch.cos(ttheta).to(d.dtype), torch.sin(ttheta).to(d.dtype)
    u, v = d[:, 0] * c + d[:, 1] * s, d[:, 1] * c - d[:, 0] * s
    zero = torch.zeros_like(u)
    p = torch.stack((u, v, pbox[:, 2], pbox[:, 3]), 1)
    t = torch.stack((zero, zero, tbox[:, 2], tbox[:, 3]), 1)
    return p, t


def _gaussian(rboxes: torch.Tensor, rot2: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Mean and covariance entries (a, b, c) = (Sxx, Syy, Sxy) of the uniform-density Gaussian of an rbox.

    A w x h rectangle has variances w^2/12 and h^2/12 along its axes; rotated by theta,
    ``S = R diag(w^2/12, h^2/12) R^T = m I + d [[cos 2t, sin 2t], [sin 2t, -cos 2t]]`` with
    ``m = (w^2 + h^2) / 24`` and ``d = (w^2 - h^2) / 24``; theta is measured from +x towards +y.
    ``rot2 = (cos 2t, sin 2t)`` may be given instead of the theta column (see :func:`soft_rotation`).
    """
    x, y, w, h = rboxes[..., 0], rboxes[..., 1], rboxes[..., 2], rboxes[..., 3]
    if rot2 is None:
        t2 = 2 * rboxes[..., 4]
        rot2 = (torch.cos(t2), torch.sin(t2))
    m, d = (w.pow(2) + h.pow(2)) / 24, (w.pow(2) - h.pow(2)) / 24
    return x, y, m + d * rot2[0], m - d * rot2[0], d * rot2[1]


def _probiou(g1: tuple, g2: tuple, eps: float = 1e-12) -> torch.Tensor:
    x1, y1, a1, b1, c1 = g1
    x2, y2, a2, b2, c2 = g2
    a, b, c = (a1 + a2) / 2, (b1 + b2) / 2, (c1 + c2) / 2
    det = (a * b - c.pow(2)).clamp(min=eps)
    dx, dy = x1 - x2, y1 - y2
    t1 = (b * dx.pow(2) + a * dy.pow(2) - 2 * c * dx * dy) / det / 8
    det1 = (a1 * b1 - c1.pow(2)).clamp(min=eps)
    det2 = (a2 * b2 - c2.pow(2)).clamp(min=eps)
    t2 = 0.5 * (det.log() - 0.5 * (det1.log() + det2.log()))
    bd = (t1 + t2).clamp(min=0.0, max=100.0)
    # expm1 keeps 1 - exp(-bd) exact for tiny bd; the eps only keeps sqrt's gradient finite at 0
    hd = (-torch.expm1(-bd) + eps).sqrt()
    return (1.0 - hd).clamp(min=0.0)


def probiou(rb1: torch.Tensor, rb2: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """ProbIoU (Llerena et al. 2021) of rotated boxes ``[..., 5]``, elementwise: ``1 - Hellinger distance``.

    The Bhattacharyya distance between the two boxes' Gaussians,
    ``B = 1/8 d^T S^-1 d + 1/2 ln(det S / sqrt(det S1 det S2))`` with ``S = (S1 + S2) / 2``, gives
    ``1 - sqrt(1 - exp(-B))``: 1 for identical boxes, towards 0 with distance; symmetric, scale and
    rotation invariant, and differentiable in every parameter including theta.
    """
    return _probiou(_gaussian(rb1), _gaussian(rb2), eps)


def _kld(gp: tuple, gt: tuple, tau: float = 1.0, eps: float = 1e-7) -> tuple[torch.Tensor, torch.Tensor]:
    xp, yp, ap, bp, cp = gp
    xt, yt, at, bt, ct = gt
    dett = (at * bt - ct.pow(2)).clamp(min=eps)
    detp = (ap * bp - cp.pow(2)).clamp(min=eps)
    # inverse of the target covariance: [[bt, -ct], [-ct, at]] / dett
    dx, dy = xp - xt, yp - yt
    maha = (bt * dx.pow(2) + at * dy.pow(2) - 2 * ct * dx * dy) / dett
    trace = (bt * ap + at * bp - 2 * ct * cp) / dett
    kld = 0.5 * (trace + maha - 2 + torch.log(dett / detp))
    sim = 1.0 / (tau + torch.log1p(kld.clamp(min=0)))
    return 1.0 - sim, sim


def kld_loss(pred: torch.Tensor, target: torch.Tensor, tau: float = 1.0, eps: float = 1e-7):
    """KLD box loss (Yang et al. 2021), elementwise: ``1 - 1 / (tau + ln(1 + KL(N_pred || N_target)))``.

    Returns (loss, similarity) where similarity = 1 - loss is in (0, 1] and 1 only for identical boxes.
    """
    return _kld(_gaussian(pred), _gaussian(target), tau, eps)


def soft_rotation(theta_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The expected doubled-angle vector ``(E[cos 2a], E[sin 2a])`` under the softmax of the CSL logits.

    This is how the rotation-aware box losses see the predicted angle. Because a box's covariance
    is linear in (cos 2t, sin 2t) (see :func:`_gaussian`), plugging in the expectation gives the
    expected covariance of the box over the predicted angle distribution. It is differentiable with
    bounded gradients everywhere (no atan2 singularity when the bins are near uniform, as at
    initialisation), has no seam at +-pi/2, and equals the argmax box once the distribution is sharp;
    a spread-out angle distribution makes the predicted box rounder, which ProbIoU/KLD penalise, so
    the box loss also pushes the angle bins towards the right angle. The vector's direction is the
    circular mean (:func:`soft_theta`). It uses all bins rather than a window around the target so
    that the prediction does not depend on the target.
    """
    ang = 2 * bin_angles(theta_logits.shape[-1], theta_logits)
    p = theta_logits.softmax(-1)
    return p @ ang.cos(), p @ ang.sin()


def soft_theta(theta_logits: torch.Tensor) -> torch.Tensor:
    """The circular mean angle of the softmax over CSL bins (period pi): ``atan2(E sin 2a, E cos 2a) / 2``."""
    c, s = soft_rotation(theta_logits)
    return 0.5 * torch.atan2(s, c)


_BIN_CACHE: dict[tuple, torch.Tensor] = {}
_TURN_CACHE: dict[tuple, torch.Tensor] = {}
TURN_ASPECTS = 41  # aspect ratios 1 .. 32, evenly spaced in log r, for turn_cost's table
MAX_ASPECT = 32.0


def turn_cost(nbins: int, like: torch.Tensor) -> torch.Tensor:
    """``[TURN_ASPECTS, nbins]``: ``1 - IoU`` of a box of aspect ratio r with itself turned by
    ``k * pi / nbins`` about its centre, exact (``ops.rbox_iou``), for r = 1 .. 32 evenly in log r.
    Zero at k = 0 for every r; a square's cost comes back to 0 at a quarter turn, a long box's does not."""
    key = (nbins, like.device, like.dtype)
    if key not in _TURN_CACHE:
        r = torch.logspace(0.0, math.log10(MAX_ASPECT), TURN_ASPECTS, dtype=torch.float64)
        turn = torch.arange(nbins, dtype=torch.float64) * (math.pi / nbins)
        rr, tt = r.repeat_interleave(nbins), turn.repeat(TURN_ASPECTS)
        zero, one = torch.zeros_like(rr), torch.ones_like(rr)
        box = torch.stack((zero, zero, rr, one, zero), 1)
        iou = ops.rbox_iou(box, torch.cat((box[:, :4], tt[:, None]), 1), aligned=True)
        _TURN_CACHE[key] = (1.0 - iou).clamp(0, 1).view(TURN_ASPECTS, nbins).to(like.device, like.dtype)
    return _TURN_CACHE[key]


def expected_turn_loss(theta_logits: torch.Tensor, tbox: torch.Tensor, ttheta: torch.Tensor) -> torch.Tensor:
    """``sum_k p_k (1 - IoU(box, box turned by angle_k - theta))`` with ``p`` the softmax of the bins:
    the overlap the predicted angle distribution is expected to lose, exactly, per target ``[m]``.

    Unlike ProbIoU (a Gaussian, round for a square) it sees a square's orientation (a square turned by
    45 degrees keeps IoU 0.71 with itself), and the expectation is minimised by a sharp peak at the right
    angle, or, for a square, at either of its two. The cost depends on the aspect ratio and the turn
    only: a table (:func:`turn_cost`) interpolated in log aspect, no IoU computed in training."""
    logits = theta_logits.float()
    nbins = logits.shape[-1]
    table = turn_cost(nbins, logits)
    r = (tbox[:, 2] / tbox[:, 3].clamp(min=1e-9)).float().clamp(1.0, MAX_ASPECT)
    pos = r.log() / math.log(MAX_ASPECT) * (TURN_ASPECTS - 1)
    i0 = pos.floor().long().clamp(max=TURN_ASPECTS - 2)
    frac = (pos - i0)[:, None]
    row = table[i0] * (1 - frac) + table[i0 + 1] * frac  # [m, nbins]: the cost of a turn by k bins
    k = torch.arange(nbins, device=logits.device)
    turn = torch.remainder(k[None] - torch.as_tensor(ops.csl_bin(ttheta, nbins)).to(k)[:, None], nbins)
    return (logits.softmax(-1) * row.gather(1, turn)).sum(-1)


def squareness(tbox: torch.Tensor) -> torch.Tensor:
    """``clamp(2 / (2 r - 1) - 1, 0, 1)`` for aspect ratio ``r = long / short`` of each box ``[m, >=4]``: how
    much the box turned by a quarter turn still overlaps itself. 1 for a square, 0.67 at r = 1.1, 0 from
    r = 1.5 on: the weight of the angle terms meant for boxes whose long side is a matter of a pixel."""
    r = tbox[:, 2] / tbox[:, 3].clamp(min=1e-9)
    return (2.0 / (2.0 * r - 1.0) - 1.0).clamp(0.0, 1.0)


def bin_angles(nbins: int, like: torch.Tensor) -> torch.Tensor:
    """The angle of each CSL bin, from ``ops.csl_bin_angle`` so the layout is defined once."""
    key = (nbins, like.device, like.dtype)
    if key not in _BIN_CACHE:
        ang = ops.csl_bin_angle(torch.arange(nbins, dtype=torch.float64), nbins)
        _BIN_CACHE[key] = ang.to(like.device, like.dtype)
    return _BIN_CACHE[key]


def one_target_per_cell(cell: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Indices of the assignments to keep so that each predictor (``cell``: image, anchor and grid cell as
    one integer) regresses to one target: the one whose centre (``offset`` from the cell's corner, grid
    units) is nearest the cell's centre; ties go to the earlier assignment.

    YOLOv5 lets a predictor take every target assigned to it, and in a row of parked cars one predictor
    gets two or three neighbours: the box that best overlaps all of them is larger than any one car."""
    order = torch.argsort((offset - 0.5).square().sum(1), stable=True)  # nearest first
    order = order[torch.argsort(cell[order], stable=True)]  # grouped by cell, nearest first in each
    grouped = cell[order]
    first = torch.ones_like(grouped, dtype=torch.bool)
    first[1:] = grouped[1:] != grouped[:-1]
    return torch.sort(order[first]).values


def _detect_head(model: nn.Module) -> nn.Module:
    """The Detect module: the one exposing ``anchors``, ``stride`` and ``nbins`` (works through DDP)."""
    for m in model.modules():
        if hasattr(m, "anchors") and hasattr(m, "stride") and hasattr(m, "nbins"):
            return m
    raise TypeError("model has no Detect head (a module with anchors, stride and nbins)")


class OBBLoss:
    """YOLOv5-OBB loss; ``loss, items = criterion(raw_preds, targets)``.

    ``items`` is a detached tensor ``[4] = (box, obj, cls, theta)`` (already multiplied by their gains,
    not by the batch size). ``hyp`` keys (defaults in ``cfg/hyp.default.yaml``): gains ``box obj cls theta``,
    ``cls_pw obj_pw theta_pw`` (BCE positive weights), ``anchor_t``, ``label_smoothing``,
    ``csl_radius``, ``csl_window``, ``box_loss`` in ``ciou | probiou | kld`` and ``assign`` in
    ``shared | unique | mixed`` (:func:`one_target_per_cell`; ``mixed``: unique for the box and objectness,
    shared for the class and angle).
    """

    def __init__(self, model: nn.Module, hyp: dict | None = None):
        det = _detect_head(model)
        self.hyp = load_hyp(hyp)  # a partial dict gets the other keys from the defaults
        if self.hyp["box_loss"] not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {self.hyp['box_loss']!r}")
        self.nc, self.na, self.nbins = int(det.nc), int(det.na), int(det.nbins)
        self.nl = int(getattr(det, "nl", len(det.stride)))
        self.stride = det.stride.detach().float().clone()
        # anchors in grid units of each level: pixels / stride
        anchors = det.anchors.detach().float()
        self.anchors = anchors / self.stride.view(-1, 1, 1).to(anchors.device)
        self.balance = BALANCE if self.nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02][: self.nl]
        self.gr = 1.0
        self.cp, self.cn = smooth_bce(self.hyp["label_smoothing"])
        self.det = det
        det.keep_inputs = bool(self.hyp["theta_square"]) and self.hyp["theta_square_grad"] == "head"

    def _bce(self, pw: float, device: torch.device) -> nn.BCEWithLogitsLoss:
        return nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pw], device=device))

    def __call__(self, preds: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = preds[0].device
        h = self.hyp
        bce_obj = self._bce(h["obj_pw"], device)
        lbox, lobj, lsize = (torch.zeros((), device=device) for _ in range(3))
        terms = torch.zeros(4, device=device)  # class, angle (CSL), angle overlap, near-square angle
        assign = h["assign"]
        tcls, tbox, indices, anch, ttheta = self.build_targets(
            preds, targets, "unique" if assign == "mixed" else assign
        )
        # mixed: the box and objectness from the nearest target only, class and angle from every target
        every = self.build_targets(preds, targets, "shared") if assign == "mixed" else None
        acls, abox, aindices, _, atheta = every or (tcls, tbox, indices, anch, ttheta)
        c0 = 5 + self.nc  # first theta channel
        for i, pi in enumerate(preds):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=device)
            if b.shape[0]:
                ps = pi[b, a, gj, gi].float()  # the box maths in float32 also under autocast
                pxy = ps[:, :2].sigmoid() * 2 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * anch[i]
                pbox = torch.cat((pxy, pwh), 1)
                iou = self._box_loss(pbox, ps[:, c0:], tbox[i], ttheta[i])
                lbox = lbox + (1.0 - iou).mean()
                if h["box_size"]:
                    lsize = lsize + size_loss(pwh, tbox[i][:, 2:4]).mean()
                score = self._obj_score(iou, pbox, ps[:, c0:], tbox[i], ttheta[i]).to(tobj.dtype)
                tobj[b, a, gj, gi] = (1.0 - self.gr) + self.gr * score
            if aindices[i][0].shape[0]:
                ps = pi[aindices[i]].float() if every else ps  # the rows gathered above unless mixed
                terms = terms + self._class_angle_terms(i, ps, aindices[i], acls[i], abox[i], atheta[i])
            lobj = lobj + bce_obj(pi[..., 4], tobj) * self.balance[i]
        lcls, ltheta, lrot, lsq = terms
        lbox, lobj, lcls, ltheta = lbox * h["box"], lobj * h["obj"], lcls * h["cls"], ltheta * h["theta"]
        ltheta = ltheta + lrot * h["theta_iou"] + lsq * h["theta_square"]
        lbox = lbox + lsize * h["box_size"]
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls + ltheta) * bs, torch.stack((lbox, lobj, lcls, ltheta)).detach()

    def _class_angle_terms(
        self, i: int, ps: torch.Tensor, index: tuple[torch.Tensor, ...], tcls: torch.Tensor,
        tbox: torch.Tensor, ttheta: torch.Tensor,
    ) -> torch.Tensor:
        """``[4]`` = the class BCE, the CSL angle loss, the angle's overlap term and the near-square term of
        the predictions ``ps`` (level ``i``, cells ``index``), each a mean over them and not yet gained."""
        h, device, c0 = self.hyp, ps.device, 5 + self.nc
        lcls, lrot, lsq = (torch.zeros((), device=device) for _ in range(3))
        if self.nc > 1:
            t = torch.full_like(ps[:, 5:c0], self.cn)
            t[torch.arange(ps.shape[0], device=device), tcls] = self.cp
            lcls = self._bce(h["cls_pw"], device)(ps[:, 5:c0], t)
        tt = self.theta_target(ttheta, tbox).to(ps.dtype)
        if h["theta_iou"]:
            rot = expected_turn_loss if h["theta_iou_form"] == "expected" else self._rotation_loss
            lrot = rot(ps[:, c0:], tbox, ttheta).mean()
        if h["theta_square"]:  # the mean over the near-square boxes, undiluted (0 when none)
            w = squareness(tbox)
            # only the gradient differs: a loss without one (validation, another model's logits) reads
            # the logits it is given
            head = h["theta_square_grad"] == "head" and torch.is_grad_enabled() and ps.requires_grad
            logits = self._head_theta(i, index) if head else ps[:, c0:]
            sq = expected_turn_loss(logits, tbox, ttheta) * w
            lsq = sq.sum() / w.sum().clamp(min=1e-9)
        if h["theta_loss"] == "ce":  # softmax cross-entropy against the normalised window
            q = tt / tt.sum(1, keepdim=True)
            ltheta = -(q * ps[:, c0:].log_softmax(1)).sum(1).mean()
        else:
            ltheta = self._bce(h["theta_pw"], device)(ps[:, c0:], tt)
        return torch.stack((lcls, ltheta, lrot, lsq))

    def _head_theta(self, i: int, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The angle logits ``[n, nbins]`` at the assigned cells of level ``i``, recomputed by the head's last
        1x1 convolution from its detached inputs: a loss on them teaches that convolution only, so a
        term meant for one kind of box (``theta_square_grad: head``) cannot pull the shared features."""
        b, a, gj, gi = index
        inputs = getattr(self.det, "inputs", None)
        if inputs is None:
            raise RuntimeError("theta_square_grad: head needs the Detect head's inputs (keep_inputs)")
        conv, c0 = self.det.m[i], 5 + self.nc
        x = inputs[i][b, :, gj, gi].float()  # [n, C]
        weight = conv.weight.view(self.na, self.det.no, -1)[:, c0:].float().flatten(0, 1)  # [na * nbins, C]
        bias = conv.bias.view(self.na, -1)[:, c0:].float().flatten()
        every = (x @ weight.T + bias).view(-1, self.na, self.nbins)  # every anchor's bins: a small matmul
        return every[torch.arange(len(a), device=a.device), a]

    def theta_target(self, ttheta: torch.Tensor, tbox: torch.Tensor) -> torch.Tensor:
        """The CSL target ``[m, nbins]`` of each assigned box: the window at its angle and, for a box
        near square, a second window a quarter turn away (``csl_square``).

        A square is the same box at theta and theta + pi/2, and which side counts as the long one
        flips with a pixel of labelling noise (a plane whose span equals its length): one window
        teaches the two angles as a contradiction. The second window's height is how much the box
        turned by pi/2 still overlaps itself, ``clamp(2 / (2 r - 1) - 1, 0, 1)`` for aspect ratio
        ``r = long / short``: 1 for a square, 0.67 at r = 1.1, none from r = 1.5 on."""
        h = self.hyp

        def window(theta: torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(ops.csl_encode(theta, self.nbins, h["csl_radius"], h["csl_window"]))

        tt = window(ttheta)
        if h["csl_square"] and ttheta.numel():
            turned = window(ttheta + math.pi / 2)
            height = squareness(tbox) * h["csl_square"]
            tt = torch.maximum(tt, turned.to(tt) * height[:, None].to(tt))
        return tt

    @staticmethod
    def _rotation_loss(theta_logits: torch.Tensor, tbox: torch.Tensor, ttheta: torch.Tensor) -> torch.Tensor:
        """``1 - ProbIoU`` of the target box against itself turned by the predicted angle distribution.

        Only the angle is learned here (centre and sides are the target's), and it costs what it costs
        the overlap: nothing for a round box, most for a long thin one, where a few degrees lose IoU 0.5.
        The CSL bins alone give every object the same angle gradient, and a weak one (a mean over 180 bins).
        """
        tr = torch.cat((tbox, ttheta[:, None].to(tbox.dtype)), 1)
        gp = _gaussian(tr, soft_rotation(theta_logits.float()))
        return 1.0 - _probiou(gp, _gaussian(tr))

    @torch.no_grad()
    def _obj_score(
        self, iou: torch.Tensor, pbox: torch.Tensor, theta_logits: torch.Tensor, tbox: torch.Tensor,
        ttheta: torch.Tensor,
    ) -> torch.Tensor:
        """The objectness target: the box loss's similarity (``obj_target: box``) or the rotated IoU of
        the predicted box at its argmax angle bin (``rotated``), the overlap that AP counts, so that a
        detection whose angle is off scores lower and ranks below the well-placed ones."""
        if self.hyp["obj_target"] == "box":
            return iou.detach().clamp(0)
        ang = bin_angles(theta_logits.shape[-1], theta_logits)[theta_logits.argmax(1)]
        pr = torch.cat((pbox[:, :2], pbox[:, 2:4].clamp(min=1e-3), ang[:, None]), 1).double()
        tr = torch.cat((tbox, ttheta[:, None].to(tbox.dtype)), 1).double()
        return ops.rbox_iou(pr, tr, aligned=True).float().clamp(0, 1)

    def _box_loss(
        self, pbox: torch.Tensor, theta_logits: torch.Tensor, tbox: torch.Tensor, ttheta: torch.Tensor
    ) -> torch.Tensor:
        """The IoU-like similarity whose ``1 - x`` is the box loss; also the objectness target."""
        kind = self.hyp["box_loss"]
        if kind == "ciou":
            return bbox_ciou(pbox, tbox)
        if kind == "rciou":
            return bbox_ciou(*_in_target_frame(pbox, tbox, ttheta))
        gp = _gaussian(pbox, soft_rotation(theta_logits))
        gt = _gaussian(torch.cat((tbox, ttheta[:, None].to(tbox.dtype)), 1))
        if kind == "probiou":
            return _probiou(gp, gt)
        return _kld(gp, gt)[1]

    @torch.no_grad()
    def build_targets(self, preds: list[torch.Tensor], targets: torch.Tensor, assign: str | None = None):
        """YOLOv5 assignment of targets ``[n, 7]`` (pixels) to anchors and cells of each level.

        Returns per level lists: ``tcls`` [m] int64, ``tbox`` [m, 4] (xy offset from the cell's
        corner in (-0.5, 1.5), long/short in grid units), ``indices`` (image, anchor, gy, gx) int64,
        ``anch`` [m, 2] anchors in grid units, and ``ttheta`` [m] target angles (radians). ``assign``
        (default ``hyp['assign']``) is ``unique`` to keep one target per predictor; any other value keeps all.
        """
        device = preds[0].device
        targets = targets.to(device=device, dtype=torch.float32)
        na, nt = self.na, targets.shape[0]
        tcls, tbox, indices, anch, ttheta = [], [], [], [], []
        ai = torch.arange(na, device=device, dtype=torch.float32).view(na, 1).repeat(1, nt)
        # [na, nt, 8] = img, cls, cx, cy, w, h, theta, anchor
        t_all = torch.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)
        g = 0.5
        off = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=device).float() * g
        for i, pi in enumerate(preds):
            anchors = self.anchors[i].to(device)
            ny, nx = pi.shape[2], pi.shape[3]
            gain = torch.ones(8, device=device)
            gain[2:6] = 1.0 / float(self.stride[i])
            t = t_all * gain
            if nt:
                r = t[..., 4:6] / anchors[:, None]
                j = torch.max(r, 1 / r).max(2)[0] < self.hyp["anchor_t"]
                t = t[j]
                gxy = t[:, 2:4]
                gxi = torch.tensor([nx, ny], device=device) - gxy
                j, k = ((gxy % 1 < g) & (gxy > 1)).T
                lft, m = ((gxi % 1 < g) & (gxi > 1)).T
                j = torch.stack((torch.ones_like(j), j, k, lft, m))
                t = t.repeat((5, 1, 1))[j]
                offsets = (torch.zeros_like(gxy)[None] + off[:, None])[j]
            else:
                t = t_all[0]
                offsets = torch.zeros((0, 2), device=device)
            b, c = t[:, 0].long(), t[:, 1].long()
            gxy, gwh, a = t[:, 2:4], t[:, 4:6], t[:, 7].long()
            gij = (gxy - offsets).long()
            gi, gj = gij[:, 0].clamp(0, nx - 1), gij[:, 1].clamp(0, ny - 1)
            if (assign or self.hyp["assign"]) == "unique":
                cell = ((b * na + a) * ny + gj) * nx + gi
                keep = one_target_per_cell(cell, gxy - torch.stack((gi, gj), 1))
                b, c, a, gi, gj, gxy, gwh, t = (x[keep] for x in (b, c, a, gi, gj, gxy, gwh, t))
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - torch.stack((gi, gj), 1), gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
            ttheta.append(t[:, 6])
        return tcls, tbox, indices, anch, ttheta
