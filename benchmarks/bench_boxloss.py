"""Compare box losses (CIoU on (cx, cy, long, short) vs rotation-aware ProbIoU / KLD) on synthetic data.

Trains yolov5n-obb from scratch with each box loss under the same seed, data, schedule and number of
steps (a short self-contained loop: Adam, cosine LR, random flips, no other augmentation) and prints
the OBB mAP50 (VOC07, polygon IoU, DOTA rules) on the synthetic val split.

    .venv/bin/python benchmarks/bench_boxloss.py --images 60 --size 256 --epochs 30
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from obbslim import ops
from obbslim.cfg import load_hyp
from obbslim.data.labels import load_split
from obbslim.data.synth import make_synthetic
from obbslim.engine.loss import OBBLoss, scale_gains
from obbslim.eval import evaluate_images
from obbslim.inference.postprocess import postprocess
from obbslim.model import build


def load(data_yaml: Path, split: str):
    """Images [N, 3, S, S] float and per-image (rboxes [n, 5], cls [n], polys [n, 8]) labels."""
    samples, _ = load_split(data_yaml, split, verbose=False)
    imgs, labels = [], []
    for s in samples:
        im = cv2.imread(s.im_file)[:, :, ::-1]
        imgs.append(torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1))
        rb = ops.poly2rbox(s.polys.astype(np.float64)).astype(np.float32)
        labels.append((rb, s.cls, s.polys))
    return torch.stack(imgs), labels


def flip(x: torch.Tensor, rb: np.ndarray, lr: bool, ud: bool):
    """Flip an image and its rboxes; a mirror negates theta."""
    rb = rb.copy()
    size = x.shape[-1]
    if lr:
        x, rb[:, 0], rb[:, 4] = x.flip(-1), size - rb[:, 0], -rb[:, 4]
    if ud:
        x, rb[:, 1], rb[:, 4] = x.flip(-2), size - rb[:, 1], -rb[:, 4]
    return x, ops.norm_rbox(rb)


def batch(imgs, labels, idx, rng):
    xs, ts = [], []
    for j, i in enumerate(idx):
        x, rb = flip(imgs[i], labels[i][0], rng.random() < 0.5, rng.random() < 0.5)
        xs.append(x)
        ts.append(np.concatenate([np.full((len(rb), 1), j), labels[i][1][:, None], rb], 1))
    return torch.stack(xs).float() / 255, torch.from_numpy(np.concatenate(ts).astype(np.float32))


@torch.no_grad()
def evaluate(model, imgs, labels, names, bs=8) -> float:
    model.eval()
    gts, dets = [], []
    for k in range(0, len(imgs), bs):
        decoded, _ = model(imgs[k : k + bs].float() / 255)
        for d in postprocess(decoded, conf_thr=0.001, iou_thr=0.4, multi_label=True):
            dets.append((ops.rbox2poly(d["rboxes"].double()).numpy(), d["scores"].numpy(), d["cls"].numpy()))
    for _, cls, polys in labels:
        gts.append((polys, cls, None))
    return evaluate_images(gts, dets, names, metric="voc07", iou_thr=0.5)["mAP"]


def train(box_loss: str, data, args) -> tuple[float, float]:
    (timgs, tlabels), (vimgs, vlabels), names = data
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = build("yolov5n-obb", nc=len(names))
    hyp = scale_gains(load_hyp({"box_loss": box_loss}), nl=3, nc=len(names), imgsz=args.size)
    crit = OBBLoss(model, hyp)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(len(timgs) / args.batch)
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / total)))
    )
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(timgs))
        for k in range(0, len(order), args.batch):
            x, t = batch(timgs, tlabels, order[k : k + args.batch], rng)
            loss, items = crit(model(x), t)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            sched.step()
        if (epoch + 1) % max(1, args.epochs // 5) == 0:
            print(f"  {box_loss} epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f} "
                  f"items {[round(v, 4) for v in items.tolist()]} {time.time() - t0:.0f}s", flush=True)
    return evaluate(model, vimgs, vlabels, names), time.time() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=60)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (1 is fastest on a shared CPU)")
    p.add_argument("--losses", default="ciou,probiou", help="comma-separated: ciou, probiou, kld")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data_yaml = make_synthetic(Path(tmp) / "synth", n_images=args.images, size=args.size, seed=args.seed)
        import yaml

        names = yaml.safe_load(Path(data_yaml).read_text())["names"]
        names = list(names.values()) if isinstance(names, dict) else list(names)
        data = (load(data_yaml, "train"), load(data_yaml, "val"), names)
    print(f"synthetic: {len(data[0][0])} train / {len(data[1][0])} val images at {args.size} px, "
          f"{len(names)} classes; yolov5n-obb, {args.epochs} epochs, batch {args.batch}, Adam lr {args.lr}")
    results = {}
    for name in args.losses.split(","):
        results[name] = train(name.strip(), data, args)
    print("\nbox loss   mAP50 (VOC07, val)   train time")
    for name, (m, t) in results.items():
        print(f"{name:<10} {m:.4f}               {t:.0f}s")
    best = max(results, key=lambda k: results[k][0])
    print(f"best: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
