"""Every command's options, one dataclass per command (default and help written once, in a field).

Plain dataclasses without heavy imports: the CLI builds its parsers from them, the library functions
take them (or the same keywords), checkpoints and run folders store them as plain data. The machinery
is in :mod:`obbslim.options.base`.
"""

from __future__ import annotations

from obbslim.options.base import Options, option, plain
from obbslim.options.data import EvaluateConfig, ShowConfig, SplitConfig, SynthConfig
from obbslim.options.deploy import BenchmarkConfig, ExportConfig
from obbslim.options.inference import DetectConfig, ValConfig
from obbslim.options.pipeline import CompressConfig, DemoConfig
from obbslim.options.prune import PruneConfig
from obbslim.options.train import DistillConfig, SparseTrainConfig, TrainConfig

__all__ = [
    "BenchmarkConfig",
    "CompressConfig",
    "DemoConfig",
    "DetectConfig",
    "DistillConfig",
    "EvaluateConfig",
    "ExportConfig",
    "Options",
    "PruneConfig",
    "ShowConfig",
    "SparseTrainConfig",
    "SplitConfig",
    "SynthConfig",
    "TrainConfig",
    "ValConfig",
    "option",
    "plain",
]
