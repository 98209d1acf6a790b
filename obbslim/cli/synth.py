"""`obbslim synth DST`: write the synthetic DOTA-format dataset."""

from __future__ import annotations

import argparse
import sys

from obbslim.options import SynthConfig
from obbslim.utils.text import plural


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic oriented-object dataset (DOTA labelTxt + data.yaml)",
        description="Write DST/images/{train,val}/*.png, DST/labelTxt/{train,val}/*.txt and DST/data.yaml: "
        "five DOTA classes (small-vehicle, large-vehicle, plane, ship, storage-tank) at any angle.",
    )
    SynthConfig.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: it loads torch, which `obbslim --help` does not need
    from obbslim.data.synth import make_synthetic

    c = SynthConfig.from_args(args)
    yaml_file = make_synthetic(**c.kwargs())
    n_val = int(round(c.n_images * c.val_frac))
    print(f"synth: {plural(c.n_images, 'image')} of {c.size} px ({c.n_images - n_val} train, {n_val} val) "
          f"written to {c.dst}/images and {c.dst}/labelTxt; dataset YAML:", file=sys.stderr)  # fmt: skip
    print(yaml_file)
    return 0
