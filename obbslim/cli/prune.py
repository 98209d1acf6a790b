"""`obbslim prune`: network slimming of a (sparsity-trained) checkpoint by its BN scales."""

from __future__ import annotations

import argparse

from obbslim.options import PruneConfig


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "prune",
        help="remove channels with small BN scales (network slimming) and save the slimmer model",
        description="Prune output channels by |gamma| with one global threshold (coupled channels "
        "together, Detect outputs untouched), fold the pruned channels' constant activations into the "
        "next layers, and write --out plus OUT_report.md and OUT_widths.png beside it (OUT: its stem). "
        "Fine-tune the "
        "result with: obbslim train --model OUT.pt --data D.yaml",
    )
    PruneConfig.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: it loads torch, which `obbslim --help` does not need
    from obbslim.prune import prune_checkpoint

    prune_checkpoint(PruneConfig.from_args(args))
    return 0
