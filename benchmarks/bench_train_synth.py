"""Train yolov5n-obb from scratch on `obbslim synth` data for a fixed CPU time budget.

Reports OBB mAP50 (VOC07) of best.pt on the synthetic val split and the training speed in images/s.
Goal: >= 0.85 mAP50 within 30 minutes on 2 CPU cores (300 images at 512 px).

    python benchmarks/bench_train_synth.py                      # the full benchmark (30 min)
    python benchmarks/bench_train_synth.py --minutes 3 --images 60 --imgsz 256   # a quick check
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="training time budget")
    ap.add_argument("--images", type=int, default=300, help="synthetic images (80%% train)")
    ap.add_argument("--imgsz", type=int, default=512, help="image size (synthetic and training)")
    ap.add_argument("--model", default="yolov5n-obb.yaml")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu (the benchmark's setting) or a GPU id")
    ap.add_argument("--val-every", type=int, default=5)
    ap.add_argument("--hyp", default=None, help="hyperparameter YAML (default: the packaged one)")
    ap.add_argument("--nbs", type=int, default=None, help="nominal batch (default: the hyp's, 64)")
    ap.add_argument("--out", default=None, help="folder for the data and the run (default: a temp dir)")
    args = ap.parse_args()

    import torch

    from obbslim.cfg import load_hyp
    from obbslim.data.dataset import build_dataloader
    from obbslim.data.labels import load_data_yaml, load_split
    from obbslim.data.synth import make_synthetic
    from obbslim.engine.runs import ResultsCSV
    from obbslim.engine.train import train
    from obbslim.eval.metrics import validate
    from obbslim.model import load

    hyp = load_hyp(args.hyp)
    if args.nbs:
        hyp["nbs"] = args.nbs
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_train_"))
    t = time.time()
    data = make_synthetic(out / "synth", n_images=args.images, size=args.imgsz, seed=0, overwrite=True)
    print(f"synthetic data: {args.images} images at {args.imgsz} px in {time.time() - t:.1f} s -> {data}")
    print(f"torch threads: {torch.get_num_threads()}")
    r = train(
        data=data,
        model=args.model,
        epochs=1000,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        workers=args.workers,
        hyp=hyp,
        project=out / "runs",
        name="bench",
        exist_ok=True,
        val_every=args.val_every,
        time_limit=args.minutes / 60,
        verbose=True,
    )
    rows = ResultsCSV(Path(r["run_dir"]) / "results.csv").read()
    seen = sum(int(row["images"]) for row in rows)
    train_s = float(rows[-1]["time"]) if rows else float("nan")

    d = load_data_yaml(data)
    samples, _ = load_split(d, "val", verbose=False)
    loader = build_dataloader(samples, "val", args.imgsz, args.batch * 2, augment=False, workers=args.workers)
    best = r["best"] or r["last"]
    t = time.time()
    m = validate(
        load(best, device="cpu" if args.device == "cpu" else f"cuda:{args.device}"),
        loader,
        d["names"],
        progress=False,
    )
    print(
        f"\nepochs {r['epochs_done']}, images seen {seen}, wall time {train_s / 60:.1f} min "
        f"(incl. validation every {args.val_every} epochs)"
    )
    print(f"training speed: {seen / train_s:.2f} images/s")
    print(f"val: {m['n_images']} images in {time.time() - t:.1f} s")
    print(
        f"best.pt (epoch {r['best_epoch']}): mAP50 VOC07 {m['mAP50']:.4f}, VOC12 {m['mAP50_voc12']:.4f}, "
        f"mAP50-95 {m['mAP50_95']:.4f}, P {m['precision']:.3f}, R {m['recall']:.3f}"
    )
    for name, ap_ in m["per_class"].items():
        print(f"  {name:16s} AP50 {ap_:.4f}")
    print(
        f"goal mAP50 >= 0.85 within 30 min: {'met' if m['mAP50'] >= 0.85 else 'not met'} "
        f"({args.minutes:g} min budget, {args.images} images at {args.imgsz} px)"
    )


if __name__ == "__main__":
    main()
