"""`obbslim detect`: run the Detector over images, folders or globs and save what was asked.

Outputs (under ``project/name``, created only when something is saved):
- ``--save-img``: the image with rotated boxes, class names and scores drawn (``<stem>.jpg``/png);
- ``--save-txt``: ``labels/<stem>.txt``, one ``x1 y1 ... x4 y4 class score`` line per detection
  (the merged-detection layout ``obbslim.data.merge.read_tile_detections`` reads back);
- ``--save-dota DIR``: ``Task1_<class>.txt`` (``image score x1 ... y4``, image id = file stem),
  the DOTA evaluation server's submission format, one file per class (empty ones too).
"""

from __future__ import annotations

import glob
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
from tqdm import tqdm

from obbslim.data.classes import class_key
from obbslim.data.imageinfo import IMG_FORMATS
from obbslim.data.labeltxt import write_task1
from obbslim.data.show import draw_rboxes
from obbslim.errors import InputError
from obbslim.inference.detector import Detector
from obbslim.options import DetectConfig
from obbslim.utils.io import atomic_imwrite, atomic_write_text, open_run_dir, run_path
from obbslim.utils.lock import RunLock
from obbslim.utils.names import check_image_id, check_name, check_names, safe_join


def list_sources(source: str | Path | Sequence[str | Path]) -> list[str]:
    """Image paths from a file, a folder (not recursive), a glob, or a list of those; sorted, unique.
    A broken symbolic link among them is an ``InputError`` naming it (never skipped silently)."""
    if not isinstance(source, (str, Path)):
        return sorted({f for s in source for f in list_sources(s)})
    text = str(source)
    if any(ch in text for ch in "*?["):
        files = [f for f in glob.glob(text, recursive=True) if Path(f).suffix.lower() in IMG_FORMATS]
        if not files:
            raise InputError("no images match this pattern", text)
        return _no_broken_links(sorted(set(files)))
    p = Path(text)
    if p.is_dir():
        files = [str(q) for q in sorted(p.iterdir())
                 if q.suffix.lower() in IMG_FORMATS and (q.is_file() or q.is_symlink())]  # fmt: skip
        if not files:
            raise InputError(f"no images ({', '.join(IMG_FORMATS)}) in this folder", p)
        return _no_broken_links(files)
    if p.is_symlink():
        _no_broken_links([text])
    if p.is_file():
        return [str(p)]
    raise InputError("no such image, folder or pattern", p)


def _no_broken_links(files: list[str]) -> list[str]:
    for f in files:
        if os.path.islink(f) and not os.path.exists(f):
            raise InputError(f"broken symbolic link (to {os.readlink(f)})", f)
    return files


def check_stems(files: Sequence[str], task1: bool) -> None:
    """Image stems become output file names and, with ``task1``, the first field of Task1 lines: refuse
    unsafe names (and whitespace for Task1) before any image is processed (``utils.names``)."""
    for f in files:
        if task1:
            check_image_id(Path(f).stem, f)
        else:
            check_name(Path(f).stem, "image file name", f)


def _same_folder(a: Path | None, b: str | Path) -> bool:
    return a is not None and Path(b).is_dir() and os.path.samefile(a, b)


def task1_records(dets: Iterable[tuple[str, Any]], names: Sequence[str]) -> dict[str, list]:
    """``{class: [(image_id, score, poly8)]}`` for ``write_task1``, every class present (maybe empty)."""
    out: dict[str, list] = {class_key(n): [] for n in names}
    for image_id, d in dets:
        polys = d.polys
        for p, s, c in zip(polys, d.scores.tolist(), d.cls.tolist()):
            name = class_key(names[c]) if 0 <= c < len(names) else str(c)
            out.setdefault(name, []).append((image_id, s, p))
    return out


def write_dota(dets: Iterable[tuple[str, Any]], names: Sequence[str], task1_dir: str | Path) -> list[Path]:
    """Write DOTA Task1 submission files for ``(image_id, Detections)`` pairs into ``task1_dir``."""
    Path(task1_dir).mkdir(parents=True, exist_ok=True)
    return write_task1(task1_dir, task1_records(dets, names))


def write_txt(path: str | Path, d: Any) -> None:
    """``x1 y1 ... x4 y4 class score`` per line (labelTxt order, score where difficult would be)."""
    lines = [
        " ".join(f"{v:.2f}" for v in p) + f" {class_key(n)} {s:.6f}\n"
        for p, n, s in zip(d.polys.tolist(), d.labels, d.scores.tolist())
    ]
    atomic_write_text(path, "".join(lines))


