"""The one-sentence verdict at the end of compress and the demo: the paper's claim against the run's own
benchmark rows, sparsity statistics and pruning report (hand-made markers, so every branch is known)."""

from __future__ import annotations

import json
from pathlib import Path

from obbslim.pipeline.report import claim


def _markers(tmp_path: Path, base: float, kd: float, ft: float, params: float, gflops: float) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, m in (("baseline", base), ("pruned+finetune", ft), ("pruned+distill", kd)):
        cut = (0.0, 0.0) if name == "baseline" else (params, gflops)
        change = {"params_m": cut[0], "gflops": cut[1]}
        rows.append({"name": name, "mAP50": m, "change": change})
    (tmp_path / "benchmark.json").write_text(json.dumps({"rows": rows}))
    sparse = tmp_path / "2_sparse"
    (sparse / "weights").mkdir(parents=True)
    (sparse / "results.csv").write_text("epoch,gamma_lt_1e-2\n0,0.1\n1,0.42\n")
    return {
        "5_benchmark": {"outputs": {"json": str(tmp_path / "benchmark.json")}},
        "2_sparse": {"outputs": {"weights": str(sparse / "weights" / "last.pt")}},
        "3_prune": {"info": {"mAP50": {"before": 0.6, "pruned_folded": 0.57}}},
    }


def test_claim_supported_only_when_every_part_holds(tmp_path):
    text = claim(_markers(tmp_path, base=0.70, kd=0.69, ft=0.66, params=-66.0, gflops=-55.0))
    assert "This run supports it" in text and "0.690 against 0.700" in text
    assert "42% of the prunable BN scales" in text and "kept 95%" in text
    for i, case in enumerate((
        dict(base=0.70, kd=0.67, ft=0.66, params=-66.0, gflops=-55.0),  # 0.03 below the baseline
        dict(base=0.70, kd=0.69, ft=0.695, params=-66.0, gflops=-55.0),  # fine-tuning better
        dict(base=0.70, kd=0.69, ft=0.66, params=-50.0, gflops=-55.0),  # fewer params cut than the paper
        dict(base=0.70, kd=0.69, ft=0.66, params=-66.0, gflops=-30.0),  # fewer FLOPs cut than the paper
    )):
        assert "does not support it" in claim(_markers(tmp_path / str(i), **case))
    assert claim({}) == ""
