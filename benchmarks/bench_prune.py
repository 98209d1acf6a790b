"""Network slimming end to end: train yolov5s-obb on synthetic data, then sparsity-train it (or take
--weights), prune 50 % of the channels, then fine-tune and distil the pruned model from the same start.

Reports params, GFLOPs at 1024, the stripped fp16 weight file, CPU latency at 1024 (ONNX Runtime,
batch 1, median of --runs; PyTorch with BN fused when the ONNX export is unavailable) and mAP50 of
the sparse model, of the pruned model right after pruning (with and without folding), after
fine-tuning and after distillation from the sparse model, with the change ratios beside the paper's
(params -58.9 %, FLOPs -37.0 %, weights -57.6 %, time -17.4 %) and our goals (params <= -70 %,
FLOPs <= -50 %, latency <= -35 %, distilled mAP >= the sparse model's).

    python benchmarks/bench_prune.py --images 200 --minutes 25   # ~30 min on 2 CPU cores (the README figures)
    python benchmarks/bench_prune.py --minutes 2 --epochs 1 --images 20   # a quick check
    python benchmarks/bench_prune.py --weights runs/train/sparse/weights/best.pt --data D.yaml
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

PAPER = {"params": -58.9, "gflops": -37.0, "weights": -57.6, "latency": -17.4}
GOALS = {"params": -70.0, "gflops": -50.0, "latency": -35.0}


def latency_ms(weights: Path, imgsz: int, runs: int, threads: int, work: Path) -> tuple[float, str]:
    """Median latency of one image at imgsz: ONNX Runtime CPU, else PyTorch fused."""
    import numpy as np
    import torch

    from obbslim.deploy.benchmark import time_fn

    try:
        from obbslim.deploy.export import export_onnx
        from obbslim.inference.onnx_backend import OnnxModel

        path = export_onnx(weights, imgsz=imgsz, out=work / (weights.stem + f"_{imgsz}.onnx"), verbose=False)
        om = OnnxModel(path, providers=["CPUExecutionProvider"], threads=threads)
        x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
        return time_fn(lambda: om.run_numpy(x), runs, warmup=2), f"onnxruntime CPU, {threads} threads"
    except Exception as e:  # no ONNX export in this checkout: PyTorch
        print(f"  (ONNX latency unavailable: {str(e)[:120]}; timing PyTorch fused)")
        from obbslim.model import load

        torch.set_num_threads(threads)
        m = load(weights).fuse()
        x = torch.rand(1, 3, imgsz, imgsz)
        with torch.inference_mode():
            return time_fn(lambda: m(x), runs, warmup=2), f"PyTorch fused CPU, {threads} threads"


def figures(weights: Path, imgsz: int, runs: int, threads: int, work: Path) -> dict:
    from obbslim.deploy.benchmark import strip_checkpoint
    from obbslim.model import load, model_info

    m = load(weights)
    info = model_info(m, imgsz=imgsz, print_fn=None)
    ms, how = latency_ms(weights, imgsz, runs, threads, work)
    return {"params": info["params"], "gflops": info["gflops"], "weights": len(strip_checkpoint(weights)),
            "latency": ms, "how": how}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="a sparsity-trained checkpoint (skips training)")
    ap.add_argument("--data", default=None, help="dataset YAML (default: synthetic data made here)")
    ap.add_argument("--model", default="yolov5s-obb.yaml")
    ap.add_argument("--images", type=int, default=100, help="synthetic images (80%% train)")
    ap.add_argument("--imgsz", type=int, default=256, help="training / validation size")
    ap.add_argument("--minutes", type=float, default=15.0,
                    help="training budget: a baseline without sparsity, then sparsity training from it")
    ap.add_argument("--base-share", type=float, default=0.6,
                    help="the baseline's share of --minutes (0: sparsity from scratch, which the prox step "
                         "collapses: every scale at 0)")  # fmt: skip
    ap.add_argument("--sparsity", type=float, default=1e-3, help="L1 lambda of the sparsity training")
    ap.add_argument("--sparsity-mode", choices=("prox", "subgradient"), default="prox",
                    help="how lambda is applied (obbslim train --sparsity-mode)")
    ap.add_argument("--sparsity-weighting", choices=("none", "flops"), default="flops",
                    help="flops: each layer's lambda scaled by the FLOPs a channel costs (resource-aware)")
    ap.add_argument("--ratio", type=float, default=0.5, help="fraction of the BN channels removed")
    ap.add_argument("--epochs", type=int, default=12, help="fine-tuning and distillation epochs, each")
    ap.add_argument("--tune-lr", type=float, default=0.0005, help="lr0 of fine-tuning and distillation")
    ap.add_argument("--kd-temp", type=float, default=2.0, help="distillation temperature (output terms)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--latency-size", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per latency (median)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for the latency")
    ap.add_argument("--out", default=None, help="work folder (default: a temp dir)")
    args = ap.parse_args()

    import torch

    from obbslim.data.synth import make_synthetic
    from obbslim.distill import distill
    from obbslim.engine.train import train
    from obbslim.prune import prune_checkpoint
    from obbslim.prune.sparsity import sparse_train

    t_start = time.time()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_prune_"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, work dir {out}")
    # AdamW at a small nominal batch learns in CPU minutes (SGD with nbs 64 barely starts)
    hyp = {"optimizer": "AdamW", "lr0": 0.002, "nbs": args.batch, "warmup_epochs": 1.0,
           "warmup_min_iters": 10}  # fmt: skip
    common = dict(imgsz=args.imgsz, batch=args.batch, device="cpu", workers=0, project=out / "runs",
                  exist_ok=True, verbose=False, noplots=False)  # fmt: skip
    data = args.data
    if data is None:
        data = make_synthetic(out / "synth", n_images=args.images, size=args.imgsz, seed=0, overwrite=True)
    weights = Path(args.weights) if args.weights else None
    if weights is None:
        start, base_minutes = args.model, args.minutes * args.base_share
        if base_minutes > 0:  # as compress does: sparsity from a model that has learned something
            t = time.time()
            b = train(data=data, model=args.model, epochs=1000, time_limit=base_minutes / 60, hyp=hyp,
                      name="baseline", val_every=5, **common)  # fmt: skip
            start = b["last"]
            print(f"baseline: {b['epochs_done']} epochs in {(time.time() - t) / 60:.1f} min, val mAP50 "
                  f"{b['metrics'].get('mAP50', 0.0):.4f} -> {start}")
        t = time.time()
        sparse_hours = (args.minutes - base_minutes) / 60
        r = sparse_train(data=data, model=str(start), epochs=1000, time_limit=sparse_hours, hyp=hyp,
                         sparsity=args.sparsity, sparsity_mode=args.sparsity_mode,
                         sparsity_schedule="linear" if args.sparsity_mode == "subgradient" else "constant",
                         sparsity_weighting=args.sparsity_weighting, name="sparse", val_every=5,
                         **common)  # fmt: skip
        weights = Path(r["last"])
        print(f"sparsity training: {r['epochs_done']} epochs, lambda {args.sparsity:g} "
              f"({args.sparsity_mode}, "
              f"weighting {args.sparsity_weighting}) in "
              f"{(time.time() - t) / 60:.1f} min -> {weights} (gamma_hist.png beside results.csv)")

    t = time.time()
    pruned = out / "pruned" / "pruned.pt"
    rep = prune_checkpoint(weights, pruned, ratio=args.ratio, imgsz=args.imgsz, data=data, batch=args.batch,
                           verbose=False)  # fmt: skip
    print(f"pruned {args.ratio:.0%} of the BN channels in {time.time() - t:.0f} s -> {pruned}")
    print(f"  report: {rep['report']}")
    st = rep["stats"]
    print(f"  threshold {st['threshold']:.4g} ({st['gamma_below_threshold']:.1%} of |gamma| at or below), "
          f"{st['channels_removed']} channels removed ({st['channels_removed_fraction']:.1%}), "
          f"folded into {st['folded_bn']} BN + {st['folded_bias']} biases")  # fmt: skip

    # fine-tuning and distillation: same start, same epochs, same hyp (no warmup)
    tune_hyp = {**hyp, "lr0": args.tune_lr, "warmup_epochs": 0.0}  # a gentler lr keeps what pruning kept
    tune = dict(data=data, epochs=args.epochs, hyp=tune_hyp, noautoanchor=True,
                val_every=max(args.epochs // 2, 1), **common)  # fmt: skip
    t = time.time()
    r = train(model=str(pruned), name="finetune", **tune)
    tuned = Path(r["best"] or r["last"])
    map_ft = (r.get("metrics") or {}).get("mAP50")
    print(f"fine-tuned {args.epochs} epochs in {(time.time() - t) / 60:.1f} min -> {tuned}")
    t = time.time()
    r = distill(pruned, weights, kd_output=1.0, kd_feature=0.0, kd_temp=args.kd_temp, name="distill", **tune)
    distilled = Path(r["best"] or r["last"])
    map_kd = (r.get("metrics") or {}).get("mAP50")
    print(f"distilled {args.epochs} epochs (output terms, T={args.kd_temp:g}) in "
          f"{(time.time() - t) / 60:.1f} min -> {distilled}")  # fmt: skip

    f0 = figures(weights, args.latency_size, args.runs, args.threads, out)
    f1 = figures(distilled, args.latency_size, args.runs, args.threads, out)
    maps = rep.get("mAP50") or {}

    def pct(k: str) -> float:
        return 100.0 * (f1[k] - f0[k]) / f0[k]

    print(f"\nlatency: {f0['how']}, batch 1, {args.latency_size} px, median of {args.runs}")
    print(f"{'':16}{'before':>12}{'after':>12}{'change':>10}{'paper':>9}{'goal':>9}")
    rows = [
        ("params (M)", "params", 1e-6, "{:12.3f}"),
        (f"GFLOPs@{args.latency_size}", "gflops", 1, "{:12.2f}"),
        ("weights fp16 MB", "weights", 1 / 2**20, "{:12.2f}"),
        ("latency ms", "latency", 1, "{:12.1f}"),
    ]
    for label, k, sc, fmt in rows:
        goal = f"<= {GOALS[k]:+.0f}%" if k in GOALS else "-"
        print(f"{label:16}" + fmt.format(f0[k] * sc) + fmt.format(f1[k] * sc) + f"{pct(k):+9.1f}%"
              + f"{PAPER[k]:+8.1f}%" + f"{goal:>9}")  # fmt: skip
    nan = float("nan")

    def fmt(v: float | None) -> str:
        return f"{v:.4f}" if v is not None else "n/a"

    before = maps.get("before", nan)
    print(f"\nmAP50 (VOC07, val): sparse model {before:.4f}, "
          f"pruned+folded {maps.get('pruned_folded', nan):.4f}, "
          f"pruned no fold {maps.get('pruned_no_fold', nan):.4f}, fine-tuned {fmt(map_ft)}, "
          f"distilled {fmt(map_kd)}")  # fmt: skip
    if map_kd is not None:
        print(f"goal: no mAP loss once distilled (distilled >= sparse model): "
              f"{'met' if map_kd >= before else 'not met'} ({map_kd - before:+.4f})")  # fmt: skip
    print(f"total {(time.time() - t_start) / 60:.1f} min -> {out}")


if __name__ == "__main__":
    main()
