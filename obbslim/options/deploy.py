"""Options of ``obbslim export`` (:class:`ExportConfig`) and ``obbslim benchmark``
(:class:`BenchmarkConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obbslim.options.base import Options, option, threads_option, workers_option
from obbslim.options.checks import COUNT, IMGSZ, at_least


@dataclass
class ExportConfig(Options):
    """A checkpoint to ONNX (BN fused, decode in the graph, NMS outside), optionally INT8 as well."""

    positional = ("weights",)

    weights: Any = option(None, "obbslim checkpoint .pt", required=True)
    format: str = option("onnx", "export format", choices=("onnx",))
    imgsz: int = option(1024, "input size (square; fixed unless --dynamic)", check=IMGSZ)
    dynamic: bool = option(False, "dynamic height/width (batch is always dynamic)")
    half: bool = option(False, "fp16 graph for CUDA deployment (exported on CUDA)")
    simplify: bool = option(
        False, "simplify the graph (onnxsim if installed, else ONNX Runtime's basic passes)"
    )
    opset: int = option(17, "ONNX opset (17 or later)", check=at_least(17))
    out: str | Path | None = option(None, "output .onnx (default: WEIGHTS with suffix .onnx)")
    int8: bool = option(False, "also write <out>_int8.onnx by static quantisation")
    data: Any = option(None, "dataset YAML whose train images calibrate --int8")
    calib: int = option(32, "number of calibration images for --int8", check=COUNT)
    threads: int | None = threads_option()
    verbose: bool = option(True, "print what was written", cli=False)


@dataclass
class BenchmarkConfig(Options):
    """The comparison table (mAP50, params, GFLOPs, weight MB, latency) of several checkpoints."""

    positional = ("weights", "data")

    weights: Any = option(None, "checkpoints; the first is the reference", nargs="+", required=True)
    names: list[str] | None = option(None, "row labels, one per checkpoint", nargs="+")
    data: Any = option(None, "dataset YAML (its val split gives mAP50)", required=True)
    imgsz: int = option(1024, "input size for mAP, GFLOPs and latency", check=IMGSZ)
    device: str = option("cpu", "cpu or cuda")
    onnx: bool = option(False, "also time the ONNX Runtime fp32 export")
    runs: int = option(50, "timed runs (median reported)", check=COUNT)
    warmup: int = option(10, "untimed warm-up runs", check=at_least(0))
    threads: int | None = threads_option("CPU threads for PyTorch and ONNX Runtime")
    batch: int = option(4, "validation batch size", check=COUNT)
    out: str | Path | None = option("runs/benchmark", "output folder (None from Python: no files)")
    workers: int | None = workers_option("validation dataloader workers", cli=False)
    known: list | None = option(None, "per checkpoint, {mAP50, mAP50_95} already measured on this val split "
                                "at this size, or None (compress passes its stages' own: not measured again)",
                                cli=False)  # fmt: skip
    verbose: bool = option(True, "print the table", cli=False)
