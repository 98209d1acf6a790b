"""Rotated NMS at DOTA scale: real model outputs at 1024 px, conf 0.001, NMS time against network time.

Run: .venv/bin/python benchmarks/bench_nms_scale.py [--weak W.pt] [--trained W.pt] [--threads 2]

Without --weak/--trained the two models are trained here once (cached in --cache): "weak" is the demo's
baseline recipe (yolov5n-obb, 100 synthetic images at 256 px, 30 epochs, ~3 min on 2 cores), "trained"
yolov5n-obb for 40 epochs on 200 synthetic images at 320 px (~15 min). Both are far from DOTA, so at
conf 0.001 they flood the 1024 px windows with low-score boxes: the regime this benchmark is about.

Each model runs `obbslim detect`'s path (Detector: tiles with the default gap, per-window postprocess
with max_det 1000, tile merge) on the dota_demo images with --threads torch threads; every NMS call
(per window and the merge) is recorded and timed again in isolation, best of --repeat:
- "now": obbslim.ops as `detect` calls it (max_keep = max_det);
- "full": the same without max_keep (every kept box, what `nms_rotated` returns by default);
- "previous": benchmarks/nms_previous.py, the implementation before this benchmark existed (full NMS,
  then the first max_det, as it was called), timed with 1 thread (with 2 it is slower still);
- "shapely": greedy NMS with shapely 2 polygons and an STRtree (stops at max_det).
The kept sets of "now", "previous" and "shapely" are compared call by call. Times are per image.
The machine may be shared: compare the ratios, printed side by side.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import shapely
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nms_previous  # noqa: E402

from obbslim import ops  # noqa: E402
from obbslim.ops import rbox2poly  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train_model(cache: Path, kind: str) -> Path:
    """The weak or trained model of this benchmark, trained once into ``cache/kind``."""
    from obbslim.data.synth import make_synthetic
    from obbslim.engine.train import train
    from obbslim.pipeline.demo import DEMO_HYP

    out = cache / kind
    last = out / "train" / "weights" / "last.pt"
    if last.is_file():
        return last
    data, opts = {
        "weak": (dict(n_images=100, size=256, seed=0), dict(epochs=30, imgsz=256)),
        "trained": (dict(n_images=200, size=320, seed=1), dict(epochs=40, imgsz=320)),
    }[kind]
    yaml_file = out / "synth" / "data.yaml"
    if not yaml_file.is_file():
        make_synthetic(out / "synth", val_frac=0.2, overwrite=True, **data)
    print(f"training the {kind} model ({opts['epochs']} epochs at {opts['imgsz']} px) -> {out}", flush=True)
    res = train(
        data=yaml_file, model="yolov5n-obb.yaml", batch=8, workers=0, device="cpu", hyp=dict(DEMO_HYP),
        project=out, name="train", exist_ok=True, noval=True, noplots=True, verbose=False, **opts,
    )  # fmt: skip
    return Path(res["last"])


def shapely_nms(
    r: np.ndarray, s: np.ndarray, cls: np.ndarray, thr: float, max_keep: int | None
) -> np.ndarray:
    """Greedy class-wise NMS with shapely polygons; an STRtree gives each kept box its neighbours."""
    order = np.argsort(-s, kind="stable")
    polys = shapely.polygons(rbox2poly(r).reshape(-1, 4, 2))
    area = shapely.area(polys)
    tree = shapely.STRtree(polys)
    rank = np.empty(len(r), np.int64)
    rank[order] = np.arange(len(r))
    alive = np.ones(len(r), bool)
    keep: list[int] = []
    for i in order:
        if not alive[i]:
            continue
        keep.append(int(i))
        if max_keep is not None and len(keep) >= max_keep:
            break
        j = tree.query(polys[i])
        j = j[alive[j] & (rank[j] > rank[i]) & (cls[j] == cls[i])]
        if j.size:
            inter = shapely.area(shapely.intersection(polys[i], polys[j]))
            alive[j[inter > thr * (area[i] + area[j] - inter)]] = False
    return np.asarray(keep, np.int64)


def record_calls(weights: Path, images: list[str], imgsz: int, conf: float, threads: int) -> tuple:
    """Run the Detector over the images; return (calls, network s per image, windows, detections)."""
    from obbslim.inference.detector import Detector

    calls: list[dict] = []
    orig = ops.batched_nms_rotated

    def rec(rb, sc, cl, thr, max_keep=None):
        def f(x):
            return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)

        calls.append(dict(rb=f(rb), sc=f(sc), cl=f(cl), thr=float(thr), max_keep=max_keep, image=current[0]))
        return orig(rb, sc, cl, thr, max_keep=max_keep)

    torch.set_num_threads(threads)
    det = Detector(str(weights), device="cpu", imgsz=imgsz, conf=conf)
    det.predict(images[0])  # warm-up
    det.reset_times()
    current = [0]
    ops.batched_nms_rotated = rec
    n_det, windows = 0, 0
    try:
        for k, path in enumerate(images):
            current[0] = k
            d = det.predict(path)
            n_det += len(d)
            windows += d.windows
    finally:
        ops.batched_nms_rotated = orig
    return calls, det.times["inference"] / len(images), windows, n_det


def best_time(fn, repeat: int) -> tuple[float, object]:
    t, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        t = min(t, time.perf_counter() - t0)
    return t, out


def time_call(c: dict, args: argparse.Namespace) -> dict:
    """Times (s) of one recorded NMS call by each implementation, and whether the kept sets agree."""
    rb, sc, cl = torch.from_numpy(c["rb"]), torch.from_numpy(c["sc"]), torch.from_numpy(c["cl"])
    mk, thr = c["max_keep"], c["thr"]
    out: dict = {}
    out["now"], now = best_time(lambda: ops.batched_nms_rotated(rb, sc, cl, thr, max_keep=mk), args.repeat)
    out["full"], _ = best_time(lambda: ops.batched_nms_rotated(rb, sc, cl, thr), args.repeat)
    now = now.numpy()
    if not args.skip_previous:
        torch.set_num_threads(1)  # its best case: more threads only slow its small ops down
        out["previous"], prev = best_time(lambda: nms_previous.batched_nms_rotated(rb, sc, cl, thr), 1)
        torch.set_num_threads(args.threads)
        out["same_prev"] = bool(np.array_equal(now, prev.numpy()[:mk]))
    if not args.skip_shapely:
        r64 = c["rb"].astype(np.float64)
        out["shapely"], shp = best_time(lambda: shapely_nms(r64, c["sc"], c["cl"], thr, mk), 1)
        out["same_shp"] = bool(np.array_equal(now, shp))
    return out


def bench_model(name: str, weights: Path, images: list[str], args: argparse.Namespace) -> dict:
    calls, net_s, windows, n_det = record_calls(weights, images, args.imgsz, args.conf, args.threads)
    torch.set_num_threads(args.threads)
    n_img = len(images)
    res = [time_call(c, args) for c in calls]
    ms = {k: 1000 * sum(r.get(k, 0.0) for r in res) / n_img for k in ("now", "full", "previous", "shapely")}
    same_prev = all(r.get("same_prev", True) for r in res)
    same_shp = all(r.get("same_shp", True) for r in res)
    n_boxes = sum(len(c["sc"]) for c in calls)
    net = 1000 * net_s
    print(
        f"\n{name}: {weights}\n  {n_img} images, {windows} windows, {len(calls)} NMS calls, "
        f"{n_boxes} boxes in ({n_boxes / n_img:.0f} per image), {n_det} detections out"
    )
    print(f"  network (inference)        {net:8.1f} ms/image")
    print(f"  NMS now (max_det, detect)  {ms['now']:8.1f} ms/image  = {ms['now'] / net:.2f}x the network")
    print(f"  NMS now, full (no max_det) {ms['full']:8.1f} ms/image  = {ms['full'] / net:.2f}x the network")
    if not args.skip_previous:
        print(
            f"  NMS previous               {ms['previous']:8.1f} ms/image  = {ms['previous'] / net:.2f}x the "
            f"network; now is {ms['previous'] / ms['now']:.1f}x faster "
            f"(full: {ms['previous'] / ms['full']:.1f}x); same detections: {same_prev}"
        )
    if not args.skip_shapely:
        print(
            f"  shapely + STRtree          {ms['shapely']:8.1f} ms/image;"
            f" now is {ms['shapely'] / ms['now']:.1f}x faster; same detections: {same_shp}"
        )
    return dict(net=net, **ms, same_prev=same_prev, same_shp=same_shp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weak", type=Path, help="checkpoint of a weak model (default: train one)")
    ap.add_argument("--trained", type=Path, help="checkpoint of a trained model (default: train one)")
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "dota_demo" / "images")
    ap.add_argument("--imgsz", type=int, default=1024)
    ap.add_argument("--conf", type=float, default=0.001)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--repeat", type=int, default=3, help="timings of the current NMS: best of N")
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "bench_nms_scale", help="trained models")
    ap.add_argument("--skip-previous", action="store_true", help="do not time the previous implementation")
    ap.add_argument("--skip-shapely", action="store_true", help="do not time the shapely reference")
    args = ap.parse_args()
    images = sorted(str(p) for p in args.images.glob("*.png"))
    if not images:
        sys.exit(f"no .png images in {args.images}")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, shapely {shapely.__version__}, "
          f"{len(images)} images")
    models = {"weak": args.weak, "trained": args.trained}
    for name, w in models.items():
        models[name] = w if w is not None else train_model(args.cache, name)
    for name, w in models.items():
        bench_model(name, w, images, args)


if __name__ == "__main__":
    main()
