"""`obbslim show`: draw a dataset's labels (and its augmented training images) to check them by eye."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "show",
        help="draw labels, an augmented batch grid and label statistics of a dataset split",
        description="Write OUT/<image>.jpg with the labels drawn (difficult objects in white), "
        "OUT/<split>_batch0.jpg (a 4x4 grid of dataset items: augmented with --augment, else "
        "letterboxed) and OUT/labels.png (class counts, box sizes, angles).",
    )
    p.add_argument("data", metavar="DATA", help="dataset YAML")
    p.add_argument("--split", default="train", help="split to draw (default: train)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--n", type=int, default=16, help="number of images drawn with their labels (default: 16)")
    p.add_argument("--augment", action="store_true", help="draw the batch grid with training augmentation")
    p.add_argument("--imgsz", type=int, default=640, help="image size of the batch grid items (default: 640)")
    p.add_argument("--seed", type=int, default=0, help="augmentation seed (default: 0)")
    p.add_argument("--hyp", metavar="YAML", help="hyperparameter YAML (default: the project defaults)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obbslim.data.show import show_dataset

    paths = show_dataset(
        args.data, args.split, args.out, args.n, args.augment, args.imgsz, args.seed, args.hyp
    )
    for path in paths:
        print(path)
    return 0
