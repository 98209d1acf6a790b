"""`obbslim show`: draw a dataset's labels (and its augmented training images) to check them by eye."""

from __future__ import annotations

import argparse

from obbslim.options import ShowConfig


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "show",
        help="draw labels, an augmented batch grid and label statistics of a dataset split",
        description="Write OUT/<image>.jpg with the labels drawn (difficult objects in white), "
        "OUT/<split>_batch0.jpg (a 4x4 grid of dataset items: augmented with --augment, else "
        "letterboxed) and OUT/labels.png (class counts, box sizes, angles).",
    )
    ShowConfig.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: it loads torch, which `obbslim --help` does not need
    from obbslim.data.show import show_dataset

    for path in show_dataset(**ShowConfig.from_args(args).kwargs()):
        print(path)
    return 0
