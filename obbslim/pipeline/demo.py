"""`demo(...)`: the whole pipeline on the built-in synthetic dataset, small enough for a laptop CPU.

What `make demo` runs: writes the synthetic set into the run folder (reused when present), then
`compress` with yolov5n-obb at 256 px and a few epochs per stage. Rerunning it skips what is complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from obbslim.data.synth import make_synthetic
from obbslim.options import DemoConfig
from obbslim.pipeline.compress import compress, set_threads

# Measured on 2 CPU cores: see the README ("obbslim demo") for the stage times.
# four classes: at 256 px the fifth, small-vehicle (cars of 4-8 px), needs more than a few CPU minutes
DEMO_DATA = dict(n_images=200, size=256, seed=0, val_frac=0.2,
                 classes=("large-vehicle", "plane", "ship", "storage-tank"))  # fmt: skip
DEMO_HYP = {
    "nbs": 8,  # one optimizer step per batch of 8 (not the nominal 64): enough steps in a few epochs
    "warmup_epochs": 1.0,
    "warmup_min_iters": 10,
    "mosaic": 0.5,
    # the paper's (yolov5_obb's) angle loss: the demo's four classes learn their angle without the overlap
    # term, which cost its baselines up to 0.05 mAP50 (README, "The angle's overlap term, on by default")
    "theta_iou": 0.0,
    # the per-bin angle loss the demo's README figures were measured with (the default is now softmax's)
    "theta_loss": "bce",
    "theta": 1.0,
    # YOLOv5's assignment, which the demo's README figures were measured with (the default is now unique)
    "assign": "shared",
}
DEMO = dict(
    model="yolov5n-obb.yaml",
    prune_ratio=0.5,
    epochs_base=30,
    epochs_sparse=15,
    epochs_distill=20,  # distillation needs the epochs to overtake plain fine-tuning (10: 0.703 vs 0.723)
    sparsity=1.5e-3,  # prox: channels whose per-image gradient stays below this go to 0
    sparsity_weighting="flops",  # costly channels first: ratio 0.5 then removes more than half the FLOPs
    imgsz=256,
    batch=8,
    workers=0,
    # bfloat16 autocast and channels_last where the CPU has bf16 instructions (float32 elsewhere): make demo
    # from a fresh clone 502 s against 639-650 s in float32, with every bar met (README, Quickstart)
    bf16=True,
    cache_images=True,  # reading the PNGs was half of the loader's time per item (about 10 ms -> 2 ms)
    # validation (conf 0.001 on a young model) costs half an epoch: at epoch 20 and at the end of each stage
    # (it leaves the training untouched, and every stage's best epoch was its last on the seeds measured)
    val_every=20,
    bench_runs=5,
    bench_warmup=2,
)


def demo(*args: Any, **options: Any) -> dict[str, Any]:
    """Synthetic data in ``out/synth`` (reused if present) and ``compress`` into ``out`` (resumable: a rerun
    skips the complete stages). The options are :class:`~obbslim.options.DemoConfig`'s (``out``,
    ``device``, ``threads``: CPU threads, default $OMP_NUM_THREADS, else every core; ``verbose``); any
    other keyword replaces one of the demo's compress settings (e.g. ``epochs_base=1``). Returns
    compress()'s result."""
    own = {k: v for k, v in options.items() if k in DemoConfig.field_names()}
    overrides = {k: v for k, v in options.items() if k not in own}
    cfg = DemoConfig.of(*args, **own)
    out = Path(cfg.out)
    n = set_threads(cfg.threads)
    data = out / "synth" / "data.yaml"
    if not data.is_file():
        make_synthetic(out / "synth", **DEMO_DATA)
    elif cfg.verbose:
        print(f"demo: reusing the synthetic dataset {data}")
    opts = {**DEMO, "hyp": dict(DEMO_HYP), **overrides}
    if cfg.verbose:
        print(f"demo: {opts['model']} at {opts['imgsz']} px on {cfg.device}, {n} torch threads -> {out}")
    return compress(data=data, device=cfg.device, project=out.parent, name=out.name, exist_ok=True, threads=n,
                    verbose=cfg.verbose, **opts)  # fmt: skip
