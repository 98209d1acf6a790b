"""Options of ``obbslim prune`` (:class:`PruneConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obbslim.options.base import Options, option, threads_option
from obbslim.options.checks import COUNT, FRACTION, IMGSZ, non_negative


@dataclass
class PruneConfig(Options):
    """Network slimming of a (sparsity-trained) checkpoint by its BN scales: exactly one criterion."""

    positional = ("weights", "out")

    weights: str | Path | None = option(None, "checkpoint .pt (its EMA weights are pruned)", required=True)
    out: str | Path | None = option(None, "output checkpoint .pt", required=True)
    ratio: float | None = option(None, "fraction of the prunable BN channels removed", type=float,
                                 group="criterion", required=True, check=FRACTION)  # fmt: skip
    threshold: float | None = option(None, "prune channels whose |gamma| is at or below this", type=float,
                                     group="criterion", required=True, check=non_negative())  # fmt: skip
    target_flops: float | None = option(None, "keep this fraction of the GFLOPs (bisection)", type=float,
                                        group="criterion", required=True, check=FRACTION)  # fmt: skip
    target_params: float | None = option(None, "keep this fraction of the parameters (bisection)", type=float,
                                         group="criterion", required=True, check=FRACTION)  # fmt: skip
    round_to: int = option(8, "kept widths rounded up to a multiple of this", check=COUNT)
    min_channels: int = option(8, "every layer keeps at least this many", check=COUNT)
    fold: bool = option(True, "do not fold pruned channels' constant activations into the next layers")
    imgsz: int = option(640, "image size for GFLOPs (and --data validation)", check=IMGSZ)
    data: Any = option(None, "dataset YAML: report val mAP50 before and after pruning")
    batch: int = option(8, "validation batch size (with --data)", check=COUNT)
    device: str = option("cpu", "validation device (with --data), e.g. cpu or cuda:0")
    threads: int | None = threads_option()
    verbose: bool = option(True, "print the report", cli=False)
