"""`obbslim evaluate`: the official DOTA Task1 mAP of a folder of Task1_<class>.txt files."""

from __future__ import annotations

import argparse

from obbslim.options import EvaluateConfig


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="DOTA Task1 mAP of detection files against labelTxt ground truth",
        description="Score DET_DIR/Task1_<class>.txt against ANN_DIR/<image>.txt exactly as the official "
        "DOTA devkit (dota_evaluation_task1.py) does.",
    )
    EvaluateConfig.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: it loads torch, which `obbslim --help` does not need
    from obbslim.eval.table import evaluate_report

    c = EvaluateConfig.from_args(args)
    classes = None if c.classes is None else [k for k in c.classes.split(",") if k.strip()]
    print(evaluate_report(c.det_dir, c.ann_dir, c.imageset, classes, c.metric, c.iou, c.json_path, c.threads))
    return 0
