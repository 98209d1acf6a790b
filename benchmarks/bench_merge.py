"""Plain NMS against merge-NMS on trained weights: VOC07 AP50 / AP75 and the NMS time, side by side.

    python benchmarks/bench_merge.py --weights W1.pt [W2.pt ...] --data data.yaml --imgsz 320 \
        [--ratios 0.1 0.25 0.5]

Each checkpoint detects the data's val images as ``obbslim detect --conf 0.001`` does (max_det 1000,
one class per box), once with plain NMS and once per merge ratio (``ops.merge_rotated``'s
``min_ratio``); the detections are scored with the DOTA Task1 metric at IoU 0.5 and 0.75.
"""

from __future__ import annotations

import argparse
import functools

import numpy as np

import obbslim
from obbslim import ops
from obbslim.data.labels import load_data_yaml, load_split
from obbslim.eval import evaluate_images

MERGE = ops.merge_rotated  # postprocess calls ops.merge_rotated: swapped here for other ratios


def score(weights: str, samples: list, names: list[str], imgsz: int, ratio: float | None) -> tuple:
    """(AP50, AP75, NMS ms per image) of one checkpoint; ``ratio`` None is plain NMS."""
    ops.merge_rotated = functools.partial(MERGE, min_ratio=ratio) if ratio is not None else MERGE
    try:
        det = obbslim.Detector(weights, device="cpu", imgsz=imgsz, conf=0.001, max_det=1000,
                               merge=ratio is not None)  # fmt: skip
        res = det.predict_batch([str(s.im_file) for s in samples])
    finally:
        ops.merge_rotated = MERGE
    gts = [(np.asarray(s.polys, np.float64).reshape(-1, 8), s.cls, s.difficult) for s in samples]
    dets = [(ops.rbox2poly(d.rboxes).reshape(-1, 8), d.scores, d.cls) for d in res]
    aps = []
    for thr in (0.5, 0.75):
        r = evaluate_images(gts, dets, names, metric="voc07", iou_thr=thr)
        aps.append(float(np.mean([r["per_class"][n] for n in names if r["n_gt"].get(n, 0) > 0])))
    return aps[0], aps[1], det.speed()["nms"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", nargs="+", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.25])
    args = ap.parse_args()
    data = load_data_yaml(args.data)
    names = list(data["names"])
    samples, _ = load_split(data, "val", verbose=False)
    variants = [None, *args.ratios]
    head = " | ".join("plain NMS" if r is None else f"merge {r}" for r in variants)
    print(f"| weights | {head} |  (AP50 / AP75 / NMS ms per image)")
    means = np.zeros((len(variants), 2))
    for w in args.weights:
        cells = [score(w, samples, names, args.imgsz, r) for r in variants]
        means += np.array([c[:2] for c in cells]) / len(args.weights)
        row = " | ".join(f"{a:.3f} / {b:.3f} / {t:.1f}" for a, b, t in cells)
        print(f"| {w} | {row} |", flush=True)
    print("| mean | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in means) + " |")


if __name__ == "__main__":
    main()
