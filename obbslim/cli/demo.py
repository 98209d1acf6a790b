"""`obbslim demo`: the whole compress pipeline on the built-in synthetic dataset (what `make demo` runs)."""

from __future__ import annotations

import argparse

from obbslim.options import DemoConfig


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on a synthetic dataset in a few minutes on a CPU",
        description="Write a small synthetic oriented-object dataset into OUT/synth (reused if present) and "
        "run `obbslim compress` on it with yolov5n-obb at 256 px: baseline, sparsity training, pruning, "
        "distillation and plain fine-tuning, benchmark, OUT/report.md. Rerunning skips complete stages.",
    )
    DemoConfig.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: it loads torch, which `obbslim --help` does not need
    from obbslim.pipeline.demo import demo

    result = demo(DemoConfig.from_args(args))
    return 128 + result["signal"] if result.get("signal") else 0
