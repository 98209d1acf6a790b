"""`obbslim benchmark`: the comparison table (mAP50, params, GFLOPs, MB, latency) of several models."""

from __future__ import annotations

import argparse

from obbslim.options import BenchmarkConfig


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark",
        help="compare checkpoints: mAP50, params, GFLOPs, weight MB, latency (PyTorch, ONNX Runtime)",
        description="Benchmark each checkpoint on the data's val split and write benchmark.md, "
        "benchmark.json, map_vs_latency.png and map_vs_gflops.png to --out; % changes are against the "
        "first model.",
    )
    BenchmarkConfig.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: it loads torch, which `obbslim --help` does not need
    from obbslim.deploy.benchmark import benchmark

    benchmark(BenchmarkConfig.from_args(args))
    return 0
