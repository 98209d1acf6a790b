"""Check transfer from real YOLOv5 checkpoints: every backbone and neck tensor lands, and obbslim's layer
outputs equal the YOLOv5 model's.

The YOLOv5 side runs in another interpreter that has the yolov5 code (``--yolov5-python``, with
``--yolov5-src`` a directory holding yolov5's ``models/`` and ``utils/``: a clone of ultralytics/yolov5 at
v7.0). For each scale it builds ``DetectionModel(models/yolov5X.yaml)`` with random weights and BN
statistics (or loads ``--weights``, e.g. the COCO release file), writes a checkpoint exactly as yolov5's
train.py does (fp16 ``model`` and ``ema``, optimizer state, numpy ``best_fitness``, ``opt``, ``git``,
``date``), turns a copy into a release-style file with yolov5's own ``strip_optimizer``, and records the
output of every layer for one input in fp32 (the weights as stored, fp16, widened).

This process never imports yolov5: it loads both files with ``obbslim.model.pretrained.load_pretrained``
into yolov5X-obb (15 classes, 180 angle bins), runs the same input, and prints the tensors transferred and
the largest absolute difference per part. Exit status 1 when a backbone or neck tensor is missing or a
difference reaches 1e-3.

    python benchmarks/check_yolov5_transfer.py --yolov5-python PY --yolov5-src DIR [--scales n s]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from copy import deepcopy
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

TOL = 1e-3
IMGSZ = 256


# ----------------------------------------------------------------------------- the YOLOv5 side


def export(src: str, scale: str, out: Path, weights: str | None, seed: int) -> None:
    """Runs under the yolov5 interpreter: write the two checkpoints and the reference layer outputs."""
    sys.path.insert(0, src)
    _load = torch.load  # yolov5 v7.0 predates torch's weights_only default; it is trusted code here
    torch.load = lambda *a, **k: _load(*a, **{"weights_only": False, **k})
    # imported here: yolov5's code exists only in the yolov5 interpreter, under --yolov5-src
    from models.yolo import DetectionModel
    from utils.general import strip_optimizer
    from utils.metrics import fitness
    from utils.torch_utils import ModelEMA, de_parallel, smart_optimizer

    torch.manual_seed(seed)
    if weights:
        ck = torch.load(weights, map_location="cpu")
        model = (ck.get("ema") or ck["model"]).float()
    else:
        model = DetectionModel(os.path.join(src, "models", f"yolov5{scale}.yaml"), ch=3, nc=80)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):  # as if trained: no identity BN
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.2)
                    m.running_mean.normal_(0, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
                    m.num_batches_tracked.fill_(1234)
    ema = ModelEMA(model)
    with torch.no_grad():  # one "step": the raw weights move, the EMA follows part of the way
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    ema.update(model)
    optimizer = smart_optimizer(model, "SGD", 0.01, 0.937, 5e-4)
    opt = argparse.Namespace(weights="", cfg=f"yolov5{scale}.yaml", epochs=1, batch_size=16, imgsz=640)
    ckpt = {  # yolov5 v7.0 train.py, "Save model"
        "epoch": 0,
        "best_fitness": fitness(np.array([0.5, 0.4, 0.3, 0.2, 0.0, 0.0, 0.0]).reshape(1, -1)),
        "model": deepcopy(de_parallel(model)).half(),
        "ema": deepcopy(ema.ema).half(),
        "updates": ema.updates,
        "optimizer": optimizer.state_dict(),
        "opt": vars(opt),
        "git": {"remote": "https://github.com/ultralytics/yolov5", "branch": "master", "commit": "915bbf2"},
        "date": datetime.now().isoformat(),
    }
    train_pt, release_pt = out / f"yolov5{scale}_last.pt", out / f"yolov5{scale}.pt"
    torch.save(ckpt, train_pt)
    shutil.copy(train_pt, release_pt)
    strip_optimizer(release_pt)  # how the release files are made: ema -> model, fp16, no optimizer

    ref = torch.load(release_pt, map_location="cpu")["model"].float().eval()  # == ckpt's ema, widened
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(seed))
    feats = {}
    for i, m in enumerate(ref.model[:-1]):
        m.register_forward_hook(lambda mod, inp, o, i=i: feats.__setitem__(i, o.detach().clone()))
    with torch.no_grad():
        ref(x)
    torch.save({"x": x, "feats": feats}, out / f"yolov5{scale}_feats.pt")


# ----------------------------------------------------------------------------- the obbslim side


def _outputs(net, x) -> dict:
    feats = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, o, i=i: feats.__setitem__(i, o.detach()))
        for i, m in enumerate(net.model[:-1])
    ]
    with torch.no_grad():
        net.eval()(x)
    for h in hooks:
        h.remove()
    return feats


def check(scale: str, files: Path) -> bool:
    # imported here, not at the top: the yolov5 interpreter runs this file too and need not have obbslim
    from obbslim.model import build
    from obbslim.model.pretrained import load_pretrained, model_parts

    ref = torch.load(files / f"yolov5{scale}_feats.pt", weights_only=True)
    fresh = _outputs(build(f"yolov5{scale}-obb", 15), ref["x"])  # the control: no transfer
    control = max(float((fresh[i] - y).abs().max()) for i, y in ref["feats"].items())
    print(f"  control, a fresh yolov5{scale}-obb: max |obbslim - yolov5| layer outputs {control:.2e}")
    ok = control > 100 * TOL
    for name in (f"yolov5{scale}.pt", f"yolov5{scale}_last.pt"):
        path = files / name
        try:
            torch.load(path, weights_only=True)
            print(f"  {name}: torch.load(weights_only=True) read it: not a pickled-module file?")
            ok = False
        except Exception:
            pass
        net = build(f"yolov5{scale}-obb", 15)
        t0 = time.perf_counter()
        t = load_pretrained(net, path)
        dt = time.perf_counter() - t0
        feats = _outputs(net, ref["x"])
        parts = model_parts(net)
        diff = {"backbone": 0.0, "neck": 0.0}
        scale_ = 0.0
        for i, y in ref["feats"].items():
            diff[parts[i]] = max(diff[parts[i]], float((feats[i] - y).abs().max()))
            scale_ = max(scale_, float(y.abs().max()))
        p345 = [float((feats[i] - ref["feats"][i]).abs().max()) for i in (4, 6, 9)]
        full = all(t.parts[p][0] == t.parts[p][1] for p in ("backbone", "neck"))
        good = full and max(diff.values()) < TOL
        ok &= good
        print(f"  {name}: {t.summary()}; read in {dt:.2f} s")
        print(
            f"    max |obbslim - yolov5| layer outputs: backbone {diff['backbone']:.2e} "
            f"(P3 {p345[0]:.2e}, P4 {p345[1]:.2e}, P5 {p345[2]:.2e}), neck {diff['neck']:.2e}; "
            f"largest |output| {scale_:.1f}  -> {'OK' if good else 'FAIL'}"
        )
    if "models" in sys.modules or "utils.general" in sys.modules:
        print("  the yolov5 code was imported into this process")
        ok = False
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--yolov5-python", required=True, help="an interpreter that can run yolov5's code")
    ap.add_argument("--yolov5-src", required=True, help="directory with yolov5's models/ and utils/")
    ap.add_argument("--scales", nargs="+", default=["n", "s"], choices=list("nsmlx"))
    ap.add_argument(
        "--weights", default=None, help="a YOLOv5 .pt to use instead of random weights (one scale)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="write the checkpoints here instead of a temp dir")
    args = ap.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep or tmp)
        out.mkdir(parents=True, exist_ok=True)
        for s in args.scales:
            cmd = [args.yolov5_python, __file__, "_export", args.yolov5_src, s, str(out), str(args.seed)]
            cmd += [args.weights] if args.weights else []
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                print(r.stdout[-3000:] + r.stderr[-3000:])
                return 2
            print(f"yolov5{s}:")
            ok &= check(s, out)
    print("all checks passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_export":
        src, scale, out, seed, *w = sys.argv[2:]
        export(src, scale, Path(out), w[0] if w else None, int(seed))
    else:
        sys.exit(main())
