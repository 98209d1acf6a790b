"""Speed of `evaluate_dota` on a generated DOTA-sized case against an official-style reference.

The reference is the DOTA devkit's voc_eval loop (one detection at a time, bounding-box pre-filter,
then one polygon IoU per candidate ground truth) with shapely in place of the devkit's polyiou.
Prints the times, the speed-up and whether the mAPs agree.

    .venv/bin/python benchmarks/bench_eval.py [--images 100] [--dets 20000] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from obbslim.data.labeltxt import read_labeltxt, read_task1, write_labeltxt, write_task1
from obbslim.eval import evaluate_dota

CLASSES = ["plane", "ship", "small-vehicle", "large-vehicle"]


def rect(rng, n, size=1024.0):
    cx, cy = rng.uniform(0, size, (2, n))
    w, h = rng.uniform(10, 80, (2, n))
    t = rng.uniform(-np.pi / 2, np.pi / 2, n)
    return quad(cx, cy, w, h, t)


def quad(cx, cy, w, h, t):
    c, s = np.cos(t), np.sin(t)
    dx = np.array([-1, 1, 1, -1]) / 2
    dy = np.array([-1, -1, 1, 1]) / 2
    x = cx[:, None] + w[:, None] * dx * c[:, None] - h[:, None] * dy * s[:, None]
    y = cy[:, None] + w[:, None] * dx * s[:, None] + h[:, None] * dy * c[:, None]
    return np.round(np.stack([x, y], -1).reshape(-1, 8), 1)


def generate(root: Path, n_images: int, n_dets: int, seed: int) -> tuple[Path, Path]:
    """n_images labelTxt files (about n_dets / 4 objects in all) and Task1 files with n_dets rows:
    half jittered copies of ground truth (hits, duplicates, near misses), half clutter nearby."""
    rng = np.random.default_rng(seed)
    ann, det = root / "ann", root / "det"
    ann.mkdir()
    det.mkdir()
    per_img = max(1, n_dets // 4 // n_images)
    dets: dict[str, list] = {c: [] for c in CLASSES}
    for i in range(n_images):
        img = f"P{i:04d}"
        cx, cy = rng.uniform(0, 1024, (2, per_img))
        w, h = rng.uniform(10, 80, (2, per_img))
        t = rng.uniform(-np.pi / 2, np.pi / 2, per_img)
        polys = quad(cx, cy, w, h, t)
        cls = rng.integers(0, len(CLASSES), per_img)
        write_labeltxt(
            ann / f"{img}.txt", polys, [CLASSES[c] for c in cls], (rng.random(per_img) < 0.1).astype(int)
        )
        n_hit = 2 * per_img
        k = rng.integers(0, per_img, n_hit)
        jit = quad(
            cx[k] + rng.normal(0, 4, n_hit),
            cy[k] + rng.normal(0, 4, n_hit),
            w[k] * rng.uniform(0.8, 1.2, n_hit),
            h[k] * rng.uniform(0.8, 1.2, n_hit),
            t[k] + rng.normal(0, 0.1, n_hit),
        )
        clutter = rect(rng, n_hit)
        all_polys = np.concatenate([jit, clutter])
        all_cls = np.concatenate([cls[k], rng.integers(0, len(CLASSES), n_hit)])
        scores = np.round(rng.uniform(0.05, 1, len(all_polys)), 3)  # 3 decimals: ties, as in submissions
        for p, c, s in zip(all_polys, all_cls, scores):
            dets[CLASSES[c]].append((img, float(s), p))
    for c in CLASSES:
        rng.shuffle(dets[c])
    write_task1(det, dets)
    return det, ann


def reference_map(det: Path, ann: Path, metric: str, thr: float = 0.5) -> float:
    """The devkit's voc_eval per class (shapely IoU), averaged; reads the files itself."""
    from shapely.geometry import Polygon

    recs = {}
    for p in sorted(ann.glob("*.txt")):
        lf = read_labeltxt(p)
        recs[p.stem] = list(zip(lf.polys, lf.names, lf.difficult))
    aps = []
    for classname in sorted({o[1] for objs in recs.values() for o in objs}):
        class_recs, npos = {}, 0
        for img, objs in recs.items():
            r = [o for o in objs if o[1] == classname]
            difficult = np.array([o[2] for o in r]).astype(bool)
            npos += int(np.sum(~difficult))
            class_recs[img] = {
                "bbox": np.array([o[0] for o in r]),
                "difficult": difficult,
                "det": [False] * len(r),
            }
        image_ids, confidence, bbs = read_task1(det / f"Task1_{classname}.txt")
        order = np.argsort(-confidence)
        bbs, image_ids = bbs[order], [image_ids[x] for x in order]
        tp, fp = np.zeros(len(image_ids)), np.zeros(len(image_ids))
        for d in range(len(image_ids)):
            r, bb = class_recs[image_ids[d]], bbs[d]
            ovmax, bbgt = -np.inf, r["bbox"].astype(float)
            if bbgt.size > 0:
                gx0, gy0, gx1, gy1 = (
                    bbgt[:, 0::2].min(1),
                    bbgt[:, 1::2].min(1),
                    bbgt[:, 0::2].max(1),
                    bbgt[:, 1::2].max(1),
                )
                iw = np.maximum(np.minimum(gx1, bb[0::2].max()) - np.maximum(gx0, bb[0::2].min()) + 1.0, 0.0)
                ih = np.maximum(np.minimum(gy1, bb[1::2].max()) - np.maximum(gy0, bb[1::2].min()) + 1.0, 0.0)
                keep = np.where(iw * ih > 0)[0]
                if len(keep):
                    pb = Polygon(bb.reshape(4, 2))
                    ovs = []
                    for j in keep:
                        pg = Polygon(bbgt[j].reshape(4, 2))
                        inter = pg.intersection(pb).area
                        ovs.append(inter / (pg.area + pb.area - inter))
                    ovmax, jmax = np.max(ovs), keep[int(np.argmax(ovs))]
            if ovmax > thr:
                if not r["difficult"][jmax]:
                    if not r["det"][jmax]:
                        tp[d], r["det"][jmax] = 1.0, True
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec, prec = tp / float(npos), tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        if metric == "voc07":
            ap = sum(
                (np.max(prec[rec >= t]) if np.sum(rec >= t) else 0) / 11.0 for t in np.arange(0.0, 1.1, 0.1)
            )
        else:
            mrec, mpre = np.concatenate(([0.0], rec, [1.0])), np.concatenate(([0.0], prec, [0.0]))
            for i in range(mpre.size - 1, 0, -1):
                mpre[i - 1] = max(mpre[i - 1], mpre[i])
            i = np.where(mrec[1:] != mrec[:-1])[0]
            ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
        aps.append(ap)
    return float(np.mean(aps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--dets", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    import torch  # imported outside the timings; obbslim.ops.poly_iou runs on torch

    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        det, ann = generate(Path(tmp), args.images, args.dets, args.seed)
        n_det = sum(len(read_task1(p)[0]) for p in det.glob("*.txt"))
        n_gt = sum(len(read_labeltxt(p)) for p in ann.glob("*.txt"))
        print(f"case: {args.images} images, {n_gt} GT objects, {n_det} detections, {len(CLASSES)} classes")
        print(f"torch threads: {torch.get_num_threads()}")
        evaluate_dota(det, ann)  # warm-up
        for metric in ("voc07", "voc12"):
            t0 = time.perf_counter()
            fast = evaluate_dota(det, ann, metric=metric)["mAP"]
            t_fast = time.perf_counter() - t0
            t0 = time.perf_counter()
            ref = reference_map(det, ann, metric)
            t_ref = time.perf_counter() - t0
            print(
                f"{metric}: evaluate_dota {t_fast:.3f} s (files included), reference {t_ref:.3f} s, "
                f"speed-up x{t_ref / t_fast:.1f}; mAP {fast:.6f} vs {ref:.6f}, "
                f"{'agree' if abs(fast - ref) < 1e-9 else 'DIFFER'}"
            )
        thrs = np.round(np.arange(0.5, 0.96, 0.05), 2)
        t0 = time.perf_counter()
        res = evaluate_dota(det, ann, iou_thr=thrs)
        t_multi = time.perf_counter() - t0
        m = np.mean([r["mAP"] for r in res])
        print(f"10 thresholds 0.50:0.95 in one call: {t_multi:.3f} s, mAP50-95 = {m:.6f}")


if __name__ == "__main__":
    main()
