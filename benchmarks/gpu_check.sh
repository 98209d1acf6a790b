#!/usr/bin/env bash
# One prepared GPU check (CUDA, AMP, DDP with one rank) with throughput. Run from the repo root on a
# CUDA machine:  bash benchmarks/gpu_check.sh [OUT_DIR]
# It trains yolov5n-obb and yolov5s-obb briefly on synthetic data and prints training images/s
# (from results.csv: images seen / epoch time, validation excluded) and inference images/s.
set -euo pipefail
OUT=${1:-${OUT:-/tmp/obbslim_gpu}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
W=/tmp/obbslim_gpu_work
rm -rf "$W"; mkdir -p "$W"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"
$PY -m obbslim synth "$W/syn" --images 240 --size 512 --seed 0 --workers 8 --val-frac 0.1
# 1) single process, AMP, yolov5s-obb
$PY -m obbslim train --data "$W/syn/data.yaml" --model yolov5s-obb --epochs 3 --imgsz 512 --batch 32 \
    --device 0 --workers 8 --project "$W/runs" --name amp --noval --noplots
# 2) DDP with one rank (nccl), AMP, channels_last, SyncBN
torchrun --standalone --nproc_per_node 1 -m obbslim train --data "$W/syn/data.yaml" --model yolov5n-obb \
    --epochs 3 --imgsz 512 --batch 32 --device 0 --workers 8 --project "$W/runs" --name ddp --noval \
    --noplots --channels-last --sync-bn
cp "$W"/runs/amp/results.csv "$OUT/amp_results.csv"; cp "$W"/runs/ddp/results.csv "$OUT/ddp_results.csv"
$PY - "$W" <<'PYEOF'
import csv, sys, time
import torch
from obbslim.model import load
w = sys.argv[1]
for name in ("amp", "ddp"):
    rows = list(csv.DictReader(open(f"{w}/runs/{name}/results.csv")))
    # results.csv: images per epoch, cumulative time. Skip epoch 1 (warm-up, cudnn autotune) and the
    # last epoch (it includes the final validation).
    if len(rows) >= 3:
        di = sum(float(r["images"]) for r in rows[1:-1])
        dt = float(rows[-2]["time"]) - float(rows[0]["time"])
        print(f"{name}: training {di / dt:.1f} images/s (epochs 2..{len(rows) - 1}, incl. loader overhead)")
m = load(f"{w}/runs/amp/weights/last.pt", device="cuda").fuse().half()
x = torch.rand(32, 3, 1024, 1024, device="cuda").half()
with torch.inference_mode():
    for _ in range(3):
        m(x)
    torch.cuda.synchronize(); t = time.time()
    for _ in range(10):
        m(x)
    torch.cuda.synchronize()
print(f"inference yolov5s-obb fp16 fused, batch 32 at 1024: {320 / (time.time() - t):.1f} images/s")
PYEOF
