"""`obbslim prune`: network slimming of a (sparsity-trained) checkpoint by its BN scales."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "prune",
        help="remove channels with small BN scales (network slimming) and save the slimmer model",
        description="Prune output channels by |gamma| with one global threshold (coupled channels "
        "together, Detect outputs untouched), fold the pruned channels' constant activations into the "
        "next layers, and write --out plus prune_report.md and widths.png beside it. Fine-tune the "
        "result with: obbslim train --model OUT.pt --data D.yaml",
    )
    p.add_argument("--weights", required=True, help="checkpoint .pt (its EMA weights are pruned)")
    crit = p.add_mutually_exclusive_group(required=True)
    crit.add_argument("--ratio", type=float, help="fraction of the prunable BN channels removed")
    crit.add_argument("--threshold", type=float, help="prune channels whose |gamma| is at or below this")
    crit.add_argument("--target-flops", type=float, help="keep this fraction of the GFLOPs (bisection)")
    crit.add_argument("--target-params", type=float, help="keep this fraction of the parameters (bisection)")
    p.add_argument("--round-to", type=int, default=8, help="kept widths rounded up to a multiple of this")
    p.add_argument("--min-channels", type=int, default=8, help="every layer keeps at least this many")
    p.add_argument("--imgsz", type=int, default=640, help="image size for GFLOPs (and --data validation)")
    p.add_argument("--data", default=None, help="dataset YAML: report val mAP50 before and after pruning")
    p.add_argument("--batch", type=int, default=8, help="validation batch size (with --data)")
    p.add_argument("--device", default="cpu", help="validation device (with --data), e.g. cpu or cuda:0")
    p.add_argument("--no-fold", dest="fold", action="store_false",
                   help="do not fold pruned channels' constant activations into the next layers")
    p.add_argument("--out", required=True, help="output checkpoint .pt")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from obbslim.prune import prune_checkpoint

    prune_checkpoint(args.weights, args.out, ratio=args.ratio, threshold=args.threshold,
                     target_flops=args.target_flops, target_params=args.target_params, round_to=args.round_to,
                     min_channels=args.min_channels, fold=args.fold, imgsz=args.imgsz, data=args.data,
                     batch=args.batch, device=args.device)  # fmt: skip
    return 0
