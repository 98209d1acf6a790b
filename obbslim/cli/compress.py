"""`obbslim compress`: baseline -> sparsity training -> pruning -> distillation -> benchmark -> report.md."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compress",
        help="the whole slimming pipeline in one resumable run (train, sparsify, prune, distill, benchmark)",
        description="Train the baseline (or take --teacher), sparsity-train it, prune it (--prune-ratio or "
        "--target-flops), fine-tune the pruned model with distillation from the baseline and, as the "
        "ablation, without, benchmark the five models and write report.md. Each stage writes its own "
        "sub-folder of PROJECT/NAME with a stage.json marker; rerunning with --exist-ok (or --resume) skips "
        "complete stages and continues an interrupted training stage.",
    )
    p.add_argument("--data", help="dataset YAML (path, train, val, names); not needed with --resume")
    p.add_argument(
        "--model", default="yolov5s-obb.yaml", help="model spec of the baseline (yolov5{n,s,m,l,x}-obb.yaml)"
    )
    p.add_argument("--teacher", default=None, help="a trained checkpoint .pt: skips the baseline training")
    p.add_argument(
        "--prune-ratio", type=float, default=None, help="fraction of the prunable BN channels removed"
    )
    p.add_argument("--target-flops", type=float, default=None, help="fraction of the GFLOPs kept (instead)")
    p.add_argument("--epochs-base", type=int, default=100, help="baseline training epochs")
    p.add_argument("--epochs-sparse", type=int, default=100, help="sparsity training epochs")
    p.add_argument("--epochs-distill", type=int, default=50, help="epochs of distillation and of fine-tuning")
    p.add_argument("--sparsity", type=float, default=1e-3, metavar="LAMBDA", help="L1 on the BN scales")
    p.add_argument("--sparsity-schedule", choices=("constant", "linear", "cosine"), default="constant")
    p.add_argument("--sparsity-weighting", choices=("none", "flops"), default="none",
                   help="flops: scale each layer's LAMBDA by the FLOPs of one of its channels")  # fmt: skip
    p.add_argument("--imgsz", type=int, default=640, help="training / validation / benchmark image size")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="", help="cpu, 0 (default: GPU 0 if available)")
    p.add_argument("--workers", type=int, default=8, help="dataloader workers")
    p.add_argument("--hyp", default=None, help="hyperparameter YAML (only the keys that change)")
    p.add_argument("--val-every", type=int, default=1, help="validate every k epochs (and at the end)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--onnx", action="store_true", help="benchmark also times ONNX Runtime")
    p.add_argument("--bench-runs", type=int, default=50, help="timed runs per model in the benchmark")
    p.add_argument("--bench-warmup", type=int, default=10, help="untimed warm-up runs in the benchmark")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the benchmark")
    p.add_argument("--project", default="runs/compress")
    p.add_argument("--name", default="exp")
    p.add_argument("--exist-ok", action="store_true", help="reuse PROJECT/NAME: complete stages are skipped")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="RUN",
        help="continue a compress run with its stored arguments (no value: the newest in --project)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obbslim.pipeline.compress import compress

    options = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    result = compress(**options)
    return 128 + result["signal"] if result.get("signal") else 0
