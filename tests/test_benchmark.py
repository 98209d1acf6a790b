"""`obbslim benchmark`: the comparison table, its files and the stripped-checkpoint size."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from obbslim.errors import ObbslimError
from obbslim.model import build, load, load_spec, save

SYNTH_NAMES = ["small-vehicle", "large-vehicle", "plane", "ship", "storage-tank"]


@pytest.fixture(scope="module")
def synth_yaml(tmp_path_factory) -> Path:
    from obbslim.data.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("s") / "ds", n_images=4, size=64, seed=0, val_frac=0.5)


@pytest.fixture(scope="module")
def two_ckpts(tmp_path_factory) -> list[Path]:
    """yolov5n-obb and a narrower copy (width multiple 0.125): fewer params, fewer GFLOPs."""
    d = tmp_path_factory.mktemp("w")
    paths = []
    for name, width in (("base", 0.25), ("narrow", 0.125)):
        torch.manual_seed(0)
        spec = load_spec("yolov5n-obb")
        spec["width_multiple"] = width
        m = build(spec, nc=5, names=SYNTH_NAMES)
        save(m, d / f"{name}.pt", ema=copy.deepcopy(m), optimizer={"state": {}, "param_groups": []})
        paths.append(d / f"{name}.pt")
    return paths


def test_benchmark_writes_table_json_and_plots(two_ckpts, synth_yaml, tmp_path):
    from obbslim.deploy import benchmark

    out = tmp_path / "bench"
    res = benchmark(two_ckpts, synth_yaml, imgsz=64, onnx=True, runs=3, warmup=1, threads=1, out=out,
                    names=["baseline", "pruned"], verbose=False)  # fmt: skip
    rows = res["rows"]
    assert [r["name"] for r in rows] == ["baseline", "pruned"]
    keys = ("mAP50", "params_m", "gflops", "size_mb", "latency_torch_ms", "latency_onnx_ms")
    assert all(rows[0]["change"][k] == 0.0 for k in keys)
    base, small = rows
    assert small["params"] < base["params"] and small["gflops"] < base["gflops"]
    assert small["size_mb"] < base["size_mb"]
    expect = 100 * (small["params_m"] - base["params_m"]) / base["params_m"]
    assert small["change"]["params_m"] == pytest.approx(expect)
    for r in rows:
        assert r["latency_torch_ms"] > 0 and r["latency_onnx_ms"] > 0 and 0 <= r["mAP50"] <= 1
        info = load(r["weights"]).info(imgsz=64, verbose=False)
        assert r["params"] == info["params"] and r["gflops"] == pytest.approx(info["gflops"])
    assert res["settings"]["torch_threads"] == 1 and res["settings"]["n_val_images"] == 2
    md = (out / "benchmark.md").read_text()
    header = md.splitlines()[0]
    cols = ("model", "mAP50", "params (M)", "GFLOPs", "weights (MB)", "PyTorch (ms)", "ONNX Runtime (ms)")
    for col in cols:
        assert f" {col} |" in header
    first = md.splitlines()[2]
    assert first.startswith("| baseline |") and first.count("(+0.0%)") == len(keys) - ("(n/a)" in first)
    assert json.loads((out / "benchmark.json").read_text())["rows"][1]["name"] == "pruned"
    for png in ("map_vs_latency.png", "map_vs_gflops.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_known_results_are_not_measured_again(two_ckpts, synth_yaml):
    from obbslim.deploy import benchmark

    opts = dict(imgsz=64, runs=1, warmup=0, threads=1, out=None, verbose=False)
    measured = benchmark(two_ckpts, synth_yaml, **opts)["rows"]
    known = [{"mAP50": 0.25, "mAP50_95": 0.125}, None]
    rows = benchmark(two_ckpts, synth_yaml, known=known, **opts)["rows"]
    assert (rows[0]["mAP50"], rows[0]["mAP50_95"]) == (0.25, 0.125)  # taken as given
    assert rows[1]["mAP50"] == measured[1]["mAP50"]  # None: validated
    assert rows[1]["change"]["mAP50"] == pytest.approx(100 * (measured[1]["mAP50"] - 0.25) / 0.25)
    with pytest.raises(ObbslimError, match="1 known results for 2 checkpoints"):
        benchmark(two_ckpts, synth_yaml, known=known[:1], **opts)


def test_stripped_checkpoint_is_smaller_and_loads(two_ckpts, tmp_path):
    from obbslim.deploy import strip_checkpoint

    src = two_ckpts[0]
    data = strip_checkpoint(src, tmp_path / "s.pt")
    n_float = sum(v.numel() for v in load(src).state_dict().values() if v.is_floating_point())
    # fp16 weights: 2 bytes per value plus a small overhead (record, names, pickle framing)
    assert 2 * n_float < len(data) < 2 * n_float + 200_000
    assert len(data) < src.stat().st_size / 2  # the full one holds model + EMA in fp32
    a, b = load(src), load(tmp_path / "s.pt")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ya, yb = a(x)[0], b(x)[0]  # not theta: an untrained head's bins nearly tie, fp16 reorders them
    torch.testing.assert_close(ya[..., :4], yb[..., :4], atol=0.5, rtol=0.01)
    torch.testing.assert_close(ya[..., 5:11], yb[..., 5:11], atol=2e-3, rtol=0.01)


def test_benchmark_bad_inputs(two_ckpts, synth_yaml, tmp_path, capsys):
    from obbslim.cli import main
    from obbslim.deploy import benchmark

    with pytest.raises(ObbslimError, match="not found"):
        benchmark([tmp_path / "nope.pt"], synth_yaml, imgsz=64)
    with pytest.raises(ObbslimError, match="names"):
        benchmark(two_ckpts, synth_yaml, imgsz=64, names=["one"])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    rc = main(["benchmark", "--weights", str(junk), "--data", str(synth_yaml), "--imgsz", "64",
               "--out", str(tmp_path / "b")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("obbslim benchmark: error:") and "junk.pt" in err and "\n" not in err
