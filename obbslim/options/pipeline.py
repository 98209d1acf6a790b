"""Options of ``obbslim compress`` (:class:`CompressConfig`) and ``obbslim demo`` (:class:`DemoConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from obbslim.options.base import Options, option, threads_option, workers_option
from obbslim.options.checks import COUNT, IMGSZ, THREADS, at_least, between, non_negative
from obbslim.options.train import SPARSITY_MODES, SPARSITY_SCHEDULES, SPARSITY_WEIGHTINGS

OPEN_FRACTION = between(0.0, 1.0, low_open=True, high_open=True)


@dataclass
class CompressConfig(Options):
    """Baseline -> sparsity training -> pruning -> distillation (and fine-tuning) -> benchmark -> report."""

    positional = ("data", "model", "teacher")

    data: str | Path | dict | None = option(
        None, "dataset YAML (path, train, val, names); not needed with --resume"
    )
    model: str | Path = option("yolov5s-obb.yaml", "model spec of the baseline (yolov5{n,s,m,l,x}-obb.yaml)")
    pretrained: str | Path | None = option(None, "initialise the baseline from a YOLOv5 checkpoint (e.g. "
                                           "COCO yolov5s.pt), a state dict or an obbslim checkpoint: every "
                                           "tensor whose name and shape match", type=str,
                                           metavar="PATH")  # fmt: skip
    teacher: str | Path | None = option(None, "a trained checkpoint .pt: skips the baseline training")
    prune_ratio: float | None = option(None, "fraction of the prunable BN channels removed", type=float,
                                       check=OPEN_FRACTION)  # fmt: skip
    target_flops: float | None = option(None, "fraction of the GFLOPs kept (instead)", type=float,
                                        check=OPEN_FRACTION)  # fmt: skip
    epochs_base: int = option(100, "baseline training epochs (0 only with --teacher)", check=at_least(0))
    epochs_sparse: int = option(100, "sparsity training epochs", check=COUNT)
    epochs_distill: int = option(50, "epochs of distillation and of fine-tuning", check=COUNT)
    sparsity: float = option(1e-3, "L1 on the BN scales: with the default prox mode, the per-image loss "
                             "gradient below which a channel goes to 0 (see obbslim train --sparsity-mode)",
                             metavar="LAMBDA", check=non_negative())  # fmt: skip
    sparsity_mode: str = option("prox", "how LAMBDA is applied (obbslim train --sparsity-mode)",
                                choices=SPARSITY_MODES)  # fmt: skip
    sparsity_schedule: str = option("constant", "decay of LAMBDA over the sparsity training",
                                    choices=SPARSITY_SCHEDULES)  # fmt: skip
    sparsity_weighting: str = option("none", "flops: scale each layer's LAMBDA by the FLOPs of one of its "
                                     "channels", choices=SPARSITY_WEIGHTINGS)  # fmt: skip
    imgsz: int = option(640, "training / validation / benchmark image size", check=IMGSZ)
    batch: int = option(16, "training batch size", check=COUNT)
    device: str = option("", "cpu, 0 (default: GPU 0 if available)", runtime=True)
    workers: int | None = workers_option(runtime=True)
    cache_images: bool = option(False, "keep the decoded, resized images in RAM in every training stage",
                                runtime=True)  # fmt: skip
    bf16: bool = option(False, "CPU: train every stage under bfloat16 autocast where the CPU has bf16 "
                        "instructions (obbslim train --bf16)")  # fmt: skip
    hyp: str | Path | dict | None = option(None, "hyperparameter YAML (only the keys that change)", type=str)
    onnx: bool = option(False, "benchmark also times ONNX Runtime")
    project: str | Path = option("runs/compress", "where run folders go")
    name: str = option("exp", "run folder name")
    exist_ok: bool = option(False, "reuse PROJECT/NAME: complete stages are skipped", record=False)
    resume: str | Path | bool | None = option(None, "continue a compress run with its stored arguments (no "
                                              "value: the newest in --project)", nargs="?", const=True,
                                              metavar="RUN", record=False)  # fmt: skip
    val_every: int = option(1, "validate every k epochs (and at the end)", check=COUNT)
    seed: int = option(0, "random seed", check=at_least(0))
    bench_runs: int = option(50, "timed runs per model in the benchmark", check=COUNT)
    bench_warmup: int = option(10, "untimed warm-up runs in the benchmark", check=at_least(0))
    threads: int | None = threads_option("CPU threads of every stage")
    serial: bool = option(False, "on CPU, run the fine-tuning ablation after the distillation, with every "
                          "thread, instead of beside it in a second process, each on half of the threads",
                          runtime=True)  # fmt: skip
    verbose: bool = option(True, "print progress and the table", cli=False, runtime=True)


@dataclass
class DemoConfig(Options):
    """The whole compress pipeline on the built-in synthetic dataset (what `make demo` runs)."""

    positional = ("out", "device", "threads")

    out: str | Path = option("runs/demo", "run folder")
    device: str = option("cpu", "cpu or 0 (GPU)")
    threads: int | None = option(None, "CPU threads (default: $OMP_NUM_THREADS, else every core: the demo "
                                 "expects the machine to itself)", type=int, metavar="N",
                                 check=THREADS)  # fmt: skip
    verbose: bool = option(True, "print progress and the table", cli=False)
