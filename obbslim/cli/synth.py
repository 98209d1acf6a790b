"""`obbslim synth DST`: write the synthetic DOTA-format dataset."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic oriented-object dataset (DOTA labelTxt + data.yaml)",
        description="Write DST/images/{train,val}/*.png, DST/labelTxt/{train,val}/*.txt and DST/data.yaml: "
        "five DOTA classes (small-vehicle, large-vehicle, plane, ship, storage-tank) at any angle.",
    )
    p.add_argument("dst", metavar="DST", help="output folder")
    p.add_argument("--images", type=int, default=300, help="number of images (default 300)")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default 0)")
    p.add_argument("--val-frac", type=float, default=0.2, help="fraction of images in val (default 0.2)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in DST")
    p.add_argument("--workers", type=int, default=None, help="drawing threads (default: CPU count, max 8)")
    p.add_argument("--classes", nargs="+", default=None, metavar="NAME",
                   help="draw only these of the five classes (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obbslim.data.synth import make_synthetic

    yaml_file = make_synthetic(
        args.dst,
        n_images=args.images,
        size=args.size,
        seed=args.seed,
        val_frac=args.val_frac,
        overwrite=args.overwrite,
        workers=args.workers,
        classes=args.classes,
    )
    print(yaml_file)
    return 0
