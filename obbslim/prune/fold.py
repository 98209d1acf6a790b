"""Fold the constant activations of pruned channels into the layers that consume them.

A channel pruned by network slimming has gamma ~ 0, so after its BN it is the constant beta and after
SiLU the constant a = SiLU(beta). Deleting it silently drops a * sum_{spatial} K[:, c] from every
consumer conv's outputs. As ZJU-lishuang/yolov5_prune does, we add that term back before the channel
goes: subtract it from the consumer's BN running_mean (the BN sees the same normalised value) or add
it to the consumer conv's bias (the Detect convs, which have no BN).

The constant seen by each consumer is measured, not derived by hand: the pruned channels' gammas are
zeroed and one forward pass records each consumer conv's input on its removed channels. That makes
the fold correct through every path the graph has: concatenations (C3, SPPF, the neck), nearest
upsampling, max-pooling (-inf padding keeps a constant constant) and residual adds (a pruned residual
channel is pruned in all coupled BNs, so the sum of constants is a constant too).

Border approximation: a k x k consumer with zero padding sees the constant on only part of its
window at the image border, so the fold is exact for 1x1 convs and for the interior of padded k x k
convs, and approximate on their 1-2 pixel border ring. Where the consumer conv has neither a following
BatchNorm nor a bias, nothing is folded (counted in the returned stats; none such exist in OBBModel).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def _owner_bn(model: nn.Module) -> dict[nn.Conv2d, nn.BatchNorm2d]:
    """conv -> the BatchNorm2d that directly follows it inside an obbslim Conv block."""
    out = {}
    for m in model.modules():
        conv, bn = getattr(m, "conv", None), getattr(m, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            out[conv] = bn
    return out


@torch.no_grad()
def fold_constants(
    model: nn.Module,
    zero_bn: Iterable[tuple[nn.BatchNorm2d, list[int]]],
    consumers: Iterable[tuple[nn.Conv2d, list[int]]],
    imgsz: int = 64,
) -> dict[str, int]:
    """Zero the gammas of the channels about to be pruned (``zero_bn``), measure the constant input of
    every consumer conv on its removed input channels (``consumers``), and fold it into that conv's BN
    running_mean or bias. Call before the channels are removed; returns counts of folded convs."""
    zero_bn, consumers = list(zero_bn), list(consumers)
    for bn, idxs in zero_bn:
        bn.weight[idxs] = 0.0
    wanted: dict[nn.Conv2d, list[int]] = {}
    for conv, idxs in consumers:
        wanted[conv] = sorted(set(wanted.get(conv, [])) | set(int(i) for i in idxs))
    consts: dict[nn.Conv2d, torch.Tensor] = {}

    def hook(mod, inputs):
        x = inputs[0]
        consts[mod] = x[:, wanted[mod]].float().mean((0, 2, 3))

    handles = [c.register_forward_pre_hook(hook) for c in wanted]
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(1, int(getattr(model, "in_ch", 3)), imgsz, imgsz, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    bns = _owner_bn(model)
    stats = {"folded_bn": 0, "folded_bias": 0, "not_folded": 0}
    for conv, idxs in wanted.items():
        if conv not in consts:
            stats["not_folded"] += 1
            continue
        a = consts[conv].to(conv.weight)
        if conv.groups != 1:
            stats["not_folded"] += 1
            continue
        delta = (conv.weight[:, idxs].sum((2, 3)) * a).sum(1)  # [out]: what dropping them removes
        bn = bns.get(conv)
        if bn is not None and bn.running_mean is not None:
            bn.running_mean.sub_(delta.to(bn.running_mean))
            stats["folded_bn"] += 1
        elif conv.bias is not None:
            conv.bias.add_(delta)
            stats["folded_bias"] += 1
        else:
            stats["not_folded"] += 1
    return stats
