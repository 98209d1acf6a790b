"""Pictures of labels, for checking a dataset and its augmentations by eye.

``draw_rboxes`` (shared with ``obbslim detect``), ``plot_batch`` (a grid of training images with
their targets) and ``plot_labels`` (class counts, box sizes, angles) are reused by the training
engine; ``show_dataset`` is the library side of ``obbslim show``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from obbslim.data.augment import to_rboxes
from obbslim.data.dataset import OBBDataset, collate_fn
from obbslim.data.labels import load_data_yaml, load_split
from obbslim.errors import InputError
from obbslim.ops import rbox2poly
from obbslim.options import ShowConfig
from obbslim.utils.io import atomic_imwrite, atomic_savefig
from obbslim.utils.names import safe_join
from obbslim.utils.threads import use_threads

__all__ = ["class_color", "draw_rboxes", "plot_batch", "plot_labels", "show_dataset", "DIFFICULT_COLOR"]

# Ultralytics palette (RGB hex), used as BGR class colours
_HEX = (
    "FF3838 FF9D97 FF701F FFB21D CFD231 48F90A 92CC17 3DDB86 1A9334 00D4BB "
    "2C99A8 00C2FF 344593 6473FF 0018EC 8438FF 520085 CB38FF FF95C8 FF37C7"
).split()
_PALETTE = [(int(h[4:6], 16), int(h[2:4], 16), int(h[0:2], 16)) for h in _HEX]
DIFFICULT_COLOR = (255, 255, 255)  # BGR white: difficult objects in show_dataset


def class_color(c: int) -> tuple[int, int, int]:
    """BGR colour of class ``c`` (cycles through a 20-colour palette)."""
    return _PALETTE[int(c) % len(_PALETTE)]


def _name(names: Sequence[str] | dict | None, c: int) -> str:
    if names is None:
        return str(c)
    try:
        return str(names[c])
    except (IndexError, KeyError):
        return str(c)


def draw_rboxes(
    img: np.ndarray,
    rboxes: Any,
    cls: Any,
    names: Sequence[str] | dict | None = None,
    scores: Any = None,
    colors: Sequence[tuple[int, int, int]] | None = None,
    line_width: int | None = None,
    labels: bool = True,
) -> np.ndarray:
    """A copy of ``img`` (HWC uint8 BGR) with rotated boxes [N, 5] outlined and labelled.

    The label (class name, and score when given) sits at the box's top-most corner; ``colors``
    overrides the per-class colour box by box (e.g. to mark difficult objects).
    """
    out = np.ascontiguousarray(img).copy()
    r = np.asarray(rboxes, np.float64).reshape(-1, 5)
    if len(r) == 0:
        return out
    c = np.asarray(cls).reshape(-1).astype(np.int64)
    lw = line_width or max(round(sum(out.shape[:2]) / 2 * 0.002), 1)
    pts = np.round(rbox2poly(r).reshape(-1, 4, 2)).astype(np.int32)
    if colors is None:
        cols = [class_color(k) for k in c]
    else:
        cols = [tuple(int(v) for v in col) for col in colors]
    for k in range(len(pts)):  # one cv2 call per box: drawing, not a hot path
        cv2.polylines(out, [pts[k]], True, cols[k], lw, cv2.LINE_AA)
    if labels:
        fs = max(lw / 3, 0.35)
        tf = max(lw - 1, 1)
        top = pts[np.arange(len(pts)), pts[:, :, 1].argmin(1)]
        for k in range(len(pts)):
            text = _name(names, c[k]) + ("" if scores is None else f" {float(np.asarray(scores)[k]):.2f}")
            (tw, th), _ = cv2.getTextSize(text, 0, fs, tf)
            x, y = int(top[k, 0]), int(top[k, 1])
            y = max(y, th + 3)
            cv2.rectangle(out, (x, y - th - 3), (x + tw, y), cols[k], -1, cv2.LINE_AA)
            ink = (0, 0, 0) if sum(cols[k]) > 382 else (255, 255, 255)
            cv2.putText(out, text, (x, y - 2), 0, fs, ink, tf, cv2.LINE_AA)
    return out


def plot_batch(
    imgs: Any,
    targets: Any,
    names: Sequence[str] | dict | None,
    path: str | Path,
    max_size: int = 1920,
    max_subplots: int = 16,
    files: Sequence[str] | None = None,
) -> Path:
    """A grid (up to 4x4) of batch images [B, 3, H, W] RGB with their targets drawn -> ``path`` (jpg).

    ``targets`` rows are ``[img_idx, cls, cx, cy, w, h, theta]`` in image pixels, optionally with an 8th
    column of scores (predictions). Images may be uint8 0-255 or float 0-1.
    """
    if isinstance(imgs, torch.Tensor):
        imgs = imgs.detach().cpu().float().numpy()
    if isinstance(targets, torch.Tensor):
        targets = targets.detach().cpu().numpy()
    imgs = np.asarray(imgs, np.float32)
    if imgs.size and imgs.max() <= 1.0:
        imgs = imgs * 255
    t = np.asarray(targets, np.float64).reshape(-1, targets.shape[-1] if len(targets) else 7)
    bs, _, h, w = imgs.shape
    bs = min(bs, max_subplots)
    ns = math.ceil(bs**0.5)
    scale = min(1.0, max_size / (ns * max(h, w)))
    hs, ws = math.ceil(h * scale), math.ceil(w * scale)
    grid = np.full((ns * hs, ns * ws, 3), 255, np.uint8)
    for i in range(bs):
        im = imgs[i].transpose(1, 2, 0)[:, :, ::-1].clip(0, 255).astype(np.uint8)  # RGB -> BGR
        if scale < 1:
            im = cv2.resize(im, (ws, hs), interpolation=cv2.INTER_AREA)
        ti = t[t[:, 0] == i]
        rb = ti[:, 2:7].copy()
        rb[:, :4] *= [im.shape[1] / w, im.shape[0] / h, scale, scale]
        im = draw_rboxes(
            im, rb, ti[:, 1], names, ti[:, 7] if t.shape[1] > 7 else None, line_width=1, labels=len(ti) <= 60
        )
        if files is not None:
            cv2.putText(im, Path(files[i]).name[:40], (5, 15), 0, 0.45, (220, 220, 220), 1, cv2.LINE_AA)
        y, x = (i // ns) * hs, (i % ns) * ws
        grid[y : y + im.shape[0], x : x + im.shape[1]] = im
        cv2.rectangle(grid, (x, y), (x + ws - 1, y + hs - 1), (255, 255, 255), 2)
    return atomic_imwrite(path, grid)


def plot_labels(rboxes: Any, cls: Any, names: Sequence[str] | dict | None, path: str | Path) -> Path:
    """Label statistics -> ``path`` (png): class counts, long/short side histograms, angle histogram."""
    # matplotlib takes about 0.5 s to import: only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = np.asarray(rboxes, np.float64).reshape(-1, 5)
    c = np.asarray(cls).reshape(-1).astype(np.int64)
    nc = len(names) if names is not None else (int(c.max()) + 1 if len(c) else 1)
    counts = np.bincount(c, minlength=nc)
    fig, ax = plt.subplots(2, 2, figsize=(10, 8), tight_layout=True)
    ax = ax.ravel()
    bar_colors = [np.array(class_color(k)[::-1]) / 255 for k in range(len(counts))]
    ax[0].bar(range(len(counts)), counts, color=bar_colors)
    ax[0].set_xticks(range(len(counts)))
    ax[0].set_xticklabels([_name(names, k) for k in range(len(counts))], rotation=90, fontsize=8)
    ax[0].set_ylabel("instances")
    ax[0].set_title(f"{len(c)} objects")
    for a, col, title in ((ax[1], 2, "long side w (px)"), (ax[2], 3, "short side h (px)")):
        a.hist(r[:, col], bins=50, color="#3DDB86")
        a.set_xlabel(title)
        a.set_ylabel("instances")
    ax[3].hist(np.degrees(r[:, 4]), bins=np.linspace(-90, 90, 37), color="#FF9D97")
    ax[3].set_xlabel("angle theta (degrees, clockwise on screen)")
    ax[3].set_ylabel("instances")
    try:
        return atomic_savefig(fig, path, dpi=100)
    finally:
        plt.close(fig)


def show_dataset(
    data: Any,
    split: str,
    out: str | Path,
    n: int = ShowConfig.n,
    augment: bool = ShowConfig.augment,
    imgsz: int = ShowConfig.imgsz,
    seed: int = ShowConfig.seed,
    hyp: str | Path | dict[str, Any] | None = ShowConfig.hyp,
    threads: int | None = ShowConfig.threads,
    cache: bool = True,
    max_size: int = 2048,
) -> list[Path]:
    """Draw a split's labels so they can be checked by eye; returns the files written.

    Writes ``out/<image stem>.jpg`` for the first ``n`` images (original labels, difficult objects
    in white, long side shrunk to ``max_size``), ``out/<split>_batch0.jpg`` (a grid of up to 16
    dataset items as the model sees them: augmented with ``augment``, else letterboxed) and
    ``out/labels.png`` (statistics of every object of the split). The split's scan report (what was
    skipped, and why) is printed to stderr; an image that cannot be decoded is skipped with a message.
    ``threads`` (None: the machine's default) holds for the call.
    """
    ShowConfig(data=data, split=split, out=out, n=n, augment=augment, imgsz=imgsz, seed=seed, hyp=hyp,
               threads=threads)  # fmt: skip
    with use_threads(threads):
        return _show(data, split, Path(out), n, augment, imgsz, seed, hyp, cache, max_size)


def _show(
    data: Any, split: str, out: Path, n: int, augment: bool, imgsz: int, seed: int, hyp: Any, cache: bool,
    max_size: int,
) -> list[Path]:
    d = load_data_yaml(data)
    names = d["names"]
    samples, _ = load_split(d, split, cache=cache, verbose=True)
    if not samples:
        raise InputError(f"split {split!r} has no usable images", d.get("yaml_file"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for s in samples[:n]:
        img = cv2.imread(str(s.im_file), cv2.IMREAD_COLOR)
        if img is None:
            print(f"show: skipped {s.im_file}: cannot read image (corrupt or unsupported format)",
                  file=sys.stderr)  # fmt: skip
            continue
        r = to_rboxes(s.polys)
        f = min(1.0, max_size / max(img.shape[:2]))
        if f < 1:
            size = (round(img.shape[1] * f), round(img.shape[0] * f))
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            r[:, :4] *= f
        colors = [DIFFICULT_COLOR if dif else class_color(k) for k, dif in zip(s.cls, s.difficult)]
        p = safe_join(out, f"{Path(s.im_file).stem}.jpg", "image file name")
        written.append(atomic_imwrite(p, draw_rboxes(img, r, s.cls, names, colors=colors)))

    ds = OBBDataset(samples, imgsz, augment=augment, hyp=hyp, seed=seed)
    batch = collate_fn([ds[i] for i in range(min(16, len(ds)))])
    written.append(plot_batch(batch[0], batch[1], names, out / f"{split}_batch0.jpg", files=batch[2]))

    rb = [to_rboxes(s.polys) for s in samples]
    cl = [np.asarray(s.cls).reshape(-1) for s in samples]
    written.append(plot_labels(np.concatenate(rb), np.concatenate(cl), names, out / "labels.png"))
    return written
