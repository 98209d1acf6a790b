"""`obbslim synth DST`: write the synthetic DOTA-format dataset."""

from __future__ import annotations

import argparse

from obbslim.options import SynthConfig


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

    print(make_synthetic(**SynthConfig.from_args(args).kwargs()))
    return 0
