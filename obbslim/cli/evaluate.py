"""`obbslim evaluate`: the official DOTA Task1 mAP of a folder of Task1_<class>.txt files."""

from __future__ import annotations

import argparse


def _iou(text: str) -> float:
    v = float(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"IoU threshold must be in [0, 1), got {text}")
    return v


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="DOTA Task1 mAP of detection files against labelTxt ground truth",
        description="Score DET_DIR/Task1_<class>.txt against ANN_DIR/<image>.txt exactly as the official "
        "DOTA devkit (dota_evaluation_task1.py) does.",
    )
    p.add_argument("det_dir", metavar="DET_DIR", help="folder of Task1_<class>.txt detection files")
    p.add_argument("ann_dir", metavar="ANN_DIR", help="folder of labelTxt ground-truth files <image>.txt")
    p.add_argument(
        "--imageset", metavar="FILE", help="image ids to evaluate, one per line (default: all labels)"
    )
    p.add_argument(
        "--classes", metavar="A,B", help="comma-separated classes (default: all in the ground truth)"
    )
    p.add_argument("--metric", choices=("voc07", "voc12"), default="voc07", help="AP: 11-point or all-point")
    p.add_argument("--iou", type=_iou, default=0.5, help="match when polygon IoU is strictly above this")
    p.add_argument("--json", metavar="OUT", help="also write {metric, iou_thr, mAP, per_class, n_gt, n_det}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obbslim.eval.table import evaluate_report

    classes = None if args.classes is None else [c for c in args.classes.split(",") if c.strip()]
    print(
        evaluate_report(args.det_dir, args.ann_dir, args.imageset, classes, args.metric, args.iou, args.json)
    )
    return 0
