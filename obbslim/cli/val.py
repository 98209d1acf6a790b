"""`obbslim val`: OBB mAP of a checkpoint on a dataset split, or on original large DOTA images."""

from __future__ import annotations

import argparse

from obbslim.options import ValConfig


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "val",
        help="validate a checkpoint: per-class P, R, mAP50 (VOC07/VOC12), mAP50-95, PR curves, speed",
        description="Validate WEIGHTS on a dataset split (letterboxed images, like training), or with "
        "--full-images SRC on original large images the DOTA way: tile, predict, merge, write Task1 "
        "files into the run dir and score them against SRC/labelTxt.",
    )
    ValConfig.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: it loads torch, which `obbslim --help` does not need
    from obbslim.eval.val import val

    val(ValConfig.from_args(args))
    return 0
