"""obbslim against Ultralytics OBB, side by side on the same `obbslim synth` data, scored the same way.

Both detectors train from scratch with their defaults, one after the other (each alone on the machine),
then predict the val split at conf 0.001 into DOTA Task1 files, which the official metric
(`obbslim evaluate`) scores: VOC07 mAP50, AP75 and mAP50-95, per class, and the angle error of matched
detections (the mean at IoU >= 0.5, and per class the median at IoU >= 0.1, which also counts the
detections an angle error pushed below IoU 0.5). Ultralytics is never a dependency of obbslim: give an
interpreter that has it with --peer-python (the peer script's header says how to make one); without it
only obbslim runs.

    python benchmarks/bench_vs_peer.py --peer-python /tmp/ulvenv/bin/python          # issue's setting
    python benchmarks/bench_vs_peer.py --images 60 --size 128 --epochs 2              # a quick check
    python benchmarks/bench_vs_peer.py --seed 1 --classes plane ship harbor           # another task
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PEER_SCRIPT = ROOT.parent / "shared" / "peer" / "ul_synth.py"
IOUS = [round(0.5 + 0.05 * i, 2) for i in range(10)]


def run(cmd: list[str], log: Path) -> float:
    """Run a command with its output in ``log``; return its wall time; stop with the log's tail on failure."""
    t = time.time()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if rc:
        sys.exit(f"failed ({rc}): {' '.join(cmd)}\n" + "".join(open(log).readlines()[-20:]))
    return time.time() - t


def _one_class(gts: list, dets: list, c: int) -> tuple[list, list]:
    """The ground truths and detections of class ``c`` only, per image."""
    g, d = [], []
    for p, k in gts:
        m = np.asarray(k) == c
        g.append((np.asarray(p).reshape(-1, 8)[m], np.asarray(k)[m]))
    for p, s, k in dets:
        m = np.asarray(k) == c
        d.append((np.asarray(p).reshape(-1, 8)[m], np.asarray(s)[m], np.asarray(k)[m]))
    return g, d


