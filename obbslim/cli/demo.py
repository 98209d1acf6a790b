"""`obbslim demo`: the whole compress pipeline on the built-in synthetic dataset (what `make demo` runs)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on a synthetic dataset in a few minutes on a CPU",
        description="Write a small synthetic oriented-object dataset into OUT/synth (reused if present) and "
        "run `obbslim compress` on it with yolov5n-obb at 256 px: baseline, sparsity training, pruning, "
        "distillation and plain fine-tuning, benchmark, OUT/report.md. Rerunning skips complete stages.",
    )
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--device", default="cpu", help="cpu or 0 (GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPU count)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obbslim.pipeline.demo import demo

    result = demo(out=args.out, device=args.device, threads=args.threads)
    return 128 + result["signal"] if result.get("signal") else 0
