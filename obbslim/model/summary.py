"""Model size figures: layers, parameters and GFLOPs (FLOPs = 2 x MACs, the YOLOv5/thop convention)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward with torch.utils.flop_counter, which counts 2 per multiply-add for conv
    and matmul (so the result is 2 x MACs, as YOLOv5's thop figure). BN/activations/pools are not
    counted (thop adds a little for BN, hence ~0.5 % lower figures than YOLOv5 prints)."""
    was_training = model.training
    model.eval()  # BN in train mode fails on 1x1 maps with batch 1
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x)
    finally:
        model.train(was_training)
    return int(fc.get_total_flops())


def layer_table(model: nn.Module) -> list[dict]:
    """One row per layer: index, from, n (bottlenecks in a C3), params, module, widths."""
    rows = []
    for m in model.model:
        t = getattr(m, "type", type(m).__name__)
        rows.append({
            "index": int(m.i),
            "from": m.f,
            "n": len(m.m) if t == "C3" else 1,
            "params": sum(p.numel() for p in m.parameters()),
            "module": t,
            "widths": m.summary(),
        })  # fmt: skip
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<9}widths"]
    for r in rows:
        lines.append(
            f"{r['index']:>3}{r['from']!s:>18}{r['n']:>3}{r['params']:10.0f}  {r['module']:<9}{r['widths']}"
        )
    return "\n".join(lines)


def model_info(
    model: nn.Module,
    imgsz: int | tuple[int, int] = 640,
    verbose: bool = False,
    print_fn: Callable[[str], None] | None = print,
) -> dict:
    """{layers, params, gradients, gflops} and a YOLOv5-style summary line (plus the layer table when
    `verbose`). GFLOPs are measured on a small dummy input (2 x max stride) and scaled by area, which
    is exact for these all-conv models when imgsz is a multiple of the max stride."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    params = sum(p.numel() for p in model.parameters())
    grads = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers = len(list(model.modules()))
    s = int(max(getattr(model, "stride", torch.tensor([32.0])).max().item(), 32)) * 2
    p = next(model.parameters())
    x = torch.zeros(1, int(getattr(model, "in_ch", 3)), s, s, device=p.device, dtype=p.dtype)
    gflops = count_flops(model, x) / 1e9 * (h * w) / (s * s)
    info = {"layers": layers, "params": params, "gradients": grads, "gflops": gflops}
    if print_fn is not None:
        if verbose:
            print_fn(format_table(layer_table(model)))
        size = f"{h}" if h == w else f"{h}x{w}"
        name = getattr(model, "name", type(model).__name__)
        print_fn(
            f"{name} summary: {layers} layers, {params / 1e6:.1f}M parameters, {grads / 1e6:.1f}M gradients, "
            f"{gflops:.1f} GFLOPs at {size} (FLOPs = 2 x MACs)"
        )
    return info
