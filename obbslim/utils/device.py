"""Devices: the one parser of ``--device`` values, and the model inside a DDP wrapper."""

from __future__ import annotations

import torch
from torch import nn

from obbslim.errors import ObbslimError


def select_device(
    device: str | int | torch.device | None = None, local_rank: int = -1, world_size: int = 1
) -> torch.device:
    """``''``/None: GPU 0 if there is one, else the CPU; ``'cpu'``; ``'0'``, ``1``, ``'cuda'``, ``'cuda:1'``;
    ``'0,1'`` lists the GPUs of a torchrun job, where process ``local_rank`` (>= 0 under DDP) takes its
    own (the local rank's GPU when only one is listed). A ``torch.device`` is returned as is."""
    if isinstance(device, torch.device):
        return device
    d = "" if device is None else str(device).strip().lower().replace("cuda:", "")
    d = "0" if d == "cuda" else d
    if d == "cpu" or (d == "" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ObbslimError(f"device {device!r} requested but CUDA is not available (use --device cpu)")
    try:
        ids = [int(x) for x in d.split(",") if x != ""] or [0]
    except ValueError:
        raise ObbslimError(f"unknown device {device!r}: use cpu, 0, 1, 0,1 or cuda:N") from None
    if local_rank < 0:
        return torch.device("cuda", ids[0])
    if len(ids) > 1 and world_size > len(ids):
        raise ObbslimError(f"{world_size} processes but only devices {ids} were given")
    return torch.device("cuda", ids[local_rank] if len(ids) > 1 else local_rank)


def de_parallel(model: nn.Module) -> nn.Module:
    """The plain model inside a DataParallel / DistributedDataParallel wrapper."""
    wrapped = isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel))
    return model.module if wrapped else model


def cpu_bf16_native() -> bool:
    """True when this CPU has bfloat16 instructions (AVX512-BF16 or AMX). Elsewhere oneDNN emulates bf16,
    slower than float32 (a yolov5n-obb training step at 256 px, one thread: 1.4x float32's time with AVX-512
    alone, 14x with AVX2), so ``--bf16`` trains in float32 there."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def prefers_channels_last(device: torch.device) -> bool:
    """The CPU: oneDNN's convolutions run faster in the channels_last memory format, float32 as bf16
    (yolov5n-obb, batch 16 at 320 px, two threads: a training step 0.71x the time, a forward 0.83x;
    ``benchmarks/bench_layout.py``). CUDA: only on request (``--channels-last``)."""
    return device.type == "cpu"


def cpu_layout(model: nn.Module, device: torch.device) -> nn.Module:
    """The model in channels_last where the device prefers it (:func:`prefers_channels_last`)."""
    return model.to(memory_format=torch.channels_last) if prefers_channels_last(device) else model
