"""The stages of ``obbslim compress``, in order, as specs: each names its library function and the
arguments from which both the call and the command printed in report.md are derived, and the key of
inputs and settings that decides whether a finished stage still stands. report.md reads the stage
list and titles from here too.

1_baseline (train; given when a teacher is), 2_sparse (sparsity training from the baseline), 3_prune
(network slimming of the sparse model), 4_distill and 4_finetune (the pruned model fine-tuned with and
without distillation from the baseline), 5_benchmark (the comparison table).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from obbslim.deploy.benchmark import benchmark
from obbslim.distill.run import auto_output, distill
from obbslim.errors import ObbslimError
from obbslim.model import read_checkpoint
from obbslim.options import (
    BenchmarkConfig,
    CompressConfig,
    DistillConfig,
    Options,
    PruneConfig,
    SparseTrainConfig,
)
from obbslim.prune.checkpoint import prune_checkpoint
from obbslim.prune.sparsity import sparse_train
from obbslim.utils.device import select_device

STAGES = ("1_baseline", "2_sparse", "3_prune", "4_distill", "4_finetune", "5_benchmark")
ROW_NAMES = ("baseline", "sparse", "pruned", "pruned+finetune", "pruned+distill")
TITLES = {
    "1_baseline": "baseline training",
    "2_sparse": "sparsity training",
    "3_prune": "pruning",
    "4_distill": "fine-tuning with distillation",
    "4_finetune": "fine-tuning without distillation (ablation)",
    "5_benchmark": "benchmark",
}


@dataclass
class Stage:
    """One stage: ``fn(**args)`` is the call and ``options.command(command, args)`` the printed command;
    ``key`` holds its inputs (the upstream markers' ids) and settings; ``finish(stage_dir, result)``
    gives the marker's outputs and info. A ``resumable`` (training) stage continues an interrupted run
    from its weights/last.pt. A stage whose result is ``given`` (the teacher) does not run."""

    name: str
    command: str
    options: type[Options]
    fn: Callable[..., Any]
    args: dict[str, Any]
    key: dict[str, Any]
    finish: Callable[[Path, Any], tuple[dict, dict]] = lambda sdir, result: ({}, {})
    resumable: bool = False
    given: dict | None = field(default=None)

    @property
    def command_line(self) -> str:
        return self.options.command(self.command, self.args)


@dataclass
class Context:
    """What the stage specs are built from: the compress options, the run dir and the finished stages."""

    cfg: CompressConfig
    run_dir: Path
    markers: dict[str, dict]

    @property
    def device(self) -> str:
        return str(select_device(self.cfg.device))  # one device for pruning and benchmarking

    def out(self, stage: str, key: str = "weights") -> str:
        return self.markers[stage]["outputs"][key]

    def training(
        self,
        name: str,
        command: str,
        options: type[Options],
        fn: Callable,
        key: dict,
        weights: str = "best",
        **args: Any,
    ) -> Stage:
        """A training stage: ``args`` plus the settings every training stage shares."""
        c = self.cfg
        shared = dict(
            name=name,
            imgsz=c.imgsz,
            batch=c.batch,
            device=c.device or None,
            workers=c.workers,
            cache_images=c.cache_images,
            bf16=c.bf16,
            threads=c.threads,
            hyp=c.hyp,
            val_every=c.val_every,
            seed=c.seed,
            project=self.run_dir,
            exist_ok=True,
            verbose=c.verbose,
        )
        return Stage(
            name,
            command,
            options,
            fn,
            {**args, **shared},
            {**key, **self.train_key()},
            finish=lambda sdir, _: _train_result(sdir, weights),
            resumable=True,
        )

    def train_key(self) -> dict:
        """The training settings that change a stage's result (not device, workers or verbosity); the hyp
        file by its content, so editing it reruns the training stages."""
        c = self.cfg
        key = dict(imgsz=c.imgsz, batch=c.batch, hyp=c.hyp, val_every=c.val_every, seed=c.seed)
        if key["hyp"] and Path(key["hyp"]).is_file():
            key["hyp_sha1"] = hashlib.sha1(Path(key["hyp"]).read_bytes()).hexdigest()
        return key


def baseline(ctx: Context) -> Stage:
    c = ctx.cfg
    if c.teacher:  # the given checkpoint is the baseline
        mtime = Path(c.teacher).stat().st_mtime_ns
        given = {
            "stage": "1_baseline",
            "done": True,
            "skipped": "teacher given",
            "id": f"teacher:{c.teacher}:{mtime}",
            "outputs": {"weights": c.teacher},
            "info": {},
            "command": None,
        }
        return Stage("1_baseline", "obbslim train", SparseTrainConfig, sparse_train, {}, {}, given=given)
    key = {"data": c.data, "model": c.model, "epochs": c.epochs_base}
    if c.pretrained:  # another file, or the same one rewritten, trains the baseline again
        if not Path(c.pretrained).is_file():
            raise ObbslimError(f"--pretrained {c.pretrained}: file not found (the baseline started from it)")
        key["pretrained"] = f"{c.pretrained}:{Path(c.pretrained).stat().st_mtime_ns}"
    return ctx.training(
        "1_baseline",
        "obbslim train",
        SparseTrainConfig,
        sparse_train,
        key,
        data=c.data,
        model=c.model,
        pretrained=c.pretrained,
        epochs=c.epochs_base,
    )


def sparse(ctx: Context) -> Stage:
    """Sparsity training from the baseline's weights; its last.pt (the sparsest) is what gets pruned."""
    c = ctx.cfg
    weighting = {"weighting": c.sparsity_weighting} if c.sparsity_weighting != "none" else {}
    key = {
        "base": ctx.markers["1_baseline"]["id"],
        "epochs": c.epochs_sparse,
        "sparsity": c.sparsity,
        "schedule": c.sparsity_schedule,
        **weighting,
        **({"mode": c.sparsity_mode} if c.sparsity_mode != "subgradient" else {}),
    }
    return ctx.training(
        "2_sparse",
        "obbslim train",
        SparseTrainConfig,
        sparse_train,
        key,
        weights="last",
        data=c.data,
        model=ctx.out("1_baseline"),
        epochs=c.epochs_sparse,
        sparsity=c.sparsity,
        sparsity_schedule=c.sparsity_schedule,
        sparsity_weighting=weighting.get("weighting"),
        sparsity_mode=c.sparsity_mode,
        noautoanchor=True,
    )


def prune(ctx: Context) -> Stage:
    """Pruning, with mAP50 on val before and right after (with and without folding)."""
    c = ctx.cfg
    key = {
        "sparse": ctx.markers["2_sparse"]["id"],
        "ratio": c.prune_ratio,
        "target_flops": c.target_flops,
        "imgsz": c.imgsz,
    }
    args = dict(
        weights=ctx.out("2_sparse"),
        ratio=c.prune_ratio,
        target_flops=c.target_flops,
        imgsz=c.imgsz,
        data=c.data,
        batch=c.batch,
        device=ctx.device,
        out=ctx.run_dir / "3_prune" / "pruned.pt",
        threads=c.threads,
        verbose=c.verbose,
    )

    def finish(sdir: Path, rep: dict) -> tuple[dict, dict]:
        outputs = {"weights": args["out"], "report": rep["report"], "plot": rep["plot"]}
        return outputs, {"params": rep["params"], "gflops": rep["gflops"], "mAP50": rep.get("mAP50")}

    return Stage("3_prune", "obbslim prune", PruneConfig, prune_checkpoint, args, key, finish)


def distilled(ctx: Context) -> Stage:
    """The pruned model fine-tuned with distillation from the baseline. The output distillation's weight
    and terms are ``auto``'s, from the mAP50s the baseline and pruning stages measured (``distill``
    measures them itself for a given teacher); the printed command shows them."""
    c, pruned = ctx.cfg, ctx.out("3_prune")
    key = {
        "pruned": ctx.markers["3_prune"]["id"],
        "teacher": ctx.markers["1_baseline"]["id"],
        "epochs": c.epochs_distill,
    }
    teacher_map = ctx.markers["1_baseline"].get("info", {}).get("best_mAP50")
    pruned_map = (ctx.markers["3_prune"].get("info", {}).get("mAP50") or {}).get("pruned_folded")
    known = teacher_map is not None and pruned_map is not None
    return ctx.training(
        "4_distill",
        "obbslim distill",
        DistillConfig,
        distill,
        key,
        student=str(pruned),
        teacher=ctx.out("1_baseline"),
        data=c.data,
        epochs=c.epochs_distill,
        noautoanchor=True,
        **(auto_output(pruned_map, teacher_map) if known else {}),
    )


def finetuned(ctx: Context) -> Stage:
    """The pruned model fine-tuned without distillation: the ablation."""
    c = ctx.cfg
    key = {"pruned": ctx.markers["3_prune"]["id"], "epochs": c.epochs_distill}
    return ctx.training(
        "4_finetune",
        "obbslim train",
        SparseTrainConfig,
        sparse_train,
        key,
        data=c.data,
        model=str(ctx.out("3_prune")),
        epochs=c.epochs_distill,
        noautoanchor=True,
    )


def benchmarked(ctx: Context) -> Stage:
    """The comparison table of the five models (ROW_NAMES order)."""
    c = ctx.cfg
    order = [ctx.markers[s] for s in ("1_baseline", "2_sparse", "3_prune", "4_finetune", "4_distill")]
    key = {
        "models": [m["id"] for m in order],
        "imgsz": c.imgsz,
        "device": ctx.device,
        "onnx": c.onnx,
        "runs": c.bench_runs,
        "warmup": c.bench_warmup,
        "threads": c.threads,
    }
    sdir = ctx.run_dir / "5_benchmark"
    args = dict(
        weights=[m["outputs"]["weights"] for m in order],
        names=list(ROW_NAMES),
        data=c.data,
        imgsz=c.imgsz,
        device=ctx.device,
        onnx=c.onnx,
        runs=c.bench_runs,
        warmup=c.bench_warmup,
        threads=c.threads,
        batch=max(1, min(c.batch, 8)),
        out=sdir,
        known=[own_metrics(m["outputs"]["weights"], c) for m in order],
        verbose=c.verbose,
    )

    def finish(sdir: Path, result: dict) -> tuple[dict, dict]:
        outputs = {"table": sdir / "benchmark.md", "json": sdir / "benchmark.json"}
        return outputs, {k: str(v) for k, v in outputs.items()}

    return Stage("5_benchmark", "obbslim benchmark", BenchmarkConfig, benchmark, args, key, finish)


SPECS: tuple[Callable[[Context], Stage], ...] = (baseline, sparse, prune, distilled, finetuned, benchmarked)
#: each stage's spec by its name (STAGES order)
SPEC_BY_NAME: dict[str, Callable[[Context], Stage]] = dict(zip(STAGES, SPECS))


def own_metrics(weights: str | Path, cfg: CompressConfig) -> dict | None:
    """mAP50 and mAP50-95 a training checkpoint holds from its own validation of these weights (a best.pt,
    or the last.pt of a run validated at its last epoch) on this run's data at its size, in fp32; else None.
    The benchmark would measure them again with the same function (the BN-fused model: the same mAP50 to
    the fourth decimal in the demo's five rows)."""
    try:
        ck = read_checkpoint(weights)
    except ObbslimError:
        return None
    m, args = ck.get("metrics") or {}, ck.get("train_args") or {}
    epoch_validated = ck.get("best_epoch") == ck.get("epoch") or args.get("epochs") == ck.get("epoch", -2) + 1
    same = str(args.get("data")) == str(cfg.data) and args.get("imgsz") == cfg.imgsz
    fp32 = str(args.get("device")) == "cpu" or not args.get("amp", True)  # AMP validates in fp16 on CUDA
    if not (same and fp32 and epoch_validated and "mAP50" in m and "mAP50_95" in m):
        return None
    return {"mAP50": float(m["mAP50"]), "mAP50_95": float(m["mAP50_95"])}


def _train_result(sdir: Path, weights: str) -> tuple[dict, dict]:
    """A training stage's outputs (the weights it hands on) and info: best.pt's mAP50 (from its own
    validation), its epoch, the epochs done and the training time (from last.pt)."""
    best, last = sdir / "weights" / "best.pt", sdir / "weights" / "last.pt"
    ck = read_checkpoint(last)
    best_map = (read_checkpoint(best).get("metrics") or {}).get("mAP50") if best.is_file() else None
    info = {
        "epochs": int(ck["epoch"]) + 1,
        "best_mAP50": float(best_map) if best_map is not None else None,
        "best_epoch": int(ck.get("best_epoch", -1)),
        "train_s": round(float(ck.get("train_time", 0.0)), 2),
    }
    return {"weights": best if weights == "best" and best.is_file() else last, "last": last}, info
