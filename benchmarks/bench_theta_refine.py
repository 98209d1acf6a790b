"""Does the sub-bin theta refinement (``postprocess(theta_refine=True)``, ``ops.csl_refine``) help?

Two measurements, both printed as mean absolute angle error (degrees, period 180) and, for the model,
OBB mAP50 / mAP50-95 with and without the refinement:

1. analytic: CSL vectors of random continuous angles (the training target, ``csl_encode``: a Gaussian
   of radius 2 bins centred on the *rounded* bin), plus Gaussian noise of several levels, decoded by
   argmax and by the refinement; and an "optimistic" output centred on the exact angle (what a
   network could only produce if its targets carried sub-bin information, which CSL targets do not);
2. a tiny yolov5n-obb (width 0.125) trained briefly on the synthetic dataset, evaluated on its
   train and val images: the same decoded outputs post-processed both ways, detections matched to
   ground truth (same class, IoU > 0.5) for the angle error.

    .venv/bin/python benchmarks/bench_theta_refine.py --images 24 --size 128 --steps 300
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
from obbslim.eval.metrics import IOU_THRS
from obbslim.inference.postprocess import postprocess


def angle_err_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.remainder(np.asarray(a) - np.asarray(b) + math.pi / 2, math.pi) - math.pi / 2
    return np.degrees(np.abs(d))


def analytic(n: int = 20000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-math.pi / 2, math.pi / 2, n)
    target = ops.csl_encode(theta)  # [n, 180] in 0..1, peak at the rounded bin
    bins = ops.csl_bin_angle(np.arange(180))
    d = np.remainder(bins[None, :] - theta[:, None] + math.pi / 2, math.pi) - math.pi / 2
    optimistic = np.exp(-((d / (math.pi / 180)) ** 2) / (2 * 2.0**2))  # centred on the exact angle
    print(f"1. analytic: mean |angle error| in degrees (n = {n} random angles)")
    print(f"   {'output':<36}{'argmax':>9}{'refined':>9}")
    for name, base in (("CSL target", target), ("exact-centre", optimistic)):
        for sigma in (0.0, 0.05, 0.1, 0.2):
            p = np.clip(base + rng.normal(0, sigma, base.shape), 1e-4, 1 - 1e-4)
            logits = np.log(p / (1 - p))
            e0 = angle_err_deg(ops.csl_decode(logits), theta).mean()
            e1 = angle_err_deg(ops.csl_refine(logits), theta).mean()
            print(f"   {name + f' + noise {sigma}':<36}{e0:>9.3f}{e1:>9.3f}")


def load_images(samples, size):
    imgs, targets = [], []
    for k, s in enumerate(samples):
        im = cv2.imread(s.im_file)
        assert im.shape[:2] == (size, size)
        imgs.append(torch.from_numpy(im[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255)
        rb = ops.poly2rbox(np.asarray(s.polys, np.float64)).reshape(-1, 5)
        targets += [[k, int(c), *r] for c, r in zip(s.cls, rb)]
    return torch.stack(imgs), torch.tensor(targets, dtype=torch.float32)


def evaluate(model, samples, x, names):
    from obbslim.eval import evaluate_images

    model.eval()
    with torch.no_grad():
        decoded, _ = model(x)
    out = {}
    for refine in (False, True):
        res = postprocess(decoded, conf_thr=0.001, iou_thr=0.4, max_det=300, theta_refine=refine)
        gts, dets, errs = [], [], []
        for s, r in zip(samples, res):
            g = np.asarray(s.polys, np.float64).reshape(-1, 8)
            rb = r["rboxes"].numpy().astype(np.float64)
            p = ops.rbox2poly(rb).reshape(-1, 8)
            gts.append((g, s.cls, None))
            dets.append((p, r["scores"].numpy(), r["cls"].numpy()))
            conf = r["scores"].numpy() > 0.25
            if conf.any() and len(g):
                iou = ops.poly_iou(g, p[conf]) * (s.cls[:, None] == r["cls"].numpy()[conf][None, :])
                j = iou.argmax(1)
                hit = iou[np.arange(len(g)), j] > 0.5
                gt_theta = ops.poly2rbox(g).reshape(-1, 5)[:, 4]
                errs += angle_err_deg(rb[conf][j[hit], 4], gt_theta[hit]).tolist()
        r50 = evaluate_images(gts, dets, names, "voc07", 0.5)["mAP"]
        r95 = np.mean([r["mAP"] for r in evaluate_images(gts, dets, names, "voc12", IOU_THRS)])
        out[refine] = (r50, r95, float(np.mean(errs)) if errs else float("nan"), len(errs))
    return out


def trained(images: int, size: int, steps: int, seed: int) -> None:
    from obbslim.cfg import load_hyp
    from obbslim.data.labels import load_data_yaml, load_split
    from obbslim.data.synth import make_synthetic
    from obbslim.engine.loss import OBBLoss, scale_gains
    from obbslim.model import build, load_spec

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        yaml_file = make_synthetic(Path(tmp) / "ds", n_images=images, size=size, seed=seed, val_frac=0.25)
        data = load_data_yaml(yaml_file)
        train, _ = load_split(data, "train", verbose=False)
        val, _ = load_split(data, "val", verbose=False)
        xt, tt = load_images(train, size)
        xv, _ = load_images(val, size)
    names = data["names"]
    spec = load_spec("yolov5n-obb")
    spec["width_multiple"] = 0.125
    model = build(spec, nc=len(names))
    crit = OBBLoss(model, scale_gains(load_hyp(), nl=3, nc=len(names), imgsz=size))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    t0 = time.time()
    bs = 8
    for step in range(steps):
        model.train()
        idx = torch.randperm(len(xt))[:bs]
        sel = torch.isin(tt[:, 0].long(), idx)
        t = tt[sel].clone()
        remap = {int(i): k for k, i in enumerate(idx)}
        t[:, 0] = torch.tensor([remap[int(i)] for i in t[:, 0]], dtype=torch.float32)
        xb = xt[idx]
        if step % 2:  # flip augmentation keeps angles honest
            xb = xb.flip(-1)
            t[:, 2] = size - t[:, 2]
            t[:, 6] = ops.norm_rbox(torch.cat([t[:, 2:6], -t[:, 6:7]], 1))[:, 4]
        loss, _ = crit(model(xb), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    print(f"\n2. tiny yolov5n-obb, {len(train)} train / {len(val)} val synthetic images of {size} px, "
          f"{steps} steps ({time.time() - t0:.0f}s)")
    print(f"   {'split':<7}{'refine':<8}{'mAP50':>8}{'mAP50-95':>10}{'|dtheta| deg':>14}{'matched':>9}")
    for split, samples, x in (("train", train, xt), ("val", val, xv)):
        res = evaluate(model, samples, x, names)
        for refine, (m50, m95, err, n) in res.items():
            print(f"   {split:<7}{'on' if refine else 'off':<8}{m50:>8.4f}{m95:>10.4f}{err:>14.3f}{n:>9}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-train", action="store_true", help="only the analytic part")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    analytic()
    if not args.no_train:
        trained(args.images, args.size, args.steps, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
