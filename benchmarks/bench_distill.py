"""Distillation vs plain fine-tuning of a pruned model on `obbslim synth` data (CPU-sized).

1. train a teacher (yolov5n-obb) for --teacher-minutes (or reuse --teacher T.pt with --data D.yaml);
2. prune it with obbslim.prune.prune(ratio=--ratio) (a narrower yolov5n-obb if prune is missing);
3. from the same pruned weights, run --epochs epochs of: fine-tuning (detection loss only), and
   distillation with output terms only, feature terms only (CWD), and both;
4. report OBB mAP50 (VOC07, val split) of the teacher, the pruned model before fine-tuning, the
   fine-tuned model and each distilled model. Goal: distilled >= teacher and > fine-tuned.

    python benchmarks/bench_distill.py                                  # ~30 min on 2 CPU cores
    python benchmarks/bench_distill.py --teacher-minutes 3 --epochs 3 --images 60   # a quick check
    for s in 0 1 2; do python benchmarks/bench_distill.py --seed $s --modes finetune,both; done   # 3 seeds
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-minutes", type=float, default=12.0, help="teacher training budget")
    ap.add_argument("--teacher", default=None, help="reuse this teacher checkpoint (needs --data)")
    ap.add_argument("--data", default=None, help="dataset YAML (default: a fresh synthetic set)")
    ap.add_argument("--epochs", type=int, default=10, help="fine-tuning / distillation epochs, each")
    ap.add_argument("--images", type=int, default=100, help="synthetic images (80%% train)")
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ratio", type=float, default=0.5, help="prune ratio of the BN channels")
    ap.add_argument("--modes", default="finetune,output,feature,both",
                    help="comma list of finetune, output, feature, both, auto, mimic")  # fmt: skip
    ap.add_argument("--kd-temp", type=float, default=1.0)
    ap.add_argument("--kd-output", type=float, default=1.0)
    ap.add_argument("--kd-feature", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: best on a shared 2-core box)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and of each training run")
    ap.add_argument("--out", default=None, help="folder for data and runs (default: a temp dir)")
    args = ap.parse_args()

    import torch

    from obbslim.data.dataset import build_dataloader
    from obbslim.data.labels import load_data_yaml, load_split
    from obbslim.data.synth import make_synthetic
    from obbslim.distill import distill
    from obbslim.engine.train import train
    from obbslim.eval.metrics import validate
    from obbslim.model import load, save

    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_distill_"))
    t_all = time.time()
    data = args.data or make_synthetic(
        out / "synth", n_images=args.images, size=args.imgsz, seed=args.seed, overwrite=True
    )
    d = load_data_yaml(data)
    dev = "cpu" if args.device == "cpu" else f"cuda:{args.device}"
    val_samples, _ = load_split(d, "val", verbose=False)
    loader = build_dataloader(val_samples, "val", args.imgsz, args.batch * 2, augment=False, workers=0)
    common = dict(
        imgsz=args.imgsz, batch=args.batch, device=args.device, workers=args.workers, project=out / "runs",
        exist_ok=True, noplots=True, verbose=False, seed=args.seed,
    )  # fmt: skip
    hyp = {"nbs": args.batch, "warmup_min_iters": 10}

    def map50(path_or_model) -> float:
        m = load(path_or_model, device=dev) if isinstance(path_or_model, (str, Path)) else path_or_model
        return float(validate(m.to(dev).eval(), loader, d["names"], progress=False)["mAP50"])

    # ---- 1. teacher
    if args.teacher:
        teacher = Path(args.teacher)
    else:
        t = time.time()
        r = train(data=data, model="yolov5n-obb.yaml", epochs=1000, time_limit=args.teacher_minutes / 60,
                  hyp=hyp, name="teacher", val_every=5, **common)  # fmt: skip
        teacher = Path(r["best"] or r["last"])
        print(f"teacher: {r['epochs_done']} epochs in {(time.time() - t) / 60:.1f} min -> {teacher}")
    results = {"teacher": map50(teacher)}

    # ---- 2. prune (network slimming's channel pruning on the teacher's BN scales)
    model = load(teacher).train()
    n0 = sum(p.numel() for p in model.parameters())
    try:
        from obbslim.prune import prune

        prune(model, ratio=args.ratio, imgsz=args.imgsz)
        how = f"obbslim.prune.prune(ratio={args.ratio})"
    except ImportError:
        from obbslim.model import build, load_spec

        spec = load_spec("yolov5n-obb")
        spec["width_multiple"] = 0.125
        model = build(spec, len(d["names"]), d["names"])
        how = "yolov5n-obb at width 0.125 (obbslim.prune not available), fresh weights"
    n1 = sum(p.numel() for p in model.parameters())
    pruned = out / "pruned.pt"
    save(model.cpu(), pruned)
    results["pruned"] = map50(pruned)
    print(f"pruned with {how}: {n0} -> {n1} params ({n1 / n0:.2f}); Detect inputs "
          f"{[m.weight.shape[1] for m in model.detect.m]}")  # fmt: skip

    # ---- 3. fine-tune vs distil, same start, same epochs, same hyp (no warmup)
    ft_hyp = {**hyp, "warmup_epochs": 0.0}
    kd_modes = {
        "output": dict(kd_output=args.kd_output, kd_feature=0.0),
        "feature": dict(kd_output=0.0, kd_feature=args.kd_feature),
        "both": dict(kd_output=args.kd_output, kd_feature=args.kd_feature),
        "auto": dict(kd_output="auto", kd_feature=args.kd_feature),  # distill's default
        "mimic": dict(kd_output=args.kd_output, kd_feature=args.kd_feature, kd_feature_type="mimic"),
    }
    times = {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        t = time.time()
        opts = dict(data=data, epochs=args.epochs, hyp=ft_hyp, name=mode, val_every=max(args.epochs // 2, 1),
                    noautoanchor=True, **common)  # fmt: skip
        if mode == "finetune":
            r = train(model=str(pruned), **opts)
        else:
            r = distill(pruned, teacher, kd_temp=args.kd_temp, **kd_modes[mode], **opts)
        results[mode] = map50(r["best"] or r["last"])
        times[mode] = time.time() - t
        print(f"{mode}: {args.epochs} epochs in {times[mode] / 60:.1f} min, mAP50 {results[mode]:.4f}")

    n_val = len(val_samples)
    print(f"\nOBB mAP50 (VOC07) on {n_val} val images at {args.imgsz} px, {args.epochs} epochs each:")
    for k, v in results.items():
        print(f"  {k:10s} {v:.4f}" + (f"   ({times[k] / 60:.1f} min)" if k in times else ""))
    kd = {k: v for k, v in results.items() if k in kd_modes}
    if kd and "finetune" in results:
        best = max(kd, key=kd.get)
        ok = kd[best] >= results["teacher"] and kd[best] > results["finetune"]
        print(f"goal distilled >= teacher and > fine-tuned: {'met' if ok else 'not met'} (best: {best})")
    print(f"total {(time.time() - t_all) / 60:.1f} min -> {out}")


if __name__ == "__main__":
    main()
