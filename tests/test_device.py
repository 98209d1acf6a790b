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


@pytest.mark.parametrize(
    "avx512_bf16, amx, expected", [(True, False, True), (False, True, True), (False, False, False)]
)
def test_cpu_bf16_native_needs_bf16_instructions(monkeypatch, avx512_bf16, amx, expected):
    """oneDNN emulates bf16 on a plain AVX-512 CPU (slower than float32): only AVX512-BF16 or AMX count."""
    from obbslim.utils.device import cpu_bf16_native

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert cpu_bf16_native() is expected


def test_channels_last_on_the_cpu_always_and_on_cuda_by_request():
    from obbslim.engine.train import use_channels_last
    from obbslim.options import TrainConfig
    from obbslim.utils.device import prefers_channels_last

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert prefers_channels_last(cpu) and not prefers_channels_last(gpu)
    assert use_channels_last(TrainConfig(data="d.yaml"), cpu)
    assert not use_channels_last(TrainConfig(data="d.yaml"), gpu)
    assert use_channels_last(TrainConfig(data="d.yaml", channels_last=True), gpu)
