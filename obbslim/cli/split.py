"""`obbslim split`: cut a DOTA folder into overlapping tiles (the devkit's ImgSplit)."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "split",
        help="split large DOTA images (and labelTxt) into overlapping tiles",
        description="Split SRC/images (+ SRC/labelTxt) into SIZE x SIZE tiles named "
        "<image>__<rate>__<left>___<top> under DST/images and DST/labelTxt. Objects cut by a tile border "
        "are clipped; those keeping <= KEEP_THR of their area are marked difficult=2. "
        "Tiles already written are skipped, so an interrupted run resumes.",
    )
    p.add_argument("src", help="DOTA folder with images/ and labelTxt/")
    p.add_argument("dst", help="output folder (images/ and labelTxt/ are created)")
    p.add_argument("--size", type=int, default=1024, help="tile size in pixels (default 1024)")
    p.add_argument("--gap", type=int, default=200, help="overlap between tiles in pixels (default 200)")
    p.add_argument("--rates", type=float, nargs="+", default=[1.0], help="resize rates (default 1.0)")
    p.add_argument("--keep-thr", type=float, default=0.7, help="area kept at or below which a cut object is "
                   "marked difficult=2 (default 0.7)")
    p.add_argument("--images-only", action="store_true", help="test-set mode: no labels")
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, at most 8)")
    p.add_argument("--ext", default=".png", help="tile image format (default .png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obbslim.data.split import split_dataset

    s = split_dataset(
        args.src,
        args.dst,
        size=args.size,
        gap=args.gap,
        rates=args.rates,
        keep_thr=args.keep_thr,
        images_only=args.images_only,
        workers=args.workers,
        ext=args.ext,
    )
    print(
        f"{s['images']} images -> {s['tiles_written']} tiles written, {s['tiles_skipped']} already there, "
        f"{s['objects']} objects, {len(s['failed'])} failed"
    )
    for path, reason in s["failed"]:
        print(f"obbslim split: skipped {path}: {reason}", file=sys.stderr)
    return 1 if s["failed"] else 0
