"""The score with and without the angle's confidence, on trained weights: VOC07 AP50 / AP75 side by side.

    python benchmarks/bench_theta_conf.py --weights W1.pt [W2.pt ...] --data data.yaml --imgsz 320 \
        [--powers 0 0.25 0.5]

Each checkpoint detects the data's val images as ``obbslim detect --conf 0.001`` does (max_det 1000,
merge-NMS), once per power A of ``--theta-conf`` (score = obj x cls x the angle bins' softmax peak ** A;
0 is obj x cls); the detections are scored with the DOTA Task1 metric at IoU 0.5 and 0.75. The peak is a
probability only for a softmax-trained angle head (hyp ``theta_loss: ce``): the row says which loss
trained each checkpoint.
"""

from __future__ import annotations

import argparse

import numpy as np

import obbslim
from obbslim import ops
from obbslim.data.labels import load_data_yaml, load_split
from obbslim.eval import evaluate_images
from obbslim.model import read_checkpoint


def score(weights: str, samples: list, names: list[str], imgsz: int, power: float) -> tuple:
    """(AP50, AP75, detections per image) of one checkpoint scored with ``theta_conf=power``."""
    det = obbslim.Detector(weights, device="cpu", imgsz=imgsz, conf=0.001, max_det=1000, theta_conf=power)
    res = det.predict_batch([str(s.im_file) for s in samples])
    gts = [(np.asarray(s.polys, np.float64).reshape(-1, 8), s.cls, s.difficult) for s in samples]
    dets = [(ops.rbox2poly(d.rboxes).reshape(-1, 8), d.scores, d.cls) for d in res]
    aps = []
    for thr in (0.5, 0.75):
        r = evaluate_images(gts, dets, names, metric="voc07", iou_thr=thr)
        aps.append(float(np.mean([r["per_class"][n] for n in names if r["n_gt"].get(n, 0) > 0])))
    return aps[0], aps[1], sum(len(d.scores) for d in res) / max(len(res), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", nargs="+", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--powers", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    args = ap.parse_args()
    data = load_data_yaml(args.data)
    names = list(data["names"])
    samples, _ = load_split(data, "val", verbose=False)
    head = " | ".join(f"theta_conf {p:g}" for p in args.powers)
    print(f"| weights | angle loss | {head} |  (AP50 / AP75 / detections per image)")
    means = np.zeros((len(args.powers), 2))
    for w in args.weights:
        loss = (read_checkpoint(w).get("hyp") or {}).get("theta_loss", "bce (before the key)")
        cells = [score(w, samples, names, args.imgsz, p) for p in args.powers]
        means += np.array([c[:2] for c in cells]) / len(args.weights)
        row = " | ".join(f"{a:.3f} / {b:.3f} / {n:.0f}" for a, b, n in cells)
        print(f"| {w} | {loss} | {row} |", flush=True)
    print("| mean | | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in means) + " |")


if __name__ == "__main__":
    main()