def detect(*args: Any, detector: Detector | None = None, **options: Any) -> dict[str, Any]:
    """``detect(weights, source, **options)`` with the options of :class:`~obbslim.options.DetectConfig`
    (or ``detect(DetectConfig(...))``): detect on every image of ``source``. Returns ``{run_dir,
    task1_dir, n_images, n_det, n_tiled, n_windows, per_class, speed_ms, seconds, results}``
    (``results``: [(path, Detections)]).

    ``detector`` reuses a built :class:`~obbslim.inference.detector.Detector` (then ``weights`` and the
    model options are ignored).
    """
    cfg = DetectConfig.of(*args, **options)
    files = list_sources(cfg.source)
    if cfg.save_dota is not None or cfg.save_img or cfg.save_txt:
        check_stems(files, task1=cfg.save_dota is not None)
    det = detector or Detector(
        cfg.weights, device=cfg.device, imgsz=cfg.imgsz, conf=cfg.conf, iou=cfg.iou, max_det=cfg.max_det,
        tile=cfg.tile, gap=cfg.gap, half=cfg.half, batch=cfg.batch,
        rates=cfg.rates, flip=cfg.flip,
    )  # fmt: skip
    if cfg.save_dota is not None:  # class names become Task1_<name>.txt: checked before any work
        check_names(det.names, "class name", None if detector else cfg.weights)
    det.reset_times()
    run_dir = None
    with ExitStack() as locks:  # the output folders are this run's until it ends
        if cfg.save_img or cfg.save_txt:
            run_dir = locks.enter_context(open_run_dir(run_path(cfg.project, cfg.name), cfg.exist_ok)).folder
            (run_dir / "labels" if cfg.save_txt else run_dir).mkdir(parents=True, exist_ok=True)
        if cfg.save_dota is not None and not _same_folder(run_dir, cfg.save_dota):
            locks.enter_context(RunLock(cfg.save_dota, clean_depth=1))
        t0 = time.perf_counter()
        results = _detect_files(det, files, cfg, run_dir)
        if cfg.save_dota is not None:
            write_dota([(Path(f).stem, d) for f, d in results], det.names, cfg.save_dota)
    per_class: dict[str, int] = {}
    for _, d in results:
        for lab in d.labels:
            per_class[lab] = per_class.get(lab, 0) + 1
    summary = {
        "run_dir": None if run_dir is None else str(run_dir),
        "task1_dir": None if cfg.save_dota is None else str(cfg.save_dota),
        "n_images": len(files),
        "n_det": int(sum(len(d) for _, d in results)),
        "n_tiled": int(sum(d.windows > 1 for _, d in results)),
        "n_windows": det.n_windows,
        "per_class": per_class,
        "speed_ms": det.speed(),
        "windows_per_rate": dict(det.rate_windows),  # flips not counted
        "flip": det.flip,
        "seconds": time.perf_counter() - t0,
        "results": results,
    }
    summary["n_tiled"] = int(sum(d.tiled for _, d in results))  # with rates or flips, windows > 1 always
    if cfg.verbose:
        print(format_summary(summary, det.input_shape, det.batch))
    return summary


def _detect_files(det: Detector, files: list[str], cfg: DetectConfig, run_dir: Path | None) -> list:
    """[(path, Detections)] for every file, whole images per chunk (their windows share batches), with
    the images and label files asked for written as they come."""
    results: list[tuple[str, Any]] = []
    # disable=None: no bar when stderr is not a terminal (logs, captured output)
    bar = tqdm(total=len(files), desc="detect", unit="img", disable=None if cfg.progress else True,
               bar_format="{l_bar}{bar:10}{r_bar}")  # fmt: skip
    for i in range(0, len(files), det.batch):
        chunk = files[i : i + det.batch]
        for f, d in zip(chunk, det.predict_batch(chunk)):
            results.append((f, d))
            stem = Path(f).stem
            if cfg.save_img:
                out = draw_rboxes(cv2.imread(f, cv2.IMREAD_COLOR), d.rboxes, d.cls, det.names, d.scores)
                ext = Path(f).suffix.lower()
                ext = ext if ext in (".jpg", ".jpeg", ".png") else ".jpg"
                atomic_imwrite(safe_join(run_dir, f"{stem}{ext}"), out)
            if cfg.save_txt:
                write_txt(safe_join(run_dir / "labels", f"{stem}.txt"), d)
        bar.update(len(chunk))
        bar.set_postfix_str(f"{sum(len(d) for _, d in results)} det")
    bar.close()
    return results


def format_summary(s: dict[str, Any], shape: tuple[int, int], batch: int) -> str:
    """The closing lines of ``obbslim detect`` (counts, YOLOv5-style speed line, where results went)."""
    top = sorted(s["per_class"].items(), key=lambda kv: -kv[1])
    counts = ", ".join(f"{n} {c}" for c, n in top[:8]) + (", ..." if len(top) > 8 else "")
    sp = s["speed_ms"]
    lines = [
        f"{s['n_images']} images ({s['n_tiled']} tiled, {s['n_windows']} windows): {s['n_det']} detections"
        + (f" ({counts})" if counts else "")
        + f" in {s['seconds']:.1f}s",
        f"Speed: {sp['preprocess']:.1f}ms pre-process, {sp['inference']:.1f}ms inference, "
        f"{sp['nms']:.1f}ms NMS per image at shape ({batch}, 3, {shape[0]}, {shape[1]})",
    ]
    if s["run_dir"]:
        lines.append(f"Results saved to {s['run_dir']}")
    if s["task1_dir"]:
        lines.append(f"DOTA Task1 files saved to {s['task1_dir']}")
    if list(s.get("windows_per_rate") or [1.0]) != [1.0] or s.get("flip"):
        lines.insert(1, windows_line(s["windows_per_rate"], s["flip"], s["n_images"]))
    return "\n".join(lines)


def windows_line(per_rate: dict[float, int], flip: bool, n_images: int) -> str:
    """What multi-scale and flip inference cost: the windows each rate took, the network inputs."""
    n = sum(per_rate.values())
    rates = ", ".join(f"rate {r:g}: {v}" for r, v in per_rate.items())
    flips = f", x3 with --flip: {3 * n} network inputs" if flip else ""
    return f"Windows per rate: {rates} ({n} in all, {n / max(n_images, 1):.1f} per image{flips})"

