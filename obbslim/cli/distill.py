"""`obbslim distill`: fine-tune a pruned student with distillation from its teacher (all train options)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    from obbslim.cli.train import add_train_arguments

    p = subparsers.add_parser(
        "distill",
        help="fine-tune a pruned model with knowledge distillation from its teacher",
        description="Fine-tune --student (e.g. a pruned checkpoint) on --data with the detection loss plus "
        "output distillation (classes, angle bins, objectness, boxes; weighted by the teacher's objectness) "
        "and neck-feature distillation (CWD or masked imitation) from the frozen --teacher. Writes a run "
        "directory like `train` (results.csv has kd_* columns); best.pt/last.pt hold the student alone.",
    )
    p.add_argument("--student", help="student checkpoint .pt (the pruned model); not needed with --resume")
    p.add_argument("--teacher", help="teacher checkpoint .pt (same strides, nc, na, nbins; any widths)")
    add_train_arguments(p, model=False)
    p.add_argument("--kd-output", type=float, default=1.0, help="weight of the output distillation (0 off)")
    p.add_argument("--kd-feature", type=float, default=1.0, help="weight of the feature distillation (0 off)")
    p.add_argument("--kd-temp", type=float, default=1.0, help="output temperature T (classes, angle bins)")
    p.add_argument("--kd-feature-type", choices=("cwd", "mimic"), default="cwd",
                   help="cwd: channel-wise distillation; mimic: MSE on the cells near ground-truth objects")
    p.add_argument("--kd-feature-temp", type=float, default=1.0, help="CWD temperature tau")
    p.add_argument("--kd-cls", choices=("bce", "kl"), default="bce",
                   help="class term: per-class soft-target BCE (minus the teacher entropy) or softmax KL")
    p.add_argument("--kd-box-thresh", type=float, default=0.5,
                   help="box term only where the teacher's objectness exceeds this")
    p.set_defaults(func=run, project="runs/distill")


def run(args: argparse.Namespace) -> int:
    from obbslim.distill import distill

    options = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    result = distill(**options)
    return 128 + result["signal"] if result.get("signal") else 0
