"""`obbslim compress`: a tiny end-to-end run (every stage, report.md, loadable checkpoints), resuming
(only what is missing or interrupted runs again), --teacher skipping the baseline, argument errors."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from obbslim.errors import ObbslimError
from obbslim.model import read_checkpoint
from obbslim.pipeline.stages import ROW_NAMES, STAGES

FAST_HYP = {"warmup_epochs": 0.0, "nbs": 4, "mosaic": 0.0, "degrees": 0.0, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On the shared 2-core machine two intra-op threads per process thrash."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from obbslim.data.synth import make_synthetic

    return make_synthetic(
        tmp_path_factory.mktemp("compress") / "ds", n_images=8, size=96, seed=0, val_frac=0.25
    )


def opts(synth: Path, project: Path, **kw) -> dict:
    base = dict(
        data=synth,
        model="yolov5n-obb.yaml",
        prune_ratio=0.5,
        epochs_base=1,
        epochs_sparse=1,
        epochs_distill=1,
        imgsz=64,
        batch=4,
        device="cpu",
        workers=0,
        hyp=FAST_HYP,
        project=project,
        name="run",
        exist_ok=True,
        bench_runs=1,
        bench_warmup=0,
        verbose=False,
    )
    return {**base, **kw}


@pytest.fixture(scope="module")
def full(synth, tmp_path_factory) -> dict:
    from obbslim.pipeline import compress

    return compress(**opts(synth, tmp_path_factory.mktemp("runs"), cache_images=True, bf16=True))


def test_every_stage_and_the_report(full):
    from obbslim.model import load

    run = Path(full["run_dir"])
    assert full["ran"] == list(STAGES)
    for stage in STAGES:
        marker = json.loads((run / stage / "stage.json").read_text())
        assert marker["done"] and all(Path(p).exists() for p in marker["outputs"].values())
    report = Path(full["report"]).read_text()
    table = report.split("## Stages")[0]
    for name in ROW_NAMES:
        assert re.search(rf"^\| {re.escape(name)} \|", table, re.M), name
    # every linked image exists, and the required plots are among them
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert all((run / link).is_file() for link in links), links
    for need in ("2_sparse/gamma_hist.png", "3_prune/pruned_widths.png", "5_benchmark/map_vs_latency.png",
                 "1_baseline/results.png", "4_distill/results.png", "4_finetune/results.png"):  # fmt: skip
        assert need in links
    for cmd in ("obbslim train", "obbslim prune", "obbslim distill", "obbslim benchmark"):
        assert cmd in report
    rows = {r["name"]: r for r in full["benchmark"]}
    assert list(rows) == list(ROW_NAMES)
    assert rows["pruned"]["params"] < rows["baseline"]["params"]
    assert rows["pruned+distill"]["params"] == rows["pruned+finetune"]["params"] == rows["pruned"]["params"]
    base = load(full["stages"]["1_baseline"]["outputs"]["weights"])
    for stage in ("4_distill", "4_finetune"):
        m = load(full["stages"][stage]["outputs"]["weights"])
        n = sum(p.numel() for p in m.parameters())
        assert n == rows["pruned"]["params"] < sum(p.numel() for p in base.parameters())
    # the sparse stage started from the baseline, the student from the pruned checkpoint
    sparse_args = (run / "2_sparse" / "args.yaml").read_text()
    assert "1_baseline/weights/best.pt" in sparse_args and "sparsity: 0.001" in sparse_args
    for stage in ("1_baseline", "2_sparse", "4_distill", "4_finetune"):  # compress's options reach them
        stored = yaml.safe_load((run / stage / "args.yaml").read_text())
        assert stored["cache_images"] is True and stored["bf16"] is True, stage
    # the output distillation's weight and terms: auto's, from the mAP50s of the baseline and prune stages
    from obbslim.distill.run import auto_output

    info = {s: full["stages"][s]["info"] for s in ("1_baseline", "3_prune")}
    # the baseline's mAP50 is best.pt's own (best.pt is chosen by 0.1 mAP50 + 0.9 mAP50-95, not by it)
    best_ck = read_checkpoint(run / "1_baseline" / "weights" / "best.pt")
    assert info["1_baseline"]["best_mAP50"] == best_ck["metrics"]["mAP50"]
    pick = auto_output(info["3_prune"]["mAP50"]["pruned_folded"], info["1_baseline"]["best_mAP50"])
    stored = yaml.safe_load((run / "4_distill" / "args.yaml").read_text())
    assert stored["kd_output"] == pick["kd_output"]
    assert stored["kd_output_terms"] == list(pick["kd_output_terms"])
    assert f"--kd-output {pick['kd_output']} --kd-output-terms {' '.join(pick['kd_output_terms'])}" in report


def test_the_benchmark_reuses_what_the_stages_measured(full, synth):
    """The training stages' own validation is what the benchmark would measure: the same mAP50 and mAP50-95
    as validating the BN-fused checkpoint again; the pruned model (no own metrics) is validated."""
    from obbslim.deploy import benchmark
    from obbslim.options import CompressConfig
    from obbslim.pipeline.stages import own_metrics

    run = Path(full["run_dir"])
    cfg = CompressConfig.from_record(json.loads((run / "compress.json").read_text()))
    rows = {r["name"]: r for r in full["benchmark"]}
    stages = dict(zip(ROW_NAMES, ("1_baseline", "2_sparse", "3_prune", "4_finetune", "4_distill")))
    for name, stage in stages.items():
        weights = full["stages"][stage]["outputs"]["weights"]
        own = own_metrics(weights, cfg)
        assert (own is None) == (name == "pruned"), name
        if own:
            again = benchmark([weights], cfg.data, imgsz=cfg.imgsz, runs=1, warmup=0, out=None, verbose=False)
            for k in ("mAP50", "mAP50_95"):
                assert own[k] == pytest.approx(again["rows"][0][k], abs=1e-4) == rows[name][k], (name, k)
    base = full["stages"]["1_baseline"]["outputs"]["weights"]
    assert own_metrics(base, cfg.replace(imgsz=96)) is None  # measured at another size: validated again


def test_rerun_runs_only_the_missing_stage(full, synth, monkeypatch):
    import obbslim.pipeline.stages as stages
    from obbslim.pipeline import compress

    run = Path(full["run_dir"])
    (run / "5_benchmark" / "stage.json").unlink()
    (run / "5_benchmark" / "benchmark.md").unlink()

    def no_training(*a, **k):
        raise AssertionError("a complete training stage ran again")

    monkeypatch.setattr(stages, "sparse_train", no_training)
    monkeypatch.setattr(stages, "distill", no_training)
    again = compress(**opts(synth, run.parent))
    assert again["ran"] == ["5_benchmark"]
    assert (run / "5_benchmark" / "benchmark.md").is_file()
    for stage in STAGES[:-1]:  # untouched: same marker ids
        assert again["stages"][stage]["id"] == full["stages"][stage]["id"]
    # --resume with no other argument: nothing left to do
    assert compress(resume=run, verbose=False)["ran"] == []


def test_interrupted_training_stage_continues(full, synth, monkeypatch):
    """Unfinished marker + a last.pt short of its epochs: train(resume=last.pt), then what depends on it."""
    import obbslim.pipeline.stages as stages
    from obbslim.pipeline import compress

    run = Path(full["run_dir"])
    sdir = run / "4_finetune"
    marker = json.loads((sdir / "stage.json").read_text())
    (sdir / "stage.json").write_text(json.dumps({"stage": "4_finetune", "done": False, "key": marker["key"]}))
    last = sdir / "weights" / "last.pt"
    ck = torch.load(last, weights_only=False)
    ck["train_args"]["epochs"] = 2  # as if stopped after epoch 0 of 2
    torch.save(ck, last)
    calls = []
    real = stages.sparse_train

    def spy(*a, **k):
        calls.append(k)
        return real(*a, **k)

    monkeypatch.setattr(stages, "sparse_train", spy)
    again = compress(**opts(synth, run.parent))
    assert [c.get("resume") for c in calls] == [str(last)]
    assert again["ran"] == ["4_finetune", "5_benchmark"]  # the benchmark depends on it
    assert again["stages"]["4_finetune"]["info"]["epochs"] == 2


def test_finetune_runs_beside_the_distillation(full, synth):
    """On CPU with 2 threads the ablation trains in a second process on one thread while the distillation
    trains here on the other; its marker, weights and log are written and the benchmark follows."""
    from obbslim.pipeline import compress

    run = Path(full["run_dir"])
    for stage in ("4_distill", "4_finetune"):
        (run / stage / "stage.json").unlink()
    again = compress(**opts(synth, run.parent, threads=2))
    assert again["ran"] == ["4_distill", "4_finetune", "5_benchmark"]
    for stage in ("4_distill", "4_finetune"):
        marker = again["stages"][stage]
        assert marker["done"] and "--threads 1" in marker["command"], marker["command"]
        assert all(Path(p).is_file() for p in marker["outputs"].values())
    assert (run / "4_finetune.log").is_file()
    # --serial (or one thread) runs them one after the other, in this process
    for stage in ("4_distill", "4_finetune"):
        (run / stage / "stage.json").unlink()
    serial = compress(**opts(synth, run.parent, threads=2, serial=True))
    assert all("--threads 2" in serial["stages"][s]["command"] for s in ("4_distill", "4_finetune"))


def test_a_failure_beside_names_its_log(full, synth, monkeypatch):
    from obbslim.pipeline import compress

    compress_module = importlib.import_module("obbslim.pipeline.compress")  # the package exports the function

    run = Path(full["run_dir"])
    for stage in ("4_distill", "4_finetune"):
        (run / stage / "stage.json").unlink()
    real = compress_module.start_beside

    def missing_student(run_dir, cfg, markers, stage, log):
        prune = {**markers["3_prune"], "outputs": {"weights": str(run / "missing.pt")}}
        return real(run_dir, cfg, {**markers, "3_prune": prune}, stage, log)

    monkeypatch.setattr(compress_module, "start_beside", missing_student)
    beside_4 = r"4_finetune failed in its process beside 4_distill.*4_finetune\.log"
    with pytest.raises(ObbslimError, match=beside_4):
        compress(**opts(synth, run.parent, threads=2))
    assert "missing.pt" in (run / "4_finetune.log").read_text()
    assert json.loads((run / "4_distill" / "stage.json").read_text())["done"]  # the distillation finished


def test_teacher_skips_the_baseline(full, synth, tmp_path):
    from obbslim.pipeline import compress

    teacher = full["stages"]["1_baseline"]["outputs"]["weights"]
    res = compress(**opts(synth, tmp_path, teacher=teacher, epochs_base=0, name="t"))
    run = Path(res["run_dir"])
    assert "1_baseline" not in res["ran"] and not (run / "1_baseline").exists()
    assert res["ran"] == list(STAGES[1:])
    assert str(Path(teacher).resolve()) in (run / "2_sparse" / "args.yaml").read_text()
    distill_args = (run / "4_distill" / "args.yaml").read_text()
    assert str(Path(teacher).resolve()) in distill_args
    stored = yaml.safe_load(distill_args)  # auto, measured by distill
    assert isinstance(stored["kd_output"], float) and "auto" not in stored["kd_output_terms"]
    assert "skipped: teacher given" in Path(res["report"]).read_text()


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(prune_ratio=0.5, target_flops=0.5), "exactly one of --prune-ratio and --target-flops"),
        (dict(prune_ratio=None), "exactly one of --prune-ratio and --target-flops"),
        (dict(prune_ratio=1.5), "--prune-ratio must be in (0, 1), got 1.5"),
        (dict(epochs_sparse=0), "--epochs-sparse must be >= 1, got 0"),
        (dict(epochs_base=0), "--epochs-base must be >= 1 without --teacher, got 0"),
        (dict(teacher="nope.pt"), "--teacher nope.pt: file not found"),
        (dict(sparsity_weighting="params"), "--sparsity-weighting 'params': use none or flops"),
    ],
)
def test_bad_arguments(synth, tmp_path, kw, msg):
    from obbslim.pipeline import compress

    with pytest.raises(ObbslimError) as e:
        compress(**opts(synth, tmp_path, **kw))
    assert msg in str(e.value)
    assert not (tmp_path / "run").exists()  # nothing was started


def test_cli_error_is_one_line(synth, tmp_path, capsys):
    from obbslim.cli import main

    rc = main(["compress", "--data", str(synth), "--project", str(tmp_path), "--epochs-base", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err == "obbslim compress: error: give exactly one of --prune-ratio and --target-flops"


def test_cli_parsers():
    from obbslim.cli import build_parser

    p = build_parser()
    a = p.parse_args(["compress", "--data", "d.yaml", "--target-flops", "0.4", "--resume"])
    assert a.target_flops == 0.4 and a.prune_ratio is None and a.resume is True
    assert a.sparsity_weighting == "none"
    a = p.parse_args(["compress", "--data", "d", "--prune-ratio", "0.5", "--sparsity-weighting", "flops"])
    assert a.sparsity_weighting == "flops"
    d = p.parse_args(["demo", "--out", "x", "--device", "cpu"])
    assert d.out == "x" and d.func.__module__ == "obbslim.cli.demo"


def test_resume_without_a_run(tmp_path):
    from obbslim.pipeline import compress

    with pytest.raises(ObbslimError, match="no compress run"):
        compress(resume=True, project=tmp_path, verbose=False)
