"""DDP helpers: read the torchrun environment, pick the backend, reduce small values across ranks.

Launch: ``torchrun --nproc_per_node N -m obbslim train ...``. Every rank trains on its shard of the
data (DistributedSampler); only rank 0 validates and writes files. ``--device cpu`` uses gloo,
CUDA uses nccl with one GPU per local rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = -1  # -1: not distributed
    local_rank: int = -1
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank in (-1, 0)


def dist_info() -> DistInfo:
    """What torchrun put in the environment (RANK, LOCAL_RANK, WORLD_SIZE)."""
    ws = int(os.environ.get("WORLD_SIZE", 1))
    if ws <= 1:
        return DistInfo()
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), ws)


def init(info: DistInfo, device: torch.device) -> None:
    """Join the process group (idempotent); gloo on CPU, nccl on CUDA."""
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def cleanup(info: DistInfo) -> None:
    """Destroy the process group. Call it after dropping every DDP wrapper: a wrapper still alive keeps
    gloo's worker threads past the group into interpreter shutdown, where they abort the process at
    exit now and then ("terminate called without an active exception"), failing a finished run."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a few numbers over ranks (identity when not distributed)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_value(value: float, info: DistInfo, device: torch.device) -> float:
    """Rank 0's value on every rank."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return float(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
