"""benchmarks/bench_vs_peer.py's scoring on hand-made Task1 files: the figures its table prints."""

from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from obbslim.data.labeltxt import write_labeltxt, write_task1
from tests.test_angle_error import poly

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_vs_peer.py"


def bench():
    spec = importlib.util.spec_from_file_location("bench_vs_peer", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_score_reports_ap_and_both_angle_errors(tmp_path):
    # one ship (60 x 12) found 7 degrees off (IoU 0.735 by shapely), one plane (40 x 38) found a quarter
    # turn minus 10 degrees off (a square 10 degrees off: IoU 0.86)
    ann = tmp_path / "labelTxt"
    ann.mkdir()
    gts = np.stack([poly(50, 50, 60, 12, 20), poly(150, 150, 40, 38, 5)])
    write_labeltxt(ann / "a.txt", gts, ["ship", "plane"])
    task1 = tmp_path / "task1"
    dets = {"ship": [("a", 0.9, poly(50, 50, 60, 12, 27))], "plane": [("a", 0.8, poly(150, 150, 40, 38, 85))]}
    write_task1(task1, dets)
    m = bench()
    r = m.score(task1, ann)
    assert r["per_class"] == pytest.approx({"plane": 1.0, "ship": 1.0})  # both at IoU > 0.5
    assert r["per_class_angle"]["ship"] == pytest.approx(7.0, abs=1e-6)
    assert math.isnan(r["per_class_angle"]["plane"])  # near square: no angle modulo 180
    assert r["per_class_square"]["plane"] == pytest.approx(10.0, abs=1e-6)
    assert r["AP75"] == pytest.approx(0.5)  # the plane passes IoU 0.75, the ship does not
    args = argparse.Namespace(data="d.yaml", size=320, epochs=1, batch=16, device="cpu")
    text = m.report({"obbslim yolov5n-obb": {**r, "train_s": float("nan")}}, args)
    assert "plane 10.0" in text and "ship 7.0" in text
