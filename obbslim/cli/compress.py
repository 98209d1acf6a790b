"""`obbslim compress`: baseline -> sparsity training -> pruning -> distillation -> benchmark -> report.md."""

from __future__ import annotations

import argparse

from obbslim.options import CompressConfig


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
    CompressConfig.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: it loads torch, which `obbslim --help` does not need
    from obbslim.pipeline.compress import compress

    result = compress(CompressConfig.from_args(args))
    return 128 + result["signal"] if result.get("signal") else 0
