"""SGD with YOLOv5's three parameter groups, its LR schedules and its warmup.

Weight decay applies to convolution (and linear) weights only: BatchNorm weights and all biases are
excluded, because decaying them shrinks the scale/shift parameters without regularising anything.
The LR is a pure function of (epoch, iteration), so a resumed run needs no scheduler state.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn


def accumulate_steps(batch_size: int, nbs: int) -> int:
    """Micro-batches per optimizer step, so the effective batch is about ``nbs`` images."""
    return max(round(nbs / batch_size), 1)


def scaled_weight_decay(weight_decay: float, batch_size: int, nbs: int) -> float:
    """YOLOv5 scales the decay with the effective batch (batch * accumulate) relative to ``nbs``."""
    return weight_decay * batch_size * accumulate_steps(batch_size, nbs) / nbs


def param_groups(model: nn.Module) -> tuple[list, list, list]:
    """(decayed weights, BN weights, biases) -- every trainable parameter lands in exactly one."""
    decay, bn, bias = [], [], []
    norm_types = tuple(v for k, v in nn.__dict__.items() if "Norm" in k and isinstance(v, type))
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "bias":
                bias.append(p)
            elif isinstance(module, norm_types):
                bn.append(p)
            else:
                decay.append(p)
    return decay, bn, bias


def build_optimizer(
    model: nn.Module, lr: float, momentum: float, weight_decay: float, name: str
) -> torch.optim.Optimizer:
    """Optimizer with groups [biases, decayed weights, BN weights] (YOLOv5 order: biases first)."""
    decay, bn, bias = param_groups(model)
    if name == "SGD":
        opt = torch.optim.SGD(bias, lr=lr, momentum=momentum, nesterov=True, weight_decay=0.0)
    elif name in ("Adam", "AdamW"):
        cls = torch.optim.Adam if name == "Adam" else torch.optim.AdamW
        opt = cls(bias, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        raise ValueError(f"unknown optimizer {name!r}: use SGD, Adam or AdamW")
    opt.add_param_group({"params": decay, "weight_decay": weight_decay})
    opt.add_param_group({"params": bn, "weight_decay": 0.0})
    for g in opt.param_groups:
        g["initial_lr"] = lr
    return opt


def resolve_optimizer(hyp: dict, n_images: int, batch_size: int, epochs: int, nc: int) -> dict:
    """``optimizer: auto`` picks by the schedule's length, as Ultralytics does: AdamW at
    ``lr0 = 0.002 * 5 / (4 + nc)`` (momentum 0.9, no bias warmup) for up to 10,000 optimizer steps, where
    SGD's high lr cannot settle in time, else SGD at lr0 0.01. Other names pass through unchanged; the
    resolved values are written into the returned hyp, so a resumed run and the saved hyp.yaml agree.
    """
    if hyp["optimizer"] != "auto":
        return dict(hyp)
    nbs = int(hyp["nbs"])
    steps = math.ceil(n_images / max(batch_size, nbs)) * epochs
    if steps > 10_000:
        return {**hyp, "optimizer": "SGD", "lr0": 0.01, "momentum": 0.937}
    return {**hyp, "optimizer": "AdamW", "lr0": round(0.002 * 5 / (4 + nc), 6), "momentum": 0.9,
            "warmup_bias_lr": 0.0}


def lr_lambda(epochs: int, lrf: float, schedule: str = "cosine") -> Callable[[float], float]:
    """LR multiplier per epoch: from 1 at epoch 0 down to ``lrf`` at the last epoch."""
    if schedule == "cosine":  # YOLOv5 one_cycle(1, lrf, epochs)
        return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    if schedule == "linear":
        return lambda x: (1 - x / max(epochs - 1, 1)) * (1.0 - lrf) + lrf
    raise ValueError(f"unknown LR schedule {schedule!r}: use cosine or linear")


def set_lr(
    optimizer: torch.optim.Optimizer,
    hyp: dict,
    lf: Callable[[float], float],
    epoch: int,
    ni: int,
    nw: int,
    batch_size: int,
) -> int:
    """Set each group's LR (and momentum during warmup) for iteration ``ni``; return ``accumulate``.

    During the first ``nw`` iterations the bias LR falls from ``warmup_bias_lr`` while the other LRs
    rise from 0, momentum rises from ``warmup_momentum``, and accumulation ramps from 1 (YOLOv5).
    """
    nbs = int(hyp["nbs"])
    accumulate = accumulate_steps(batch_size, nbs)
    target = lf(epoch)
    if ni < nw:
        xi = [0, nw]
        accumulate = max(1, int(np.interp(ni, xi, [1, nbs / batch_size]).round()))
        for j, g in enumerate(optimizer.param_groups):
            start = hyp["warmup_bias_lr"] if j == 0 else 0.0
            g["lr"] = float(np.interp(ni, xi, [start, g["initial_lr"] * target]))
            if "momentum" in g:
                g["momentum"] = float(np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]]))
    else:
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * target
            if "momentum" in g:
                g["momentum"] = hyp["momentum"]
    return accumulate
