"""Checkpoints written before the current code still load and run.

tests/fixtures/old_pruned_tiny.pt was written by obbslim 0.1.0 as first released: yolov5n-obb at width
0.0625 (5 classes), sparsity-trained for one epoch on the synthetic set and pruned with
``prune_checkpoint(ratio=0.9, min_channels=4, round_to=4)``, so its record holds pruned widths. The
expected outputs below were computed by that version on the same input.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

OLD = Path(__file__).resolve().parent / "fixtures" / "old_pruned_tiny.pt"
NAMES = ["small-vehicle", "large-vehicle", "plane", "ship", "storage-tank"]


def _input() -> torch.Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_old_checkpoint_is_plain_data_and_keeps_its_record():
    from obbslim.model import load

    ck = torch.load(OLD, map_location="cpu", weights_only=True)
    assert ck["version"] == 1 and ck["names"] == NAMES and ck["pruned"]["criterion"] == "ratio"
    assert [r["c2"] for r in ck["arch"]["layers"][:2]] == [4, 4]  # pruned widths, not the spec's
    model = load(OLD)
    assert model.get_arch() == ck["arch"]  # rebuilt from the record, described back identically
    assert sum(p.numel() for p in model.parameters()) == 12814


def test_old_checkpoint_gives_the_outputs_it_gave_when_written():
    from obbslim.model import load

    model = load(OLD)
    with torch.no_grad():
        decoded, raw = model(_input())
    assert decoded.shape == (1, 252, 6 + 5 + 180) and [r.shape[2:4] for r in raw] == [(8, 8), (4, 4), (2, 2)]
    first = [3.6005892753601074, 3.4338860511779785, 15.001367568969727, 6.550682544708252,
             0.5759586095809937, 0.0012601274065673351, 0.13100682199001312, 0.11390131711959839]  # fmt: skip
    torch.testing.assert_close(decoded[0, 0, :8], torch.tensor(first), rtol=1e-5, atol=1e-6)
    assert float(decoded[..., :5].double().sum()) == pytest.approx(30531.6045293808, rel=1e-6)
    assert float(decoded[..., 5].double().sum()) == pytest.approx(0.7722423675004393, rel=1e-5)
    assert float(decoded[..., 6:11].double().sum()) == pytest.approx(164.9577723518014, rel=1e-5)


def test_old_checkpoint_fine_tunes_and_detects(tmp_path):
    """It starts a training run (--model keeps the stored pruned architecture) and the Detector runs it."""
    import numpy as np

    from obbslim import Detector
    from obbslim.data.synth import make_synthetic
    from obbslim.engine.train import train

    data = make_synthetic(tmp_path / "ds", n_images=4, size=64, seed=0, val_frac=0.25)
    hyp = {"warmup_epochs": 0.0, "nbs": 2, "mosaic": 0.0}
    r = train(data=data, model=str(OLD), epochs=1, imgsz=64, batch=2, device="cpu", workers=0, hyp=hyp,
              project=tmp_path / "runs", verbose=False, noplots=True, noautoanchor=True)  # fmt: skip
    ck = torch.load(r["last"], map_location="cpu", weights_only=True)
    assert ck["arch"]["layers"] == torch.load(OLD, weights_only=True)["arch"]["layers"]
    det = Detector(OLD, device="cpu", imgsz=64, conf=0.0001)
    d = det.predict(np.full((80, 96, 3), 128, np.uint8))
    assert d.shape == (80, 96) and np.isfinite(d.rboxes).all() and len(d) <= 1000
