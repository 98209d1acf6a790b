"""From the model's decoded output to final rotated detections per image.

``decoded`` is the eval-mode output of the Detect head, ``[B, N, 6 + nc + nbins]``:
``[..., :5]`` the rbox (cx, cy, long, short, theta) in input pixels, ``[..., 5]`` objectness,
``[..., 6:6 + nc]`` class probabilities and ``[..., 6 + nc:]`` the theta bin probabilities.
"""

from __future__ import annotations

import numpy as np
import torch

from obbslim import ops


def postprocess(
    decoded: torch.Tensor,
    conf_thr: float = 0.001,
    iou_thr: float = 0.4,
    max_det: int = 300,
    nms_per_class: bool = True,
    max_nms: int = 30000,
    theta_refine: bool = False,
    multi_label: bool = False,
    nbins: int = 180,
    nc: int | None = None,
    merge: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """Confidence filter + rotated NMS, like YOLOv5's ``non_max_suppression`` for rboxes.

    Returns one dict per image with ``rboxes`` [n, 5] (normalised with ``ops.norm_rbox``), ``scores``
    [n] and ``cls`` [n] int64, sorted by descending score. The score is obj x cls.
    ``multi_label=True`` lets one box carry every class whose score is above ``conf_thr`` (YOLOv5
    turns it on for validation, where it adds ~0.5 mAP at low conf; keep it off to detect).
    ``nms_per_class`` runs NMS within each class (boxes of different classes never suppress each
    other). At most ``max_nms`` best candidates enter NMS and ``max_det`` come out.
    ``theta_refine`` replaces the argmax-bin angle by ``ops.csl_refine``: a sub-bin circular mean of
    the bin angles within +-2 bins of the peak, weighted by their probabilities.
    A decoded tensor without the theta-probability columns, ``[B, N, 6 + nc]`` (the ONNX export's
    output), is accepted with ``nbins=0`` or with ``nc`` given; ``theta_refine`` then cannot be used.
    ``merge`` (merge-NMS, :func:`obbslim.ops.merge_rotated`): each kept box becomes the score-weighted
    mean of the boxes of its class it overlaps by more than ``iou_thr`` and that score at least a quarter
    of it; ``False`` keeps the best-scored box as it is (plain NMS). Scores and order do not change.
    """
    if nc is None:
        nc = decoded.shape[-1] - 6 - nbins
    elif decoded.shape[-1] not in (6 + nc, 6 + nc + nbins):
        raise ValueError(f"decoded has {decoded.shape[-1]} channels; expected 6 + {nc} (+ {nbins})")
    if nc < 1:
        raise ValueError(f"decoded has {decoded.shape[-1]} channels; expected 6 + nc + {nbins}")
    if theta_refine and decoded.shape[-1] == 6 + nc:
        raise ValueError("theta_refine needs the theta-probability columns, absent from this decoded tensor")
    out = []
    for x in decoded:
        x = x[x[:, 5] > conf_thr]
        scores = x[:, 6 : 6 + nc] * x[:, 5:6]
        if multi_label:
            i, j = (scores > conf_thr).nonzero(as_tuple=True)
            conf = scores[i, j]
        else:
            conf, j = scores.max(1)
            i = (conf > conf_thr).nonzero(as_tuple=True)[0]
            conf, j = conf[i], j[i]
        if conf.numel() > max_nms:
            top = conf.topk(max_nms).indices
            i, j, conf = i[top], j[top], conf[top]
        rb = x[i, :5].clone()
        if theta_refine and rb.shape[0]:
            # ops.csl_refine weights by sigmoid(logits); these are already probabilities
            rb[:, 4] = ops.csl_refine(torch.logit(x[i, 6 + nc :], eps=1e-6))
        rb = ops.norm_rbox(rb)
        cls = j.long()
        if nms_per_class:  # max_keep: NMS stops once the max_det best are known (the same result)
            keep = ops.batched_nms_rotated(rb, conf, cls, iou_thr, max_keep=max_det)
        else:
            keep = ops.nms_rotated(rb, conf, iou_thr, max_keep=max_det)
        keep = keep[:max_det]
        groups = cls if nms_per_class else None
        boxes = ops.merge_rotated(rb, conf, keep, iou_thr, groups) if merge else rb[keep]
        out.append({"rboxes": boxes, "scores": conf[keep], "cls": cls[keep]})
    return out


def scale_rboxes(rboxes, ratio_pad=None, from_shape=None, to_shape=None):
    """Undo the letterbox: map rboxes from the network input (``from_shape`` (h, w)) to the original image.

    ``ratio_pad`` is the dataset's ``((gain_w, gain_h), (pad_w, pad_h))``; without it the gain and the
    centred padding are derived from ``from_shape`` and ``to_shape`` (h, w) as YOLOv5's
    ``scale_boxes`` does. Centres lose the padding and are divided by their axis' gain; w and h by
    the mean gain (the two differ only by the resize's rounding); theta is kept (a uniform scale keeps
    angles). Numpy or torch in, same type out (a copy).
    """
    if ratio_pad is None:
        if from_shape is None or to_shape is None:
            raise ValueError("scale_rboxes needs ratio_pad or both from_shape and to_shape")
        gain = min(from_shape[0] / to_shape[0], from_shape[1] / to_shape[1])
        pad = ((from_shape[1] - to_shape[1] * gain) / 2, (from_shape[0] - to_shape[0] * gain) / 2)
        gx = gy = gain
    else:
        (gx, gy), pad = ratio_pad
        gain = (gx + gy) / 2
    out = rboxes.clone() if isinstance(rboxes, torch.Tensor) else np.array(rboxes, copy=True)
    out[..., 0] = (out[..., 0] - pad[0]) / gx
    out[..., 1] = (out[..., 1] - pad[1]) / gy
    out[..., 2:4] /= gain
    return out
