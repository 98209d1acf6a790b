"""The one --device parser (obbslim.utils.device.select_device), with and without CUDA."""

from __future__ import annotations

import pytest
import torch

from obbslim.errors import ObbslimError
from obbslim.utils.device import select_device


def test_cpu_machine():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only answers")
    assert select_device("") == select_device(None) == select_device("cpu") == torch.device("cpu")
    for d in ("0", "cuda", "cuda:1", "0,1", 1):
        with pytest.raises(ObbslimError, match="CUDA is not available"):
            select_device(d)


def test_gpu_choice_and_ddp_ranks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = lambda i: torch.device("cuda", i)  # noqa: E731
    assert select_device("") == select_device("cuda") == select_device("0,1") == cuda(0)
    assert select_device("1") == select_device("cuda:1") == select_device(1) == cuda(1)
    assert select_device("0,1", local_rank=1, world_size=2) == cuda(1)  # each process its own GPU
    assert select_device("2,3", local_rank=1, world_size=2) == cuda(3)
    assert select_device("0", local_rank=1, world_size=2) == cuda(1)  # one listed: the local rank's
    assert select_device("cpu", local_rank=1, world_size=2) == torch.device("cpu")
    with pytest.raises(ObbslimError, match="3 processes but only devices"):
        select_device("0,1", local_rank=2, world_size=3)
    with pytest.raises(ObbslimError, match="unknown device"):
        select_device("gpu")
    assert select_device(torch.device("cuda", 5)) == cuda(5)
