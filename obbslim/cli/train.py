"""`obbslim train`: train (or fine-tune, or resume) an oriented YOLOv5 on a dataset YAML.

DDP: ``torchrun --nproc_per_node N -m obbslim train ... --device 0,1`` (or ``--device cpu`` for gloo).
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train an oriented YOLOv5 (OBB mAP validation, EMA, resume, DDP)",
        description="Train on a dataset YAML; writes runs/train/<name>/ with weights/last.pt and best.pt "
        "(best OBB mAP50, VOC07), results.csv/.png, args.yaml, labels.png and train_batch*.jpg.",
    )
    add_train_arguments(p)
    p.set_defaults(func=run)


def add_train_arguments(p: argparse.ArgumentParser, model: bool = True) -> None:
    """Every `train` option on parser ``p`` (shared by `obbslim distill`; ``model=False`` omits --model)."""
    p.add_argument("--data", help="dataset YAML (path, train, val, names); not needed with --resume")
    if model:
        p.add_argument("--model", default="yolov5s-obb.yaml",
                       help="model spec (yolov5{n,s,m,l,x}-obb.yaml or a YAML path) or a checkpoint .pt "
                       "whose architecture is kept (e.g. a pruned model)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--imgsz", type=int, default=640, help="training image size (pixels)")
    p.add_argument("--batch", type=int, default=16, help="total batch size over all processes")
    p.add_argument("--device", default="", help="cpu, 0, or 0,1 (default: GPU 0 if available)")
    p.add_argument("--workers", type=int, default=8, help="dataloader workers per process")
    p.add_argument("--hyp", default=None, help="hyperparameter YAML (only the keys that change)")
    p.add_argument("--project", default="runs/train")
    p.add_argument("--name", default="exp")
    p.add_argument("--exist-ok", action="store_true", help="reuse runs/train/<name> instead of <name>2, ...")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN",
                   help="continue a run: its directory or last.pt (no value: the newest run in --project)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int, default=1, help="validate every k epochs (and at the end)")
    p.add_argument("--patience", type=int, default=100, help="early stop after this many epochs without gain")
    p.add_argument("--noval", action="store_true", help="validate only after the final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="keep the model's anchors")
    p.add_argument("--noplots", action="store_true", help="no labels.png, train_batch*.jpg, results.png")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="disable mixed precision on CUDA")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (CUDA)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across DDP processes (CUDA)")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="stop after N epochs of this run (the schedule keeps --epochs; --resume continues)")
    p.add_argument("--time", dest="time_limit", type=float, default=None, metavar="HOURS",
                   help="train for this many hours (overrides --epochs, re-estimated every epoch)")
    p.add_argument("--sparsity", type=float, default=0.0, metavar="LAMBDA",
                   help="network slimming: L1 penalty LAMBDA * sum|gamma| on prunable BN scales (e.g. 1e-4)")
    p.add_argument("--sparsity-schedule", choices=("constant", "linear", "cosine"), default="constant",
                   help="decay of LAMBDA over training (linear/cosine end at 0.1 LAMBDA)")
    p.add_argument("--sparsity-bias", action="store_true", help="also L1 on the BN shifts (beta)")
    p.add_argument("--sparsity-weighting", choices=("none", "flops"), default="none",
                   help="flops: scale each layer's LAMBDA by the FLOPs one of its channels costs (mean 1), "
                        "so that pruning a channel ratio removes more FLOPs")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from obbslim.engine.train import train

    options = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    result = train(**options)
    return 128 + result["signal"] if result.get("signal") else 0
