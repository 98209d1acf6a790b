"""Validation with the real oriented-box metric (DOTA Task1 semantics), reusable outside training.

Predictions are post-processed (conf 0.001, rotated NMS), mapped back from the letterboxed input to
original image pixels, turned into polygons and matched against the ground-truth polygons of the
dataset's samples (difficult objects neither TP nor FP, as DOTA) with ``obbslim.eval.evaluate_images``.
Reported: mAP50 (VOC07 11-point, the DOTA number), mAP50 (VOC12 all-point), mAP50-95 (VOC12 style
average over IoU 0.50:0.05:0.95), and precision/recall at the confidence of best mean F1 (YOLOv5).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from obbslim.eval import evaluate_images, format_table
from obbslim.inference.postprocess import postprocess, scale_rboxes
from obbslim.ops import rbox2poly
from obbslim.utils.device import de_parallel

IOU_THRS = [round(0.5 + 0.05 * i, 2) for i in range(10)]


FITNESS = "0.1 mAP50 + 0.9 mAP50-95"  # what fitness() computes, for the logs


def fitness(metrics: dict[str, float]) -> float:
    """What best.pt is chosen by: YOLOv5's ``0.1 mAP50 + 0.9 mAP50-95`` (Ultralytics 8: mAP50-95 alone).

    mAP50 alone, the number DOTA reports, picks the epoch whose boxes merely touch their objects: on two
    synthetic tasks it chose epochs with AP75 0.166 and 0.149 where this rule chose 0.179 and 0.190, at
    mAP50 within 0.01 (README, "Which epoch is best.pt")."""
    return 0.1 * float(metrics.get("mAP50", 0.0)) + 0.9 * float(metrics.get("mAP50_95", 0.0))


def _decoded_and_raw(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list, int | None]:
    """The model's decoded boxes without the 180 angle-bin probabilities where it can (validation
    reads only the argmax angle; their sigmoid and copy cost as much as the NMS), its raw levels, and
    its number of classes when the probabilities were left out."""
    head = getattr(model, "detect", None)
    if head is None or not hasattr(model, "forward_raw"):
        return (*model(x), None)
    raw = model.forward_raw(x)
    return head.decode(raw, theta_probs=False), raw, int(head.nc)


@torch.no_grad()
def validate(
    model: nn.Module,
    dataloader: Any,
    names: list[str] | None = None,
    conf_thr: float = 0.001,
    iou_thr: float = 0.4,
    max_det: int = 300,
    criterion: Callable | None = None,
    half: bool = False,
    verbose: bool = False,
    progress: bool = True,
    timer: dict[str, float] | None = None,
    merge: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``dataloader`` (an obbslim validation loader; its dataset's ``samples`` hold
    the ground truth in original pixels). Returns ``{mAP50, mAP50_voc12, mAP50_95, precision, recall,
    per_class (VOC07 AP50 by class name), n_images, n_det, loss items if criterion}``.

    The model may be an EMA copy, a loaded checkpoint or a model in training (DDP-wrapped too): it runs
    in eval mode and gets its previous mode back. ``half`` runs the forward under CUDA autocast.
    ``merge``: merge-NMS (``inference.postprocess``), as ``obbslim detect`` and ``val`` by default.
    mAPs average over the classes present in the split's ground truth (the DOTA devkit default).
    ``timer``: a dict that gets seconds added under ``preprocess`` (to device, to float), ``inference``,
    ``nms`` (postprocess and un-letterbox) and the count of ``images`` (for per-image speeds).
    """
    model = de_parallel(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    dataset = dataloader.dataset
    names = list(names if names is not None else getattr(model, "names", []))
    by_file = {str(s.im_file): s for s in dataset.samples}
    gts, dets, loss_sum, nb = [], [], None, 0
    bar = tqdm(dataloader, desc="  validating", leave=False, disable=not progress,
               bar_format="{l_bar}{bar:10}{r_bar}")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for imgs, targets, files, _, ratio_pads in bar:
        sync()
        t0 = time.perf_counter()
        imgs = imgs.to(device, non_blocking=True)
        x = imgs.float() / 255
        sync()
        t1 = time.perf_counter()
        with torch.autocast(device.type, enabled=half and device.type == "cuda"):
            decoded, raw, nc = _decoded_and_raw(model, x)
        sync()
        t2 = time.perf_counter()
        if criterion is not None:
            _, items = criterion([r.float() for r in raw], targets.to(device))
            loss_sum = items if loss_sum is None else loss_sum + items
            nb += 1
        t2b = time.perf_counter()  # the loss is neither inference nor NMS
        outs = postprocess(decoded.float(), conf_thr=conf_thr, iou_thr=iou_thr, max_det=max_det,
                           multi_label=True, nc=nc, merge=merge)
        for out, f, rp in zip(outs, files, ratio_pads):
            s = by_file[str(f)]
            rb = scale_rboxes(out["rboxes"], rp, imgs.shape[2:], s.shape[:2]).cpu()
            polys = rbox2poly(rb).numpy().reshape(-1, 8)
            dets.append((polys, out["scores"].cpu().numpy(), out["cls"].cpu().numpy()))
            gts.append((np.asarray(s.polys, np.float64).reshape(-1, 8), s.cls, s.difficult))
        if timer is not None:
            t3 = time.perf_counter()
            spent = {"preprocess": t1 - t0, "inference": t2 - t1, "nms": t3 - t2b, "images": len(files)}
            for k, v in spent.items():
                timer[k] = timer.get(k, 0) + v
    model.train(was_training)
    metrics = summarize(gts, dets, names)
    if loss_sum is not None:
        for k, v in zip(("box", "obj", "cls", "theta"), (loss_sum / max(nb, 1)).tolist()):
            metrics[f"val_{k}"] = v
    if verbose:
        res = metrics["voc07"]
        print(format_table({**res, "per_class": {n: res["per_class"][n] for n in metrics["per_class"]}}))
    return metrics


def summarize(gts: list[tuple], dets: list[tuple], names: list[str]) -> dict[str, Any]:
    """The metric dict from per-image ground truth and detections (original pixel polygons)."""
    voc07 = evaluate_images(gts, dets, names, metric="voc07", iou_thr=0.5)
    voc12 = evaluate_images(gts, dets, names, metric="voc12", iou_thr=IOU_THRS)
    present = [n for n in names if voc07["n_gt"].get(n, 0) > 0]  # classes absent from the split: no AP

    def mean(res: dict) -> float:
        return float(np.mean([res["per_class"][n] for n in present])) if present else 0.0

    p, r = best_f1_pr(voc07, present)
    return {
        "mAP50": mean(voc07),
        "mAP50_voc12": mean(voc12[0]),
        "mAP50_95": float(np.mean([mean(res) for res in voc12])),
        "precision": p,
        "recall": r,
        "per_class": {n: float(voc07["per_class"][n]) for n in present},
        "n_images": len(gts),
        "n_det": int(sum(len(d[1]) for d in dets)),
        "voc07": voc07,
        "voc12": voc12,  # one result per IoU threshold of IOU_THRS
    }


def best_f1_pr(res: dict, classes: list[str]) -> tuple[float, float]:
    """Mean precision and recall over classes at the confidence that maximises mean F1 (YOLOv5)."""
    if not classes:
        return 0.0, 0.0
    p, r = pr_at_best_f1(res, classes)
    return float(p.mean()), float(r.mean())


def pr_at_best_f1(res: dict, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision and recall [len(classes)] at the one confidence that maximises mean F1."""
    if not classes:
        return np.zeros(0), np.zeros(0)
    px = np.linspace(0, 1, 1000)
    p = np.zeros((len(classes), px.size))
    r = np.zeros_like(p)
    for k, n in enumerate(classes):
        s = np.asarray(res["scores"][n])
        if s.size:
            r[k] = np.interp(-px, -s, res["recall"][n], left=0)
            p[k] = np.interp(-px, -s, res["precision"][n], left=1)
    f1 = 2 * p * r / (p + r + 1e-16)
    i = int(f1.mean(0).argmax())
    return p[:, i], r[:, i]
