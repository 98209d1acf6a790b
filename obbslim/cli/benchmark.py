"""`obbslim benchmark`: the comparison table (mAP50, params, GFLOPs, MB, latency) of several models."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "benchmark",
        help="compare checkpoints: mAP50, params, GFLOPs, weight MB, latency (PyTorch, ONNX Runtime)",
        description="Benchmark each checkpoint on the data's val split and write benchmark.md, "
        "benchmark.json, map_vs_latency.png and map_vs_gflops.png to --out; %% changes are against the "
        "first model.",
    )
    p.add_argument("--weights", nargs="+", required=True, help="checkpoints; the first is the reference")
    p.add_argument("--names", nargs="+", default=None, help="row labels, one per checkpoint")
    p.add_argument("--data", required=True, help="dataset YAML (its val split gives mAP50)")
    p.add_argument("--imgsz", type=int, default=1024, help="input size for mAP, GFLOPs and latency")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--onnx", action="store_true", help="also time the ONNX Runtime fp32 export")
    p.add_argument("--runs", type=int, default=50, help="timed runs (median reported)")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch and ONNX Runtime")
    p.add_argument("--batch", type=int, default=4, help="validation batch size")
    p.add_argument("--out", default="runs/benchmark", help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obbslim.deploy.benchmark import benchmark

    benchmark(args.weights, args.data, imgsz=args.imgsz, device=args.device, onnx=args.onnx, runs=args.runs,
              warmup=args.warmup, threads=args.threads, out=args.out, names=args.names,
              batch_size=args.batch)  # fmt: skip
    return 0
