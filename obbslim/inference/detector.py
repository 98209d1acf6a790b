"""The Detector: images of any size in, rotated detections out. The one inference code path.

``obbslim detect``, ``obbslim val --full-images`` and the Python API (``obbslim.Detector``) all call
:meth:`Detector.predict_batch`. An image that fits in one tile is letterboxed to ``imgsz``; a larger
one is cut into ``tile`` x ``tile`` windows with ``gap`` pixels of overlap (``split.tile_windows``,
the windows ``obbslim split`` makes), each window is letterboxed to ``imgsz``, windows of all images
are batched through the model, and the window detections are merged back with class-wise rotated
NMS (``merge.merge_detections``, the DOTA devkit's merge). Decoding is ``postprocess``: score =
obj x cls, class-aware rotated NMS, ``max_det``.

Test-time augmentation, the protocol of multi-scale DOTA tables: ``rates`` resizes every image by each
rate (``split.resize_rate``, as ``obbslim split --rates`` cuts training data) and tiles each resized
image with the same ``tile``/``gap``; ``flip`` adds each window mirrored left-right and up-down (the
mirror is applied to the network input and undone on its boxes: ``tta.unmirror``), and the
three views of a window are fused into one answer (``tta.fuse_views``). Every window's boxes go back
to original pixels (divided by their rate) and all of an image's are merged by the same class-wise
rotated NMS as the tiles.
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
from obbslim.data.split import crop_tile, resize_rate, scaled_size, tile_name, tile_windows
from obbslim.errors import InputError, ObbslimError
from obbslim.inference.onnx_backend import OnnxModel
from obbslim.inference.postprocess import postprocess, scale_rboxes
from obbslim.inference.tta import FLIPS, fuse_views, mirror, unmirror
from obbslim.model import load
from obbslim.ops import rbox2poly
from obbslim.options import DetectConfig
from obbslim.options.inference import check_gap, default_gap
from obbslim.utils.device import cpu_layout, select_device


@dataclass
class Detections:
    """Detections of one image in its pixels, best score first (``rboxes`` follow the box convention)."""

    rboxes: np.ndarray  # float64 [n, 5] (cx, cy, long, short, theta)
    scores: np.ndarray  # float64 [n]
    cls: np.ndarray  # int64 [n]
    names: list[str] = field(default_factory=list)
    path: str | None = None
    shape: tuple[int, int] = (0, 0)  # (h, w) of the image
    windows: int = 1  # how many network inputs the image took (windows of every rate, times the flips)
    per_rate: dict[float, int] = field(default_factory=dict)  # rate -> windows it was cut into (no flips)

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def polys(self) -> np.ndarray:
        """float64 [n, 8] corner polygons ``x1 y1 ... x4 y4`` (``ops.rbox2poly``)."""
        return np.asarray(rbox2poly(self.rboxes), np.float64).reshape(-1, 8)

    @property
    def tiled(self) -> bool:
        """Cut into several windows at some rate (several rates or flips alone do not count)."""
        return max(self.per_rate.values(), default=self.windows) > 1

    @property
    def labels(self) -> list[str]:
        """Class name of each detection."""
        return [self.names[int(c)] if 0 <= int(c) < len(self.names) else str(int(c)) for c in self.cls]


@dataclass
class Window:
    """One network input: ``(left, top)`` of a ``size`` crop of image ``image`` resized by ``rate``
    (size 0: the whole resized image), letterboxed with ``ratio`` (rw, rh) and ``pad`` (left, top),
    then mirrored as ``flip`` says (``""``, ``"lr"`` or ``"ud"``)."""

    image: int
    left: int
    top: int
    size: int
    ratio: tuple[float, float] = (1.0, 1.0)
    pad: tuple[int, int] = (0, 0)
    rate: float = 1.0
    flip: str = ""


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


def check_rates(rates: float | Sequence[float]) -> tuple[float, ...]:
    """Resize rates as a tuple of distinct positive floats, in the order given."""
    values = (rates,) if isinstance(rates, (int, float)) else tuple(rates)
    try:
        out = tuple(dict.fromkeys(float(r) for r in values))
    except (TypeError, ValueError):
        raise ObbslimError(f"rates must be numbers, got {rates!r}") from None
    if not out or not all(0 < r < float("inf") for r in out):
        raise ObbslimError(f"rates must be positive numbers (e.g. 0.5 1.0 1.5), got {list(values)}")
    return out


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

    model = cpu_layout(load(path, device=device).fuse(), device)
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


def set_theta_conf(model: object, theta_conf: float) -> None:
    """Score with another angle-confidence power than the checkpoint's (0: obj x cls only). An ONNX
    export computed its objectness in the graph, with the power it was exported with."""
    detect = getattr(model, "detect", None)
    if detect is None or not hasattr(detect, "theta_conf"):
        what = "an ONNX export scores with the power it was exported with" if not isinstance(
            model, torch.nn.Module) else "this model has no obbslim Detect head"  # fmt: skip
        raise ObbslimError(f"theta_conf cannot be changed here: {what}")
    detect.theta_conf = float(theta_conf)


class Detector:
    """Rotated-box detector over images of any size (see the module doc).

    ``weights``: a ``.pt`` checkpoint, an ``.onnx`` export, or a model object (an ``OBBModel``, or any
    callable taking float [B, 3, H, W] in 0..1 and returning decoded ``[B, N, 6 + nc (+ 180)]`` or a
    tuple whose first item is that). ``tile`` defaults to ``imgsz``; images larger than ``tile`` on
    either side are tiled, windows overlapping by ``gap`` (default ``default_gap(tile)``, 200 at 1024;
    a ``gap >= tile`` is an error; a stride ``tile - gap`` under half the tile is warned about). The
    options are checked as :class:`~obbslim.options.DetectConfig` checks them (``conf`` in [0, 1], ...).
    ``half`` runs fp16 on CUDA (ignored on CPU). ``batch`` windows go through the network at once.
    ``merge``: merge-NMS within each window (``inference.postprocess``); ``merge_iou`` is the IoU of
    the tile merge (0.1, the DOTA devkit's), which keeps the best box across windows as it is.
    ``rates`` (default ``(1.0,)``): multi-scale inference, every image resized by each rate and tiled;
    then an image smaller than the tile at some rate is zero-padded to the tile as ``obbslim split``
    does, not enlarged to ``imgsz``, so that the rate alone sets the scale (with the single rate 1.0 a
    small image is letterboxed to ``imgsz``, as always). ``flip``: each window also goes through the
    network mirrored left-right and up-down (3 inputs per window), the three answers fused
    (``inference.tta``). The windows of all rates are merged with the tile merge; the cost is the
    windows of every rate (``windows``), times 3 with ``flip``.
    ``theta_conf`` (default: the checkpoint's, hyp ``theta_conf``) replaces the power of the angle's
    softmax peak that multiplies each box's objectness (0: the score is obj x cls).
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
        merge: bool = True,
        merge_iou: float = 0.1,
        multi_label: bool = False,
        names: Sequence[str] | None = None,
        rates: float | Sequence[float] = (1.0,),
        flip: bool = False,
        theta_conf: float | None = None,
    ):
        DetectConfig.check_values(imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, tile=tile, gap=gap,
                                  batch=batch, theta_conf=theta_conf)  # fmt: skip
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
        self.merge = bool(merge)
        self.merge_iou = float(merge_iou)
        self.multi_label = bool(multi_label)
        self.half = bool(half) and self.device.type == "cuda" and self.backend == "torch"
        if self.half:
            self.model.half()
        self.theta_refine = bool(theta_refine)
        if self.theta_refine and self.backend == "onnx":
            raise ObbslimError("theta_refine needs the theta-bin probabilities, which an ONNX export omits")
        if theta_conf is not None:
            set_theta_conf(self.model, theta_conf)
        self.nc = int(getattr(self.model, "nc", 0) or len(self.names))
        self.rates = check_rates(rates)
        self.flip = bool(flip)
        self.reset_times()

    # ------------------------------------------------------------------ timing
    def reset_times(self) -> None:
        self.times = {"preprocess": 0.0, "inference": 0.0, "nms": 0.0}
        self.n_windows = 0  # network inputs
        self.n_images = 0
        self.rate_windows = {r: 0 for r in self.rates}  # windows per rate (flips not counted)

    def speed(self) -> dict[str, float]:
        """Milliseconds per network input (window) for each stage since ``reset_times``."""
        n = max(self.n_windows, 1)
        return {k: 1000 * v / n for k, v in self.times.items()}

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # ------------------------------------------------------------------ the pipeline
    @property
    def multiscale(self) -> bool:
        return self.rates != (1.0,)

    def windows(self, shape: tuple[int, int], image: int = 0, rate: float = 1.0) -> list[Window]:
        """The network inputs of an image of ``shape`` (h, w) at ``rate`` (``shape`` is the original
        image's): the whole image or its tiles, each 3 times with ``flip``."""
        w, h = scaled_size(int(shape[1]), int(shape[0]), rate)
        if h <= self.tile and w <= self.tile:  # several rates: padded to the tile, not enlarged
            places, size = [(0, 0)], self.tile if self.multiscale else 0
        else:
            places, size = tile_windows(w, h, self.tile, self.gap), self.tile
        flips = FLIPS if self.flip else FLIPS[:1]
        return [Window(image, left, top, size, rate=rate, flip=f) for left, top in places for f in flips]

    def preprocess(self, imgs: Sequence[np.ndarray], wins: Sequence[Window]) -> torch.Tensor:
        """Resize, crop, letterbox, flip, BGR->RGB, CHW, 0..1 on the device; fills each window's ratio
        and pad. The flips of a window reuse its letterboxed crop; the last resized image is kept."""
        out = []
        last: tuple = (None, None)
        for win in wins:
            key = (win.image, win.rate, win.left, win.top, win.size)
            if key != last[0]:
                img = self._resized(imgs, win.image, win.rate)
                crop = img if win.size == 0 else crop_tile(img, win.left, win.top, win.size)
                last = (key, letterbox(crop, self.input_shape, auto=False))
            lb, ratio, pad = last[1]
            win.ratio, win.pad = ratio, pad
            out.append(mirror(lb, win.flip)[:, :, ::-1].transpose(2, 0, 1))
        x = torch.from_numpy(np.ascontiguousarray(np.stack(out))).to(self.device, non_blocking=True)
        return x.half() / 255 if self.half else x.float() / 255

    def _resized(self, imgs: Sequence[np.ndarray], k: int, rate: float) -> np.ndarray:
        """Image ``k`` resized by ``rate``; windows come image by image and rate by rate, so keeping
        the last one resizes each once and holds one resized copy at a time."""
        if rate == 1:
            return imgs[k]
        if self._resize_cache[0] != (k, rate):
            self._resize_cache = ((k, rate), resize_rate(imgs[k], rate))
        return self._resize_cache[1]

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
            merge=self.merge,
        )
        res = []
        for o, win in zip(outs, wins):
            rb = unmirror(o["rboxes"], win.flip, self.input_shape)  # exact, theta included
            rb = scale_rboxes(rb, (win.ratio, win.pad)).cpu().numpy().astype(np.float64)
            sc = o["scores"].cpu().numpy().astype(np.float64)
            res.append((rb.reshape(-1, 5), sc, o["cls"].cpu().numpy()))
        return res

    @torch.inference_mode()
    def predict_batch(self, sources: Sequence[str | Path | np.ndarray]) -> list[Detections]:
        """Detections for each image (paths or BGR arrays); windows of all images share batches."""
        items = [read_image(s) for s in sources]
        imgs = [im for im, _ in items]
        wins = [w for k, im in enumerate(imgs) for r in self.rates for w in self.windows(im.shape, k, r)]
        per_win: list[tuple[np.ndarray, ...]] = []
        self._resize_cache: tuple = (None, None)
        try:
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
        finally:
            self._resize_cache = (None, None)
        for w in wins:
            if not w.flip:
                self.rate_windows[w.rate] = self.rate_windows.get(w.rate, 0) + 1
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
        per_rate = {r: sum(w.rate == r and not w.flip for w, _ in mine) for r in self.rates}
        views: dict[tuple[float, int, int], list] = {}  # the flips of each window
        for w, r in mine:
            views.setdefault((w.rate, w.left, w.top), []).append(r)
        fused = {key: fuse_views(vs, self.iou, self.max_det) if len(vs) > 1 else vs[0]
                 for key, vs in views.items()}  # fmt: skip
        if len(fused) == 1:  # one window: nothing to merge, only back to image pixels
            ((rate, left, top), (rb, sc, cl)), = fused.items()
            if (rate, left, top) != (1.0, 0, 0):
                rb = rb.copy()
                rb[:, :2] = (rb[:, :2] + [left, top]) / rate
                rb[:, 2:4] /= rate
        else:  # tiles and rates: one class-wise rotated NMS over all (the merge divides by the rate)
            tiles = {tile_name("img", *key): r for key, r in fused.items()}
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
            per_rate=per_rate,
        )

    def __repr__(self) -> str:
        return (
            f"Detector(backend={self.backend}, device={self.device}, imgsz={self.imgsz}, tile={self.tile}, "
            f"gap={self.gap}, conf={self.conf}, iou={self.iou}, half={self.half}, rates={list(self.rates)}, "
            f"flip={self.flip})"
        )
