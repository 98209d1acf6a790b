"""`obbslim distill`: fine-tune a pruned student with distillation from its teacher (all train options)."""

from __future__ import annotations

import argparse

from obbslim.options import DistillConfig


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "distill",
        help="fine-tune a pruned model with knowledge distillation from its teacher",
        description="Fine-tune --student (e.g. a pruned checkpoint) on --data with the detection loss plus "
        "output distillation (classes, angle bins, objectness, boxes; weighted by the teacher's objectness) "
        "and neck-feature distillation (CWD or masked imitation) from the frozen --teacher. Writes a run "
        "directory like `train` (results.csv has kd_* columns); best.pt/last.pt hold the student alone.",
    )
    DistillConfig.add_arguments(p, exclude=("model",))  # --student is the model
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: it loads torch, which `obbslim --help` does not need
    from obbslim.distill import distill

    result = distill(DistillConfig.from_args(args))
    return 128 + result["signal"] if result.get("signal") else 0
