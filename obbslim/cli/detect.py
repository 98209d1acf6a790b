"""`obbslim detect`: rotated boxes on images of any size (large ones are tiled and merged)."""

from __future__ import annotations

import argparse

from obbslim.options import DetectConfig


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "detect",
        help="detect oriented objects in images, folders or globs (.pt or .onnx weights)",
        description="Images larger than --tile are cut into overlapping tiles whose detections are merged "
        "with class-wise rotated NMS; smaller ones are letterboxed to --imgsz.",
    )
    DetectConfig.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: it loads torch, which `obbslim --help` does not need
    from obbslim.inference.detect import detect

    detect(DetectConfig.from_args(args))
    return 0
