"""CPU latency of PyTorch vs ONNX Runtime fp32 vs ONNX Runtime INT8, and the INT8 mAP drop.

Speed: yolov5n-obb and yolov5s-obb (untrained: weights do not change the speed) at 640 and 1024 px,
batch 1, median of --runs after --warmup, forward + decode (no NMS), BN fused; INT8 calibrated on
real DOTA tiles (../shared/data/dota8) when present, else synthetic images.
Accuracy (optional): OBB mAP50 (VOC07) of PyTorch, ORT fp32 and ORT INT8 on a val split, for a
trained checkpoint (--weights, --data) or a yolov5n-obb trained --train-minutes on synthetic data.

    python benchmarks/bench_onnx.py                       # speed table, ~3-4 min on 2 busy cores
    python benchmarks/bench_onnx.py --sizes 640 --models n --weights best.pt --data D.yaml --imgsz 640
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dota8" / "images" / "train"


def speed(models: list[str], sizes: list[int], runs: int, warmup: int, threads: int, calib: list, tmp: Path):
    from obbslim.deploy import OnnxModel, export_onnx, quantize_int8
    from obbslim.deploy.benchmark import time_fn
    from obbslim.model import build

    torch.set_num_threads(threads)
    print(f"{'model':<14}{'size':>6}{'PyTorch ms':>12}{'ORT fp32 ms':>13}{'ORT INT8 ms':>13}"
          f"{'fp32/PT':>9}{'INT8/PT':>9}{'INT8/fp32':>11}")  # fmt: skip
    for name in models:
        spec = f"yolov5{name}-obb"
        torch.manual_seed(0)
        model = build(spec, nc=15).eval()
        for s in sizes:
            p = export_onnx(model, imgsz=s, out=tmp / f"{spec}_{s}.onnx", verbose=False)
            q = quantize_int8(p, calib, calib=len(calib), verbose=False)
            fused = build(model.get_arch(), nc=15)
            fused.load_state_dict(model.state_dict())
            fused = fused.eval().fuse()
            x = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
            with torch.inference_mode():
                t_pt = time_fn(lambda f=fused, x=x: f(x), runs, warmup)
            xn = x.numpy()
            t_fp = time_fn(lambda m=OnnxModel(p, threads=threads), xn=xn: m.run_numpy(xn), runs, warmup)
            t_q = time_fn(lambda m=OnnxModel(q, threads=threads), xn=xn: m.run_numpy(xn), runs, warmup)
            print(f"{spec:<14}{s:>6}{t_pt:>12.1f}{t_fp:>13.1f}{t_q:>13.1f}"
                  f"{t_pt / t_fp:>8.2f}x{t_pt / t_q:>8.2f}x{t_fp / t_q:>10.2f}x", flush=True)  # fmt: skip


def accuracy(weights: str, data: str, imgsz: int, calib_n: int, tmp: Path) -> None:
    """mAP50 of PyTorch, ORT fp32 and ORT INT8 on the data's val split (letterboxed to imgsz)."""
    from obbslim.data.dataset import build_dataloader
    from obbslim.deploy import OnnxModel, export_onnx, quantize_int8, validate_onnx
    from obbslim.eval.metrics import validate
    from obbslim.model import load

    m = load(weights).fuse()
    loader = build_dataloader(data, "val", imgsz, 4, augment=False, rect=False)
    m_pt = validate(m, loader, progress=False)["mAP50"]
    p = export_onnx(weights, imgsz=imgsz, out=tmp / "trained.onnx", verbose=False)
    q = quantize_int8(p, data, calib=calib_n, verbose=False)
    m_fp = validate_onnx(OnnxModel(p), data)["mAP50"]
    om_q = OnnxModel(q)
    m_q, calib_n = validate_onnx(om_q, data)["mAP50"], om_q.meta["calib_images"]
    print(f"mAP50 (VOC07, {len(loader.dataset)} val images, {imgsz} px): PyTorch {m_pt:.4f}, "
          f"ORT fp32 {m_fp:.4f}, ORT INT8 {m_q:.4f} (INT8 drop {m_fp - m_q:+.4f}, {calib_n} calib. images)")


def train_synthetic(minutes: float, tmp: Path) -> tuple[str, str]:
    from obbslim.data.synth import make_synthetic
    from obbslim.engine.train import train

    data = str(make_synthetic(tmp / "synth", n_images=60, size=256, seed=0, val_frac=0.2))
    t0 = time.time()
    res = train(data=data, model="yolov5n-obb.yaml", epochs=1000, imgsz=256, batch=8, device="cpu",
                workers=0, project=str(tmp / "runs"), name="int8", time_limit=minutes / 60, noplots=True,
                val_every=5, verbose=False)  # fmt: skip
    print(f"\ntrained yolov5n-obb for {time.time() - t0:.0f} s ({res['epochs_done']} epochs) on 48 synthetic "
          "images at 256 px")  # fmt: skip
    return str(res["best"] or res["last"]), data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["n", "s"], help="yolov5<X>-obb scales")
    ap.add_argument("--sizes", nargs="+", type=int, default=[640, 1024])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib", type=int, default=8, help="INT8 calibration images")
    ap.add_argument("--weights", default=None, help="a trained checkpoint for the INT8 mAP drop")
    ap.add_argument("--data", default=None, help="its dataset YAML (val split scored, train calibrates)")
    ap.add_argument("--imgsz", type=int, default=1024, help="input size of the mAP part (with --weights)")
    ap.add_argument("--train-minutes", type=float, default=0.0,
                    help="without --weights: train yolov5n-obb on synthetic data this long for the mAP part")
    args = ap.parse_args()
    import onnxruntime

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads, "
          f"batch 1, median of {args.runs} runs after {args.warmup} warm-up")  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        calib = sorted(str(p) for p in SHARED.glob("*.jpg"))
        if not calib:
            from obbslim.data.synth import make_synthetic

            y = make_synthetic(tmp / "calib", n_images=args.calib, size=512, val_frac=0)
            calib = sorted(str(p) for p in (y.parent / "images" / "train").glob("*.png"))
        calib = list(np.resize(calib, args.calib))  # repeat the 4 dota8 tiles when more are asked for
        print(f"INT8 calibration: {len(calib)} images ({'dota8 train' if SHARED.is_dir() else 'synthetic'})")
        speed(args.models, args.sizes, args.runs, args.warmup, args.threads, calib, tmp)
        if args.weights:
            accuracy(args.weights, args.data, args.imgsz, 32, tmp)
        elif args.train_minutes > 0:
            weights, data = train_synthetic(args.train_minutes, tmp)
            accuracy(weights, data, 256, 16, tmp)


if __name__ == "__main__":
    main()
