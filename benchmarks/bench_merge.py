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
from typing import Callable

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
    return (*ap50_ap75(samples, res, names), det.speed()["nms"])


def ap50_ap75(samples: list, res: list, names: list[str]) -> tuple[float, float]:
    """VOC07 mAP at IoU 0.5 and 0.75 of ``Detector.predict_batch`` results on ``samples``."""
    gts = [(np.asarray(s.polys, np.float64).reshape(-1, 8), s.cls, s.difficult) for s in samples]
    dets = [(ops.rbox2poly(d.rboxes).reshape(-1, 8), d.scores, d.cls) for d in res]
    aps = []
    for thr in (0.5, 0.75):
        r = evaluate_images(gts, dets, names, metric="voc07", iou_thr=thr)
        aps.append(float(np.mean([r["per_class"][n] for n in names if r["n_gt"].get(n, 0) > 0])))
    return aps[0], aps[1]


def print_table(
    weights: list[str], heads: list[str], cells: Callable, third: str, label: Callable | None = None,
    label_head: str = "label",
) -> None:
    """One markdown row per checkpoint: ``cells(w)`` gives (AP50, AP75, third figure) per column, then the
    means of AP50 / AP75; ``label(w)`` adds a column (``label_head``) after the weights."""
    extra = " | " if label else ""
    print(f"| weights |{f' {label_head} |' if label else ''} {' | '.join(heads)} |  (AP50 / AP75 / {third})")
    means = np.zeros((len(heads), 2))
    for w in weights:
        row = cells(w)
        means += np.array([c[:2] for c in row]) / len(weights)
        text = " | ".join(f"{a:.3f} / {b:.3f} / {t:.1f}" for a, b, t in row)
        print(f"| {w} | {label(w) + extra if label else ''}{text} |", flush=True)
    print(f"| mean | {extra}" + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in means) + " |")


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
    heads = ["plain NMS" if r is None else f"merge {r}" for r in variants]
    print_table(args.weights, heads, lambda w: [score(w, samples, names, args.imgsz, r) for r in variants],
                "NMS ms per image")  # fmt: skip


if __name__ == "__main__":
    main()
