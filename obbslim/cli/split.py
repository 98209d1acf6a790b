"""`obbslim split`: cut a DOTA folder into overlapping tiles (the devkit's ImgSplit)."""

from __future__ import annotations

import argparse
import sys

from obbslim.options import SplitConfig
from obbslim.utils.text import plural


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "split",
        help="split large DOTA images (and labelTxt) into overlapping tiles",
        description="Split SRC/images (+ SRC/labelTxt) into SIZE x SIZE tiles named "
        "<image>__<rate>__<left>___<top> under DST/images and DST/labelTxt. Objects cut by a tile border "
        "are clipped; those keeping <= KEEP_THR of their area are marked difficult=2. "
        "Tiles already written are skipped, so an interrupted run resumes.",
    )
    SplitConfig.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: it loads torch, which `obbslim --help` does not need
    from obbslim.data.split import split_dataset

    s = split_dataset(**SplitConfig.from_args(args).kwargs())
    print(
        f"{plural(s['images'], 'image')} -> {plural(s['tiles_written'], 'tile')} written, "
        f"{s['tiles_skipped']} already there, {plural(s['objects'], 'object')}, {len(s['failed'])} failed"
    )
    for path, reason in s["failed"]:
        print(f"obbslim split: skipped {path}: {reason}", file=sys.stderr)
    return 1 if s["failed"] else 0
