"""Options of ``obbslim detect`` (:class:`DetectConfig`) and ``obbslim val`` (:class:`ValConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obbslim.errors import ObbslimError
from obbslim.options.base import Options, option, threads_option, workers_option
from obbslim.options.checks import COUNT, FRACTION, IMGSZ, at_least, non_negative


def theta_conf_option() -> Any:
    """One spelling for detect and val: the power of the angle's confidence in the score."""
    return option(None, "score = obj x cls x (the angle bins' softmax peak) ** A (default: the checkpoint's; "
                  "0: obj x cls)", type=float, metavar="A", check=non_negative())  # fmt: skip


def default_gap(tile: int) -> int:
    """Tile overlap for ``tile`` px windows: the DOTA devkit's 200 px belongs to 1024 px tiles, so it
    scales with the tile (a fixed 200 px on 256 px tiles would cut an image into hundreds of windows)."""
    return round(200 * int(tile) / 1024)


def check_gap(options: type[Options], gap: int | None, tile: int, what: str) -> None:
    """An explicit overlap must be smaller than the tile (``obbslim split`` refuses the same)."""
    if gap is not None and int(gap) >= int(tile):
        flag = options.spelling("gap")
        raise ObbslimError(f"{flag} {gap} must be smaller than the tile, {tile} px ({what})")


@dataclass
class DetectConfig(Options):
    """Rotated boxes on images of any size (large ones are tiled and merged)."""

    positional = ("weights", "source")

    weights: Any = option(None, "checkpoint .pt or ONNX export .onnx", required=True)
    source: Any = option(None, "image file(s), folder(s) or glob pattern(s)", nargs="+", required=True)
    imgsz: int = option(1024, "network input size", check=IMGSZ)
    tile: int | None = option(None, "tile size for large images (default: --imgsz)", type=int,
                              check=at_least(32))  # fmt: skip
    gap: int | None = option(None, "tile overlap in pixels (default: 200 * tile / 1024)", type=int,
                             check=at_least(0))  # fmt: skip
    conf: float = option(0.25, "confidence threshold", check=FRACTION)
    iou: float = option(0.4, "NMS IoU threshold", check=FRACTION)
    merge: bool = option(True, "plain NMS: keep each cluster's best box as it is, not the score-weighted "
                         "mean of the boxes it suppresses (merge-NMS)", flag="--no-merge")  # fmt: skip
    max_det: int = option(1000, "detections kept per image", check=COUNT)
    batch: int = option(8, "network inputs (tiles) per forward pass", check=COUNT)
    threads: int | None = threads_option()
    device: str | None = option(None, "cpu, 0, cuda:1 (default: GPU 0 if available)")
    half: bool = option(False, "fp16 inference (CUDA only)")
    rates: tuple[float, ...] = option((1.0,), "multi-scale: resize each image by these rates, tile, merge "
                                      "(e.g. 0.5 1.0 1.5; default 1.0)", nargs="+")  # fmt: skip
    flip: bool = option(False, "also predict each window mirrored left-right and up-down (3x the windows)")
    theta_conf: float | None = theta_conf_option()
    save_img: bool = option(False, "save images with the boxes drawn")
    save_txt: bool = option(False, "save labels/<stem>.txt: x1 y1 .. y4 class score")
    save_dota: str | Path | None = option(None, "write DOTA Task1_<class>.txt files into DIR", metavar="DIR")
    project: str | Path = option("runs/detect", "where run folders go")
    name: str = option("exp", "run folder name")
    exist_ok: bool = option(False, "reuse <project>/<name> instead of <name>2, ...")
    progress: bool = option(True, "progress bar", cli=False)
    verbose: bool = option(True, "print the summary", cli=False)

    def check_together(self) -> None:
        check_gap(type(self), self.gap, self.tile or self.imgsz, "--tile, default --imgsz")


@dataclass
class ValConfig(Options):
    """OBB metrics of a checkpoint on a dataset split, or on original large images (the DOTA protocol)."""

    positional = ("weights", "data")

    weights: Any = option(None, "checkpoint .pt (--full-images also takes .onnx)", required=True)
    data: str | Path | dict | None = option(None, "dataset YAML (not needed with --full-images)")
    split: str = option("val", "dataset split to validate")
    imgsz: int = option(1024, "input size (tile size with --full-images)", check=IMGSZ)
    batch: int = option(16, "images (tiles) per forward pass", check=COUNT)
    conf: float = option(0.001, "confidence threshold", check=FRACTION)
    iou: float = option(0.4, "NMS IoU threshold", check=FRACTION)
    merge: bool = option(True, "plain NMS, without merging each kept box with the boxes it suppresses",
                         flag="--no-merge")  # fmt: skip
    max_det: int = option(300, "detections kept per image (per tile)", check=COUNT)
    device: str | None = option(None, "cpu, 0, cuda:1 (default: GPU 0 if available)")
    half: bool = option(False, "fp16 inference (CUDA only)")
    workers: int | None = workers_option()
    threads: int | None = threads_option()
    full_images: str | Path | None = option(None, "folder with images/, labelTxt/ of full images",
                                            metavar="SRC_DIR")  # fmt: skip
    gap: int | None = option(None, "--full-images tile overlap (default: 200 * imgsz / 1024)", type=int,
                             check=at_least(0))  # fmt: skip
    json_path: str | Path | None = option(None, "write {metric, mAP, per_class, mAP50_95, speed_ms, ...}",
                                          flag="--json", metavar="OUT")  # fmt: skip
    rates: tuple[float, ...] = option((1.0,), "--full-images multi-scale: resize each image by these rates "
                                      "(e.g. 0.5 1.0 1.5; default 1.0)", nargs="+")  # fmt: skip
    flip: bool = option(False, "--full-images: also predict each tile mirrored left-right and up-down")
    theta_conf: float | None = theta_conf_option()
    project: str | Path = option("runs/val", "where run folders go")
    name: str = option("exp", "run folder name")
    exist_ok: bool = option(False, "reuse <project>/<name> instead of <name>2, ...")
    plots: bool = option(True, "no PR_curve.png", flag="--noplots")
    verbose: bool = option(True, "print the table", cli=False)
    progress: bool = option(True, "progress bars", cli=False)

    def check_together(self) -> None:
        check_gap(type(self), self.gap, self.imgsz, "--imgsz, the tile size")