def score(task1: Path, ann: Path) -> dict:
    """VOC07 mAP at 0.5, 0.75 and 0.5:0.95, per-class AP50 and the angle error, from Task1 files."""
    from obbslim.data.labeltxt import read_labeltxt, read_task1
    from obbslim.eval import angle_error, evaluate_dota

    res = evaluate_dota(task1, ann, metric="voc07", iou_thr=IOUS)
    ids = sorted(p.stem for p in ann.glob("*.txt"))
    names = sorted({n for i in ids for n in read_labeltxt(ann / f"{i}.txt").names})
    gts, dets = {}, {i: ([], [], []) for i in ids}
    for i in ids:
        lab = read_labeltxt(ann / f"{i}.txt")
        gts[i] = (lab.polys, np.array([names.index(n) for n in lab.names], np.int64))
    for c, n in enumerate(names):
        f = task1 / f"Task1_{n}.txt"
        if f.is_file():
            img, sc, polys = read_task1(f)
            for im, s, p in zip(img, sc, polys):
                if im in dets:
                    dets[im][0].append(p), dets[im][1].append(s), dets[im][2].append(c)
    g, d = [gts[i] for i in ids], [dets[i] for i in ids]
    # IoU >= 0.5 keeps only the detections whose angle was already good enough on a long box; matching
    # at IoU >= 0.1 also sees the ones that an angle error cost their IoU 0.5 (the median: a few 90-degree
    # flips would dominate a mean)
    per_class_angle = {
        n: angle_error(*_one_class(g, d, c), iou_thr=0.1)["median"] for c, n in enumerate(names)
    }
    # near-square objects (planes) modulo 90 degrees: their box repeats every quarter turn, chance is 22.5
    per_class_square = {
        n: angle_error(*_one_class(g, d, c), iou_thr=0.1, near_square=True)["median"]
        for c, n in enumerate(names)
    }
    return {
        "mAP50": res[0]["mAP"],
        "AP75": res[IOUS.index(0.75)]["mAP"],
        "mAP50_95": float(np.mean([r["mAP"] for r in res])),
        "angle_err": angle_error(g, d)["mean"],
        "angle_med_01": angle_error(g, d, iou_thr=0.1)["median"],
        "per_class": res[0]["per_class"],
        "per_class_angle": per_class_angle,
        "per_class_square": per_class_square,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--size", type=int, default=320, help="synthetic image size and training --imgsz")
    ap.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    ap.add_argument("--classes", nargs="*", default=None, help="synthetic classes (default: synth's own)")
    ap.add_argument("--data", default=None, help="an existing synth data.yaml instead of generating one")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="yolov5n-obb.yaml")
    ap.add_argument("--hyp", default=None, help="obbslim hyperparameter YAML (default: the packaged one)")
    ap.add_argument("--amp", action="store_true", help="peer: nothing; obbslim: AMP is on by default on CUDA")
    ap.add_argument("--bf16", action="store_true", help="obbslim trains under bfloat16 autocast "
                    "(CPU; the peer has no such mode)")  # fmt: skip
    ap.add_argument("--peer-python", default=None, help="interpreter with ultralytics installed")
    ap.add_argument("--peer-model", default="yolov8n-obb.yaml")
    ap.add_argument("--peer-script", default=str(PEER_SCRIPT))
    ap.add_argument("--skip-obbslim", action="store_true", help="reuse OUT/obbslim (score it again)")
    ap.add_argument("--out", default="runs/bench_vs_peer")
    args = ap.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    obb = [sys.executable, "-m", "obbslim"]
    if args.data:
        data = Path(args.data).resolve()
    else:
        data = out / "synth" / "data.yaml"
        if not data.is_file():
            cmd = [*obb, "synth", str(data.parent), "--images", str(args.images), "--size", str(args.size),
                   "--seed", str(args.seed)]
            run(cmd + (["--classes", *args.classes] if args.classes else []), out / "synth.log")
    synth = data.parent
    rows: dict[str, dict] = {}

    run_dir = out / "obbslim"
    if not args.skip_obbslim:
        cmd = [*obb, "train", "--data", str(data), "--model", args.model, "--epochs", str(args.epochs),
               "--imgsz", str(args.size), "--batch", str(args.batch), "--workers", str(args.workers),
               "--device", args.device, "--project", str(out), "--name", "obbslim", "--exist-ok", "--noplots"]
        cmd += (["--hyp", args.hyp] if args.hyp else []) + (["--bf16"] if args.bf16 else [])
        t = run(cmd, out / "obbslim_train.log")
        (out / "obbslim_time.txt").write_text(f"{t:.1f}\n")
        weights = run_dir / "weights" / "best.pt"
        cmd = [*obb, "detect", "--weights", str(weights), "--source", str(synth / "images" / "val"),
               "--imgsz", str(args.size), "--conf", "0.001", "--device", args.device,
               "--save-dota", str(run_dir / "task1")]
        run(cmd, out / "obbslim_detect.log")
    rows[f"obbslim {Path(args.model).stem}"] = {
        **score(run_dir / "task1", synth / "labelTxt" / "val"),
        "train_s": float(t.read_text()) if (t := out / "obbslim_time.txt").is_file() else float("nan"),
    }

    if args.peer_python:
        peer_out = out / "peer"
        log = out / "peer.log"
        cmd = [args.peer_python, args.peer_script, str(synth), str(peer_out), str(args.epochs),
               str(args.size), args.peer_model]
        run(cmd, log)
        m = re.search(r"trained \d+ epochs in (\d+)s", log.read_text())
        rows[f"Ultralytics {Path(args.peer_model).stem}"] = {
            **score(peer_out / "task1", synth / "labelTxt" / "val"),
            "train_s": float(m.group(1)) if m else float("nan"),
        }

    print(report(rows, args))
    (out / "bench_vs_peer.json").write_text(json.dumps(rows, indent=1))
    (out / "bench_vs_peer.md").write_text(report(rows, args) + "\n")


def report(rows: dict[str, dict], args: argparse.Namespace) -> str:
    """One markdown table, per-class AP50 below it, and each metric's ratio obbslim / peer."""
    data = f"data {args.data}" if args.data else f"synth --images {args.images} --seed {args.seed}"
    lines = [
        f"{data}, imgsz {args.size}; {args.epochs} epochs, batch {args.batch}, {args.device}",
        "",
        "| detector | mAP50 | AP75 | mAP50-95 | angle error, mean at IoU 0.5 (deg) | angle error, median at "
        "IoU 0.1 (deg) | training s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k, r in rows.items():
        lines.append(
            f"| {k} | {r['mAP50']:.3f} | {r['AP75']:.3f} | {r['mAP50_95']:.3f} | {r['angle_err']:.2f} | "
            f"{r['angle_med_01']:.1f} | {r['train_s']:.0f} |"
        )
    lines.append("")
    for k, r in rows.items():
        lines.append(f"{k}: AP50 " + ", ".join(f"{c} {v:.3f}" for c, v in r["per_class"].items()))
        angles = {c: v for c, v in r["per_class_angle"].items() if v == v}  # NaN: no elongated objects
        lines.append(f"{k}: median angle error " + ", ".join(f"{c} {v:.1f}" for c, v in angles.items()))
        square = {c: v for c, v in r.get("per_class_square", {}).items() if v == v}
        lines.append(
            f"{k}: median angle error modulo 90 of near-square objects (chance 22.5; a round tank's angle is "
            "arbitrary) " + ", ".join(f"{c} {v:.1f}" for c, v in square.items())
        )
    if len(rows) == 2:
        a, b = rows.values()
        ratios = {m: a[m] / b[m] if b[m] else float("inf") for m in ("mAP50", "AP75", "mAP50_95", "train_s")}
        lines.append("obbslim / peer: " + ", ".join(f"{m} {v:.2f}x" for m, v in ratios.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
