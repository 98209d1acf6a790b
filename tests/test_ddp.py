"""DDP on CPU: 2 processes (gloo) via torchrun see the dataset once per epoch and the loss falls."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
import yaml

from obbslim.engine.runs import ResultsCSV

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_ddp_two_cpu_processes(tmp_path):
    from obbslim.data.synth import make_synthetic
    from obbslim.model import load_spec

    data = make_synthetic(tmp_path / "ds", n_images=10, size=96, seed=1, val_frac=0.2)  # 8 train, 2 val
    spec = load_spec("yolov5n-obb")
    spec["width_multiple"] = 0.125
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    hyp = {
        "warmup_epochs": 0.0,
        "nbs": 2,
        "optimizer": "Adam",
        "lr0": 0.01,
        "mosaic": 0.0,
        "degrees": 0.0,
        "scale": 0.0,
        "translate": 0.0,
        "hsv_h": 0,
        "hsv_s": 0,
        "hsv_v": 0,
        "flipud": 0.0,
        "fliplr": 0.0,
    }
    (tmp_path / "hyp.yaml").write_text(yaml.safe_dump(hyp))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "tests" / "ddp_probe.py"),  # the obbslim CLI, reporting its teardown
        "train",
        "--data",
        str(data),
        "--model",
        str(tmp_path / "tiny.yaml"),
        "--hyp",
        str(tmp_path / "hyp.yaml"),
        "--epochs",
        "6",
        "--imgsz",
        "64",
        "--batch",
        "2",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--project",
        str(tmp_path / "runs"),
        "--noplots",
        "--noautoanchor",
        "--val-every",
        "6",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "x2 (DDP)" in p.stdout
    assert p.stdout.count("DDP wrappers alive at teardown: 0") == 2, p.stdout[-2000:]  # no exit abort
    rows = ResultsCSV(tmp_path / "runs" / "exp" / "results.csv").read()
    assert len(rows) == 6
    # each epoch the two ranks together saw every training image exactly once (4 + 4)
    assert [int(r["images"]) for r in rows] == [8] * 6
    total = [sum(float(r[k]) for k in ("box", "obj", "cls", "theta")) for r in rows]
    assert total[-1] < 0.9 * total[0], total  # mean training loss over both ranks
    assert rows[-1]["mAP50"] != ""  # rank 0 validated
    assert (tmp_path / "runs" / "exp" / "weights" / "last.pt").is_file()
    assert not (tmp_path / "runs" / "exp2").exists()  # only rank 0 made a run dir
