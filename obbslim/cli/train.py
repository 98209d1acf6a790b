"""`obbslim train`: train (or fine-tune, or resume) an oriented YOLOv5 on a dataset YAML, optionally with
network slimming's sparsity on the BN scales.

DDP: ``torchrun --nproc_per_node N -m obbslim train ... --device 0,1`` (or ``--device cpu`` for gloo).
"""

from __future__ import annotations

import argparse

from obbslim.options import SparseTrainConfig


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train an oriented YOLOv5 (OBB mAP validation, EMA, resume, DDP)",
        description="Train on a dataset YAML; writes runs/train/<name>/ with weights/last.pt and best.pt "
        "(best OBB mAP50, VOC07), results.csv/.png, args.yaml, labels.png and train_batch*.jpg.",
    )
    SparseTrainConfig.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: it loads torch, which `obbslim --help` does not need
    from obbslim.prune.sparsity import sparse_train

    result = sparse_train(SparseTrainConfig.from_args(args))
    return 128 + result["signal"] if result.get("signal") else 0
