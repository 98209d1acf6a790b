"""CPU threads and dataloader workers: defaults that suit a shared machine, and the scope a command
runs its threads in.

Machines are shared (CI runners, lab servers): PyTorch's default of one thread per core makes a
command far slower as soon as another process is busy (measured: 2 epochs of `train` 10 s alone,
20 s beside one busy process with the default threads, 13 s with one thread). So a command uses
``OMP_NUM_THREADS`` when it is set, else the cores it may run on minus one (at least one), as
Ultralytics does; ``--threads N`` overrides both.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import cv2
import torch

MAX_WORKERS = 8  # dataloader workers by default: at most this many, and no more than the cores


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask where there is one: containers, taskset)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)


def default_threads(reserve: int = 1) -> int:
    """``OMP_NUM_THREADS`` when set to a positive integer, else the cores minus ``reserve`` (at least 1)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(cpu_count() - reserve, 1)


def default_workers(workers: int | None = None) -> int:
    """Dataloader worker processes: ``workers`` as given, or by default ``min(8, cores - 1)`` (0 on one
    core: loading in the main process)."""
    if workers is not None:
        return max(int(workers), 0)
    return min(MAX_WORKERS, cpu_count() - 1)


@contextlib.contextmanager
def use_threads(threads: int | None = None) -> Iterator[int]:
    """Run the block with ``threads`` PyTorch intra-op and OpenCV threads (None: :func:`default_threads`);
    the caller's settings come back afterwards. Yields the number used."""
    n = int(threads) if threads else default_threads()
    before_torch, before_cv2 = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(n)
    cv2.setNumThreads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before_torch)
        cv2.setNumThreads(before_cv2)
