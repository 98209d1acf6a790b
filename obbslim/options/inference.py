"""Options of ``obbslim detect`` (:class:`DetectConfig`) and ``obbslim val`` (:class:`ValConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obbslim.options.base import Options, option


@dataclass
class DetectConfig(Options):
    """Rotated boxes on images of any size (large ones are tiled and merged)."""

    positional = ("weights", "source")

    weights: Any = option(None, "checkpoint .pt or ONNX export .onnx", required=True)
    source: Any = option(None, "image file(s), folder(s) or glob pattern(s)", nargs="+", required=True)
    imgsz: int = option(1024, "network input size")
    tile: int | None = option(None, "tile size for large images (default: --imgsz)", type=int)
    gap: int | None = option(None, "tile overlap in pixels (default: 200 * tile / 1024)", type=int)
    conf: float = option(0.25, "confidence threshold")
    iou: float = option(0.4, "NMS IoU threshold")
    max_det: int = option(1000, "detections kept per image")
    batch: int = option(8, "network inputs (tiles) per forward pass")
    device: str | None = option(None, "cpu, 0, cuda:1 (default: GPU 0 if available)")
    half: bool = option(False, "fp16 inference (CUDA only)")
    rates: tuple[float, ...] = option((1.0,), "multi-scale: resize each image by these rates, tile, merge "
                                      "(e.g. 0.5 1.0 1.5; default 1.0)", nargs="+")  # fmt: skip
    flip: bool = option(False, "also predict each window mirrored left-right and up-down (3x the windows)")
    save_img: bool = option(False, "save images with the boxes drawn")
    save_txt: bool = option(False, "save labels/<stem>.txt: x1 y1 .. y4 class score")
    save_dota: str | Path | None = option(None, "write DOTA Task1_<class>.txt files into DIR", metavar="DIR")
    project: str | Path = option("runs/detect", "where run folders go")
    name: str = option("exp", "run folder name")
    exist_ok: bool = option(False, "reuse <project>/<name> instead of <name>2, ...")
    progress: bool = option(True, "progress bar", cli=False)
    verbose: bool = option(True, "print the summary", cli=False)


@dataclass
class ValConfig(Options):
    """OBB metrics of a checkpoint on a dataset split, or on original large images (the DOTA protocol)."""

    positional = ("weights", "data")

    weights: Any = option(None, "checkpoint .pt (--full-images also takes .onnx)", required=True)
    data: str | Path | dict | None = option(None, "dataset YAML (not needed with --full-images)")
    split: str = option("val", "dataset split to validate")
    imgsz: int = option(1024, "input size (tile size with --full-images)")
    batch: int = option(16, "images (tiles) per forward pass")
    conf: float = option(0.001, "confidence threshold")
    iou: float = option(0.4, "NMS IoU threshold")
    max_det: int = option(300, "detections kept per image (per tile)")
    device: str | None = option(None, "cpu, 0, cuda:1 (default: GPU 0 if available)")
    half: bool = option(False, "fp16 inference (CUDA only)")
    workers: int = option(0, "dataloader workers")
    full_images: str | Path | None = option(None, "folder with images/, labelTxt/ of full images",
                                            metavar="SRC_DIR")  # fmt: skip
    gap: int | None = option(None, "--full-images tile overlap (default: 200 * imgsz / 1024)", type=int)
    json_path: str | Path | None = option(None, "write {metric, mAP, per_class, mAP50_95, speed_ms, ...}",
                                          flag="--json", metavar="OUT")  # fmt: skip
    rates: tuple[float, ...] = option((1.0,), "--full-images multi-scale: resize each image by these rates "
                                      "(e.g. 0.5 1.0 1.5; default 1.0)", nargs="+")  # fmt: skip
    flip: bool = option(False, "--full-images: also predict each tile mirrored left-right and up-down")
    project: str | Path = option("runs/val", "where run folders go")
    name: str = option("exp", "run folder name")
    exist_ok: bool = option(False, "reuse <project>/<name> instead of <name>2, ...")
    plots: bool = option(True, "no PR_curve.png", flag="--noplots")
    verbose: bool = option(True, "print the table", cli=False)
    progress: bool = option(True, "progress bars", cli=False)
