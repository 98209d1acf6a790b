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

from bench_merge import ap50_ap75, print_table

import obbslim
from obbslim.data.labels import load_data_yaml, load_split
from obbslim.model import read_checkpoint


def score(weights: str, samples: list, names: list[str], imgsz: int, power: float) -> tuple:
    """(AP50, AP75, detections per image) of one checkpoint scored with ``theta_conf=power``."""
    det = obbslim.Detector(weights, device="cpu", imgsz=imgsz, conf=0.001, max_det=1000, theta_conf=power)
    res = det.predict_batch([str(s.im_file) for s in samples])
    return (*ap50_ap75(samples, res, names), sum(len(d.scores) for d in res) / max(len(res), 1))


def angle_loss(weights: str) -> str:
    return (read_checkpoint(weights).get("hyp") or {}).get("theta_loss", "bce (before the key)")


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
    heads = [f"theta_conf {p:g}" for p in args.powers]
    print_table(args.weights, heads, lambda w: [score(w, samples, names, args.imgsz, p) for p in args.powers],
                "detections per image", label=angle_loss, label_head="angle loss")  # fmt: skip


if __name__ == "__main__":
    main()
