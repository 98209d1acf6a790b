"""The Detector: images of any size in, rotated detections out. The one inference code path.

``obbslim detect``, ``obbslim val --full-images`` and the Python API (``obbslim.Detector``) all call
:meth:`Detector.predict_batch`. An image that fits in one tile is letterboxed to ``imgsz``; a larger
one is cut into ``tile`` x ``tile`` windows with ``gap`` pixels of overlap (``split.tile_windows``,
the windows ``obbslim split`` makes), each window is letterboxed to ``imgsz``, windows of all images
are batched through the model, and the window detections are merged back with class-wise rotated
NMS (``merge.merge_detections``, the DOTA devkit's merge). Decoding is ``postprocess``: score =
obj x cls, class-aware rotated NMS, ``max_det``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch

from obbslim.data.augment import letterbox
from obbslim.data.merge import merge_detections
from obbslim.data.split import crop_tile, tile_name, tile_windows
from obbslim.errors import InputError, ObbslimError
from obbslim.inference.onnx_backend import OnnxModel
from obbslim.inference.postprocess import postprocess, scale_rboxes
from obbslim.model import load
from obbslim.ops import rbox2poly
from obbslim.options import DetectConfig
from obbslim.options.inference import check_gap, default_gap
from obbslim.utils.device import select_device


@dataclass
class Detections:
    """Detections of one image in its pixels, best score first (``rboxes`` follow the box convention)."""

    rboxes: np.ndarray  # float64 [n, 5] (cx, cy, long, short, theta)
    scores: np.ndarray  # float64 [n]
    cls: np.ndarray  # int64 [n]
    names: list[str] = field(default_factory=list)
    path: str | None = None
    shape: tuple[int, int] = (0, 0)  # (h, w) of the image
    windows: int = 1  # how many network inputs the image took (>1: tiled)

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def polys(self) -> np.ndarray:
        """float64 [n, 8] corner polygons ``x1 y1 ... x4 y4`` (``ops.rbox2poly``)."""
        return np.asarray(rbox2poly(self.rboxes), np.float64).reshape(-1, 8)

    @property
    def labels(self) -> list[str]:
        """Class name of each detection."""
        return [self.names[int(c)] if 0 <= int(c) < len(self.names) else str(int(c)) for c in self.cls]


@dataclass
class Window:
    """One network input: ``(left, top)`` of a ``size`` crop of image ``image`` (size 0: the whole image),
    letterboxed with ``ratio`` (rw, rh) and ``pad`` (left, top)."""

    image: int
    left: int
    top: int
    size: int
    ratio: tuple[float, float] = (1.0, 1.0)
    pad: tuple[int, int] = (0, 0)


def read_image(source: str | Path | np.ndarray) -> tuple[np.ndarray, str | None]:
    """A path (read as BGR uint8) or an HWC uint8 BGR array (a grey 2-D array is made BGR)."""
    if isinstance(source, np.ndarray):
        img = source
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        if img.ndim != 3 or img.shape[2] != 3:
            raise InputError(f"expected an HxWx3 BGR image array, got shape {img.shape}")
        if img.dtype != np.uint8:
            raise InputError(f"expected a uint8 image array, got {img.dtype}")
        if img.shape[0] == 0 or img.shape[1] == 0:
            raise InputError(f"empty image array (shape {img.shape})")
        return img, None
    path = Path(source)
    if not path.is_file():
        raise InputError("image not found", path)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError("cannot read image (corrupt or unsupported format)", path)
    return img, str(path)


def load_weights(
    weights: str | Path | Callable, device: torch.device, names: Sequence[str] | None = None
) -> tuple[Callable, list[str], str]:
    """``.pt`` checkpoint -> fused eval model; ``.onnx`` -> ``OnnxModel``; a callable is used as is.

    Returns ``(model, names, backend)`` with backend ``torch``, ``onnx`` or ``callable``.
    """
    if not isinstance(weights, (str, Path)):
        if not callable(weights):
            raise ObbslimError(f"weights must be a .pt/.onnx path or a model, not {type(weights).__name__}")
        found = names if names is not None else getattr(weights, "names", None)
        if isinstance(weights, torch.nn.Module):
            weights = weights.to(device).eval()
            backend = "torch"
        else:
            backend = "callable"
        return weights, list(found or []), backend
    path = Path(weights)
    if not path.is_file():
        raise ObbslimError(f"{path}: weights file not found")
    if path.suffix.lower() == ".onnx":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else [
            "CPUExecutionProvider"
        ]
        model = OnnxModel(path, providers=providers)
        return model, list(names or model.names), "onnx"

    model = load(path, device=device).fuse()
    return model, list(names or model.names), "torch"


def check_stride(model: object, imgsz: int) -> None:
    """A square input of ``imgsz`` must be a multiple of the model's largest stride (its feature maps
    would not line up); models without a ``stride`` are not checked."""
    stride = getattr(model, "stride", None)
    if stride is None:
        return
    s = int(max(float(v) for v in stride))
    if s > 0 and imgsz % s:
        lo, hi = imgsz // s * s, (imgsz // s + 1) * s
        near = f"{lo} or {hi}" if lo else str(hi)
        raise ObbslimError(f"--imgsz {imgsz} must be a multiple of the model's largest stride, {s} ({near})")


class Detector:
    """Rotated-box detector over images of any size (see the module doc).

    ``weights``: a ``.pt`` checkpoint, an ``.onnx`` export, or a model object (an ``OBBModel``, or any
    callable taking float [B, 3, H, W] in 0..1 and returning decoded ``[B, N, 6 + nc (+ 180)]`` or a
    tuple whose first item is that). ``tile`` defaults to ``imgsz``; images larger than ``tile`` on
    either side are tiled, windows overlapping by ``gap`` (default ``default_gap(tile)``, 200 at 1024;
    a ``gap >= tile`` is an error; a stride ``tile - gap`` under half the tile is warned about). The
    options are checked as :class:`~obbslim.options.DetectConfig` checks them (``conf`` in [0, 1], ...).
    ``half`` runs fp16 on CUDA (ignored on CPU). ``batch`` windows go through the network at once.
    ``merge_iou`` is the IoU of the tile merge (0.1, the DOTA devkit's).
    ``theta_refine``: sub-bin angle from the CSL bins. Off by default: benchmarks/bench_theta_refine.py
    finds no gain on a trained model (mean angle error 2.39 vs 2.38 deg, mAP50-95 unchanged), the
    CSL targets being centred on the bin.
    """

    def __init__(
        self,
        weights: str | Path | Callable,
        device: str | int | torch.device | None = None,
        imgsz: int = 1024,
        conf: float = 0.25,
        iou: float = 0.4,
        max_det: int = 1000,
        tile: int | None = None,
        gap: int | None = None,
        half: bool = False,
        batch: int = 8,
        theta_refine: bool = False,
        merge_iou: float = 0.1,
        multi_label: bool = False,
        names: Sequence[str] | None = None,
    ):
        DetectConfig.check_values(imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, tile=tile, gap=gap,
                                  batch=batch)  # fmt: skip
        check_gap(DetectConfig, gap, tile or imgsz, "tile" if tile else "the input size")  # before loading
        self.device = select_device(device)
        self.model, self.names, self.backend = load_weights(weights, self.device, names)
        imgsz = int(imgsz)
        if self.backend == "onnx" and not self.model.dynamic:
            h, w = self.model.imgsz  # a static export takes only its own size
            if (h, w) != (imgsz, imgsz):
                imgsz = max(h, w)
            self.input_shape = (int(h), int(w))
        else:
            check_stride(self.model, imgsz)
            self.input_shape = (imgsz, imgsz)
        self.imgsz = imgsz
        self.tile = int(tile) if tile else imgsz
        check_gap(DetectConfig, gap, self.tile, "tile" if tile else "the input size")
        self.gap = default_gap(self.tile) if gap is None else int(gap)
        if 2 * self.gap > self.tile:
            warnings.warn(
                f"gap {self.gap} leaves a stride of {self.tile - self.gap} px, under half the {self.tile} px "
                f"tile: every image point is seen by many windows, each adding up to max_det boxes to the "
                f"merge (slow); the default for this tile is --gap {default_gap(self.tile)}",
                stacklevel=2,
            )
        self.conf, self.iou, self.max_det = float(conf), float(iou), int(max_det)
        self.batch = int(batch)
        self.merge_iou = float(merge_iou)
        self.multi_label = bool(multi_label)
        self.half = bool(half) and self.device.type == "cuda" and self.backend == "torch"
        if self.half:
            self.model.half()
        self.theta_refine = bool(theta_refine)
        if self.theta_refine and self.backend == "onnx":
            raise ObbslimError("theta_refine needs the theta-bin probabilities, which an ONNX export omits")
        self.nc = int(getattr(self.model, "nc", 0) or len(self.names))
        self.reset_times()

    # ------------------------------------------------------------------ timing
    def reset_times(self) -> None:
        self.times = {"preprocess": 0.0, "inference": 0.0, "nms": 0.0}
        self.n_windows = 0
        self.n_images = 0

    def speed(self) -> dict[str, float]:
        """Milliseconds per network input (window) for each stage since ``reset_times``."""
        n = max(self.n_windows, 1)
        return {k: 1000 * v / n for k, v in self.times.items()}

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # ------------------------------------------------------------------ the pipeline
    def windows(self, shape: tuple[int, int], image: int = 0) -> list[Window]:
        """The network inputs of an image of ``shape`` (h, w): the whole image, or its tiles."""
        h, w = shape[:2]
        if h <= self.tile and w <= self.tile:
            return [Window(image, 0, 0, 0)]
        return [Window(image, left, top, self.tile) for left, top in tile_windows(w, h, self.tile, self.gap)]

    def preprocess(self, imgs: Sequence[np.ndarray], wins: Sequence[Window]) -> torch.Tensor:
        """Crop, letterbox, BGR->RGB, CHW, 0..1 on the device; fills each window's ratio and pad."""
        out = []
        for win in wins:
            img = imgs[win.image]
            crop = img if win.size == 0 else crop_tile(img, win.left, win.top, win.size)
            lb, ratio, pad = letterbox(crop, self.input_shape, auto=False)
            win.ratio, win.pad = ratio, pad
            out.append(lb[:, :, ::-1].transpose(2, 0, 1))
        x = torch.from_numpy(np.ascontiguousarray(np.stack(out))).to(self.device, non_blocking=True)
        return x.half() / 255 if self.half else x.float() / 255

    def forward(self, x: torch.Tensor, wins: Sequence[Window]) -> torch.Tensor:
        """The model's decoded output for a batch. ``wins`` is unused here; a test oracle overrides this
        method to answer from the ground truth of the windows it is shown."""
        y = self.model(x)
        return y[0] if isinstance(y, (tuple, list)) else y

    def postprocess(self, decoded: torch.Tensor, wins: Sequence[Window]) -> list[tuple[np.ndarray, ...]]:
        """Decoded batch -> per window ``(rboxes in window pixels, scores, cls)`` numpy arrays."""
        outs = postprocess(
            decoded.float(),
            conf_thr=self.conf,
            iou_thr=self.iou,
            max_det=self.max_det,
            theta_refine=self.theta_refine,
            multi_label=self.multi_label,
            nc=self.nc or None,
        )
        res = []
        for o, win in zip(outs, wins):
            rb = scale_rboxes(o["rboxes"], (win.ratio, win.pad)).cpu().numpy().astype(np.float64)
            sc = o["scores"].cpu().numpy().astype(np.float64)
            res.append((rb.reshape(-1, 5), sc, o["cls"].cpu().numpy()))
        return res

    @torch.inference_mode()
    def predict_batch(self, sources: Sequence[str | Path | np.ndarray]) -> list[Detections]:
        """Detections for each image (paths or BGR arrays); windows of all images share batches."""
        items = [read_image(s) for s in sources]
        imgs = [im for im, _ in items]
        wins = [w for k, im in enumerate(imgs) for w in self.windows(im.shape, k)]
        per_win: list[tuple[np.ndarray, ...]] = []
        for i in range(0, len(wins), self.batch):
            chunk = wins[i : i + self.batch]
            t0 = self._sync()
            x = self.preprocess(imgs, chunk)
            t1 = self._sync()
            decoded = self.forward(x, chunk)
            t2 = self._sync()
            per_win += self.postprocess(decoded, chunk)
            self.times["preprocess"] += t1 - t0
            self.times["inference"] += t2 - t1
            self.times["nms"] += time.perf_counter() - t2
        t0 = time.perf_counter()
        results = [self._merge(k, im, path, wins, per_win) for k, (im, path) in enumerate(items)]
        self.times["nms"] += time.perf_counter() - t0
        self.n_windows += len(wins)
        self.n_images += len(items)
        return results

    def predict(self, source: str | Path | np.ndarray) -> Detections:
        """Detections of one image (a path or an HWC uint8 BGR array)."""
        return self.predict_batch([source])[0]

    def _merge(
        self, k: int, img: np.ndarray, path: str | None, wins: list[Window], per_win: list
    ) -> Detections:
        mine = [(w, r) for w, r in zip(wins, per_win) if w.image == k]
        shape = tuple(int(v) for v in img.shape[:2])
        if len(mine) == 1:
            rb, sc, cl = mine[0][1]
        else:
            tiles = {tile_name("img", 1.0, w.left, w.top): r for w, r in mine}
            m = merge_detections(tiles, iou_thr=self.merge_iou, max_det=self.max_det)["img"]
            rb, sc, cl = m.rboxes[: self.max_det], m.scores[: self.max_det], m.cls[: self.max_det]
        return Detections(
            rboxes=np.asarray(rb, np.float64).reshape(-1, 5),
            scores=np.asarray(sc, np.float64).reshape(-1),
            cls=np.asarray(cl, np.int64).reshape(-1),
            names=list(self.names),
            path=path,
            shape=shape,  # type: ignore[arg-type]
            windows=len(mine),
        )

    def __repr__(self) -> str:
        return (
            f"Detector(backend={self.backend}, device={self.device}, imgsz={self.imgsz}, tile={self.tile}, "
            f"gap={self.gap}, conf={self.conf}, iou={self.iou}, half={self.half})"
        )
