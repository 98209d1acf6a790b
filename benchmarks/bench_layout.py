"""The CPU's memory layouts side by side: a model's training step and forward in the default (NCHW)
layout and in channels_last (NHWC), which obbslim uses on the CPU.

    python benchmarks/bench_layout.py [--model yolov5n-obb] [--batch 16] [--imgsz 320] [--threads 2]

Runs alternate between the layouts (the first of each is a warm-up) so that a shared machine's drift
falls on both; the medians and their ratio are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from obbslim.model import build


def step_time(model: torch.nn.Module, x: torch.Tensor, nhwc: bool, train: bool) -> float:
    """Seconds of one forward (and backward, when ``train``) in the given layout."""
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    model.to(memory_format=fmt).train(train)
    x = x.contiguous(memory_format=fmt)
    t = time.perf_counter()
    if train:
        sum(o.float().square().mean() for o in model(x)).backward()
        model.zero_grad(set_to_none=True)
    else:
        with torch.inference_mode():
            model(x)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="yolov5n-obb")
    ap.add_argument("--nc", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build(args.model, nc=args.nc)
    x = torch.rand(args.batch, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(0))
    print(f"{args.model}, batch {args.batch} at {args.imgsz} px, {args.threads} threads, "
          f"median of {args.runs} runs each")  # fmt: skip
    print("| pass | NCHW ms | channels_last ms | ratio |\n|---|---:|---:|---:|")
    for train in (True, False):
        times: dict[bool, list[float]] = {False: [], True: []}
        for k in range(args.runs + 1):
            for nhwc in (False, True) if k % 2 else (True, False):
                t = step_time(model, x, nhwc, train)
                if k:  # the first of each: a warm-up
                    times[nhwc].append(t)
        a, b = (statistics.median(times[v]) * 1000 for v in (False, True))
        print(f"| {'training step' if train else 'forward'} | {a:.0f} | {b:.0f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
