"""Multi-scale and flip inference on full images: what the rates and the flips buy on a trained model.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_multiscale.py [--weights W.pt] [--threads 1]

Without --weights a yolov5n-obb is trained here once (cached in --cache, ~16 min on one thread):
300 synthetic images at 320 px (seed 0), 40 epochs at 320, batch 16, ``optimizer: auto``, ``nbs: 16``
(``obbslim synth`` + ``obbslim train``). Its val split (60 images) is written twice as full-images
folders (``images/``, ``labelTxt/``): as it is (1x) and upscaled 2x (cv2 cubic, labels x2), so that
every object is twice the size the model was trained on. Then ``obbslim val --full-images`` at
``--imgsz 320`` (tiles of 320 px, the default gap) with several ``--rates`` and ``--flip``:

- 2x at rate 1.0 (tiled into 9 windows) is the single-scale protocol on objects too large;
- 2x at rate 0.5 brings them back to the training size (one window): it must score well above;
- 2x at rates 0.5 1.0 must be at least as good as the better of the two (within 0.01);
- the same 2x images resized to 0.5 by hand, at rate 1.0, is the reference for rate 0.5;
- --flip (original, left-right and up-down mirrored inputs, fused) must not lower mAP50 by more
  than 0.005.

Prints a table: folder, rates, flip, windows per image (and network inputs), mAP50 (VOC07, the DOTA
number), mAP50-95, seconds; then the bars. Last, the cost of fusing the flips and merging at DOTA
scale (``merge_cost``: the dota_demo images from ../shared/data at 1024 px, conf 0.001, max_det 1000)
against the network's time. The machine may be shared: the times are indicative only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
HYP = {"optimizer": "auto", "nbs": 16}


def train_model(cache: Path, epochs: int) -> Path:
    """yolov5n-obb on 300 synthetic 320 px images, trained once into ``cache/train``."""
    from obbslim.data.synth import make_synthetic
    from obbslim.engine.train import train

    last = cache / "train" / "weights" / "last.pt"
    if last.is_file():
        return last
    yaml_file = cache / "synth" / "data.yaml"
    if not yaml_file.is_file():
        make_synthetic(cache / "synth", n_images=300, size=320, seed=0, overwrite=True)
    print(f"training yolov5n-obb ({epochs} epochs at 320 px) -> {cache / 'train'}", flush=True)
    t0 = time.perf_counter()
    res = train(
        data=yaml_file, model="yolov5n-obb.yaml", epochs=epochs, imgsz=320, batch=16, workers=0,
        device="cpu", hyp=dict(HYP), project=cache, name="train", exist_ok=True, noval=True, noplots=True,
        verbose=False,
    )  # fmt: skip
    print(f"trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return Path(res["last"])


def write_full_images(pairs: list[tuple[Path, Path]], dst: Path, scale: float) -> Path:
    """A full-images folder (``images/``, ``labelTxt/``) of the (image, labelTxt) ``pairs``, every image
    resized by ``scale`` (cv2 bicubic, as ``obbslim split`` and the rates resize) and its labels too."""
    from obbslim.data.labeltxt import read_labeltxt, write_labeltxt

    if (dst / "done").is_file():
        return dst
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "labelTxt").mkdir(exist_ok=True)
    for im, lab in pairs:
        img = cv2.imread(str(im), cv2.IMREAD_COLOR)
        if scale != 1:
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(dst / "images" / im.name), img)
        lf = read_labeltxt(lab)
        write_labeltxt(dst / "labelTxt" / lab.name, np.asarray(lf.polys) * scale, lf.names, lf.difficult)
    (dst / "done").write_text("")
    return dst


def pairs_of(folder: Path, images: str = "images", labels: str = "labelTxt") -> list[tuple[Path, Path]]:
    return [(im, folder / labels / f"{im.stem}.txt") for im in sorted((folder / images).glob("*.png"))]


def run_val(weights: Path, folder: Path, rates: tuple[float, ...], flip: bool, out: Path) -> dict:
    from obbslim.eval.val import val

    t0 = time.perf_counter()
    r = val(str(weights), full_images=folder, imgsz=320, device="cpu", rates=rates, flip=flip, project=out,
            name="v", exist_ok=True, plots=False, verbose=False, progress=False)  # fmt: skip
    r["seconds"] = time.perf_counter() - t0
    return r


def merge_cost(weights: Path, images: list[Path], imgsz: int) -> None:
    """Fusion and merge at DOTA scale: conf 0.001, max_det 1000 per window and per image, large DOTA
    images in 1024 px tiles. The boxes entering the flip fusion (three views per window) and the one
    merge per image, and their times against the network's, for 1 rate, 3 rates, 3 rates with flips."""
    import obbslim.inference.detector as detector_mod
    from obbslim.inference.detector import Detector

    calls = {"merge": detector_mod.merge_detections, "fuse": detector_mod.fuse_views}
    stats: dict[str, list[tuple[int, float]]] = {"merge": [], "fuse": []}

    def timed(kind):
        def run(parts, *a, **kw):
            t0 = time.perf_counter()
            out = calls[kind](parts, *a, **kw)
            n = sum(len(v[1]) for v in (parts.values() if kind == "merge" else parts))
            stats[kind].append((n, time.perf_counter() - t0))
            return out

        return run

    print(f"\nfusion and merge at DOTA scale: {len(images)} dota_demo images, 1024 px tiles letterboxed to "
          f"{imgsz}, conf 0.001, max_det 1000")  # fmt: skip
    head = f"{'rates':<11} {'flip':<5} {'inputs/img':>10} {'fused/img':>9} {'fusion ms':>9} " \
           f"{'merged/img':>10} {'merge ms':>8} {'network ms':>10} {'ratio':>6}"  # fmt: skip
    print(head + "\n" + "-" * len(head))
    detector_mod.merge_detections, detector_mod.fuse_views = timed("merge"), timed("fuse")
    try:
        for rates, flip in (((1.0,), False), ((0.5, 1.0, 1.5), False), ((0.5, 1.0, 1.5), True)):
            det = Detector(str(weights), device="cpu", imgsz=imgsz, tile=1024, conf=0.001, max_det=1000,
                           rates=rates, flip=flip)  # fmt: skip
            for v in stats.values():
                v.clear()
            for im in images:
                det.predict(im)
            n = len(images)
            fn, ft = (sum(c for c, _ in stats["fuse"]) / n, 1000 * sum(t for _, t in stats["fuse"]) / n)
            mn, mt = (sum(c for c, _ in stats["merge"]) / n, 1000 * sum(t for _, t in stats["merge"]) / n)
            net = 1000 * det.times["inference"] / n
            label = " ".join(f"{r:g}" for r in rates)
            print(f"{label:<11} {'yes' if flip else 'no':<5} {det.n_windows / n:>10.1f} "
                  f"{fn:>9.0f} {ft:>9.1f} {mn:>10.0f} {mt:>8.1f} {net:>10.0f} {(ft + mt) / net:>6.3f}",
                  flush=True)  # fmt: skip
    finally:
        detector_mod.merge_detections, detector_mod.fuse_views = calls["merge"], calls["fuse"]
    print("(ms per image; ratio: fusion and merge against the network)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, help="a trained checkpoint (default: train one into --cache)")
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "bench_multiscale")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-only", action="store_true", help="train (or find) the model and stop")
    ap.add_argument("--no-merge-cost", action="store_true", help="skip the fusion and merge timing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    weights = args.weights or train_model(args.cache, args.epochs)
    if args.train_only:
        print(weights)
        return 0
    src = args.cache / "synth"
    if not (src / "images" / "val").is_dir():
        from obbslim.data.synth import make_synthetic

        make_synthetic(src, n_images=300, size=320, seed=0, overwrite=True)
    val_pairs = pairs_of(src, "images/val", "labelTxt/val")
    one = write_full_images(val_pairs, args.cache / "full_1x", 1.0)
    two = write_full_images(val_pairs, args.cache / "full_2x", 2.0)
    half = write_full_images(pairs_of(two), args.cache / "full_2x_by_hand_0.5", 0.5)  # back by hand

    runs = [
        ("1x", one, (1.0,), False),
        ("1x", one, (1.0,), True),
        ("2x", two, (1.0,), False),
        ("2x", two, (0.5,), False),
        ("2x, 0.5 by hand", half, (1.0,), False),
        ("2x", two, (0.5, 1.0), False),
        ("2x", two, (0.5,), True),
        ("2x", two, (0.5, 1.0), True),
        ("2x", two, (1.0,), True),
    ]
    head = f"{'images':<16} {'rates':<9} {'flip':<5} {'windows/img':>11} {'inputs/img':>10} " \
           f"{'mAP50':>7} {'mAP50-95':>8} {'s':>6}"  # fmt: skip
    print(f"weights: {weights}\n{head}\n{'-' * len(head)}", flush=True)
    res = {}
    for label, folder, rates, flip in runs:
        r = run_val(weights, folder, rates, flip, args.cache / "val")
        n = max(r["n_images"], 1)
        per_rate = r.get("windows_per_rate", {})
        wins = " + ".join(f"{v / n:g}" for v in per_rate.values())
        res[(label, rates, flip)] = r
        print(f"{label:<16} {' '.join(f'{x:g}' for x in rates):<9} {'yes' if flip else 'no':<5} {wins:>11} "
              f"{r['n_windows'] / n:>10g} {r['mAP50']:>7.4f} {r['mAP50_95']:>8.4f} {r['seconds']:>6.1f}",
              flush=True)  # fmt: skip
    m = {k: v["mAP50"] for k, v in res.items()}
    r10, r05, both = m[("2x", (1.0,), False)], m[("2x", (0.5,), False)], m[("2x", (0.5, 1.0), False)]
    print("\nbars:")
    print(f"  2x: rate 0.5 {r05:.4f} vs rate 1.0 {r10:.4f}: {r05 - r10:+.4f}")
    print(f"  2x: rates 0.5 1.0 {both:.4f} vs the better of the two {max(r05, r10):.4f}: "
          f"{both - max(r05, r10):+.4f} (bar: >= -0.01)")  # fmt: skip
    for (label, rates, flip), v in m.items():
        if flip:
            base = m[(label, rates, False)]
            print(f"  {label} rates {' '.join(f'{x:g}' for x in rates)}: --flip {v:.4f} vs {base:.4f}: "
                  f"{v - base:+.4f} (bar: >= -0.005)")  # fmt: skip
    demo = ROOT.parent / "shared" / "data" / "dota_demo" / "images"
    if demo.is_dir() and not args.no_merge_cost:
        merge_cost(weights, sorted(demo.glob("*.png")), 1024)
    return 0


if __name__ == "__main__":
    sys.exit(main())
