"""Options of the data tools: ``obbslim split``, ``synth``, ``show`` and ``evaluate``. The library
functions behind them take the same names and use these defaults."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from obbslim.errors import ObbslimError
from obbslim.options.base import Options, option, threads_option
from obbslim.options.checks import COUNT, FRACTION, IMGSZ, THREADS, at_least, positive


def iou_threshold(text: str) -> float:
    v = float(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"IoU threshold must be in [0, 1), got {text}")
    return v


@dataclass
class SplitConfig(Options):
    """Cut a DOTA folder into overlapping tiles (the devkit's ImgSplit)."""

    positional = ("src", "dst")

    src: str | Path = option("", "DOTA folder with images/ and labelTxt/", positional=True)
    dst: str | Path = option("", "output folder (images/ and labelTxt/ are created)", positional=True)
    size: int = option(1024, "tile size in pixels (default 1024)", check=COUNT)
    gap: int = option(200, "overlap between tiles in pixels (default 200)", check=at_least(0))
    rates: tuple[float, ...] = option((1.0,), "resize rates (default 1.0)", nargs="+", check=positive())
    keep_thr: float = option(
        0.7, "area kept at or below which a cut object is marked difficult=2 (default 0.7)", check=FRACTION
    )
    images_only: bool = option(False, "test-set mode: no labels")
    workers: int | None = option(None, "processes (default: CPU count, at most 8)", type=int, check=THREADS)
    ext: str = option(".png", "tile image format (default .png)")

    def check_together(self) -> None:
        if self.gap >= self.size:
            raise ObbslimError(f"--gap {self.gap} must be smaller than --size {self.size}")
        if not self.rates:
            raise ObbslimError("--rates needs at least one rate")


@dataclass
class SynthConfig(Options):
    """The synthetic DOTA-format dataset (five classes at any angle)."""

    positional = ("dst",)

    dst: str | Path = option("", "output folder", positional=True, metavar="DST")
    n_images: int = option(300, "number of images (default 300)", flag="--images", check=COUNT)
    size: int = option(512, "image side in pixels (default 512)", check=at_least(32))
    seed: int = option(0, "random seed; same seed, same files (default 0)", check=at_least(0))
    val_frac: float = option(0.2, "fraction of images in val (default 0.2)", check=FRACTION)
    overwrite: bool = option(False, "replace an existing dataset in DST")
    workers: int | None = option(None, "drawing threads (default: CPU count, max 8)", type=int, check=THREADS)
    classes: list[str] | None = option(None, "draw only these of the five classes (default: all)", nargs="+",
                                       metavar="NAME", type=str)


@dataclass
class ShowConfig(Options):
    """Labels drawn on a split's images, an augmented batch grid and label statistics."""

    positional = ("data", "split", "out")

    data: str | Path = option("", "dataset YAML", positional=True, metavar="DATA")
    split: str = option("train", "split to draw (default: train)")
    out: str | Path = option("", "output folder", required=True, metavar="DIR")
    n: int = option(16, "number of images drawn with their labels (default: 16)", check=at_least(0))
    augment: bool = option(False, "draw the batch grid with training augmentation")
    imgsz: int = option(640, "image size of the batch grid items (default: 640)", check=IMGSZ)
    seed: int = option(0, "augmentation seed (default: 0)")
    hyp: str | Path | dict | None = option(None, "hyperparameter YAML (default: the project defaults)",
                                           type=str, metavar="YAML")  # fmt: skip
    threads: int | None = threads_option()


@dataclass
class EvaluateConfig(Options):
    """The official DOTA Task1 mAP of a folder of Task1_<class>.txt files."""

    positional = ("det_dir", "ann_dir")

    det_dir: str | Path = option("", "folder of Task1_<class>.txt detection files", positional=True,
                                 metavar="DET_DIR")  # fmt: skip
    ann_dir: str | Path = option("", "folder of labelTxt ground-truth files <image>.txt", positional=True,
                                 metavar="ANN_DIR")  # fmt: skip
    imageset: str | Path | None = option(None, "image ids to evaluate, one per line (default: all labels)",
                                         metavar="FILE")  # fmt: skip
    classes: str | None = option(None, "comma-separated classes (default: all in the ground truth)",
                                 metavar="A,B")  # fmt: skip
    metric: str = option("voc07", "AP: 11-point or all-point", choices=("voc07", "voc12"))
    iou: float = option(0.5, "match when polygon IoU is strictly above this", type=iou_threshold)
    json_path: str | Path | None = option(None, "also write {metric, iou_thr, mAP, per_class, n_gt, n_det}",
                                          flag="--json", metavar="OUT")  # fmt: skip
    threads: int | None = threads_option()
