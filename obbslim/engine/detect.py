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
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from obbslim.errors import InputError

IMG_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


def list_sources(source: str | Path | Sequence[str | Path]) -> list[str]:
    """Image paths from a file, a folder (not recursive), a glob, or a list of those; sorted, unique."""
    if not isinstance(source, (str, Path)):
        return sorted({f for s in source for f in list_sources(s)})
    text = str(source)
    if any(ch in text for ch in "*?["):
        files = [f for f in glob.glob(text, recursive=True) if Path(f).suffix.lower() in IMG_EXTS]
        if not files:
            raise InputError("no images match this pattern", text)
        return sorted(set(files))
    p = Path(text)
    if p.is_dir():
        files = [str(q) for q in sorted(p.iterdir()) if q.suffix.lower() in IMG_EXTS and q.is_file()]
        if not files:
            raise InputError(f"no images ({', '.join(IMG_EXTS)}) in this folder", p)
        return files
    if p.is_file():
        return [str(p)]
    raise InputError("no such image, folder or pattern", p)


def dota_class(name: str) -> str:
    """Class names go in whitespace-separated files: DOTA spelling, spaces become hyphens."""
    return name.strip().replace(" ", "-")


def task1_records(dets: Iterable[tuple[str, Any]], names: Sequence[str]) -> dict[str, list]:
    """``{class: [(image_id, score, poly8)]}`` for ``write_task1``, every class present (maybe empty)."""
    out: dict[str, list] = {dota_class(n): [] for n in names}
    for image_id, d in dets:
        polys = d.polys
        for p, s, c in zip(polys, d.scores.tolist(), d.cls.tolist()):
            name = dota_class(names[c]) if 0 <= c < len(names) else str(c)
            out.setdefault(name, []).append((image_id, s, p))
    return out


def write_dota(dets: Iterable[tuple[str, Any]], names: Sequence[str], task1_dir: str | Path) -> list[Path]:
    """Write DOTA Task1 submission files for ``(image_id, Detections)`` pairs into ``task1_dir``."""
    from obbslim.data.labeltxt import write_task1

    Path(task1_dir).mkdir(parents=True, exist_ok=True)
    return write_task1(task1_dir, task1_records(dets, names))


def write_txt(path: str | Path, d: Any) -> None:
    """``x1 y1 ... x4 y4 class score`` per line (labelTxt order, score where difficult would be)."""
    from obbslim.utils.io import atomic_write_text

    lines = [
        " ".join(f"{v:.2f}" for v in p) + f" {dota_class(n)} {s:.6f}\n"
        for p, n, s in zip(d.polys.tolist(), d.labels, d.scores.tolist())
    ]
    atomic_write_text(path, "".join(lines))


def detect(
    weights: Any,
    source: str | Path | Sequence[str | Path],
    imgsz: int = 1024,
    tile: int | None = None,
    gap: int | None = None,
    conf: float = 0.25,
    iou: float = 0.4,
    max_det: int = 1000,
    device: str | None = None,
    half: bool = False,
    batch: int = 8,
    save_img: bool = False,
    save_txt: bool = False,
    save_dota: str | Path | None = None,
    project: str | Path = "runs/detect",
    name: str = "exp",
    exist_ok: bool = False,
    progress: bool = True,
    verbose: bool = True,
    detector: Any = None,
) -> dict[str, Any]:
    """Detect on every image of ``source``; returns ``{run_dir, task1_dir, n_images, n_det, n_tiled,
    n_windows, per_class, speed_ms, results}`` (``results``: [(path, Detections)]).

    ``detector`` reuses a built :class:`~obbslim.engine.predict.Detector` (then ``weights`` and the
    model options are ignored).
    """
    import cv2
    from tqdm import tqdm

    from obbslim.data.show import draw_rboxes
    from obbslim.engine.predict import Detector
    from obbslim.engine.runs import increment_path

    files = list_sources(source)
    det = detector or Detector(
        weights, device=device, imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, tile=tile, gap=gap,
        half=half, batch=batch,
    )
    det.reset_times()
    run_dir = None
    if save_img or save_txt:
        run_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
        run_dir.mkdir(parents=True, exist_ok=True)
        if save_txt:
            (run_dir / "labels").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    results: list[tuple[str, Any]] = []
    n_tiled = 0
    # disable=None: no bar when stderr is not a terminal (logs, captured output)
    bar = tqdm(total=len(files), desc="detect", unit="img", disable=None if progress else True,
               bar_format="{l_bar}{bar:10}{r_bar}")
    for i in range(0, len(files), det.batch):  # whole images per chunk; their windows share batches
        chunk = files[i : i + det.batch]
        for f, d in zip(chunk, det.predict_batch(chunk)):
            results.append((f, d))
            n_tiled += d.windows > 1
            stem = Path(f).stem
            if save_img:
                img = cv2.imread(f, cv2.IMREAD_COLOR)
                out = draw_rboxes(img, d.rboxes, d.cls, det.names, d.scores)
                ext = Path(f).suffix.lower()
                ext = ext if ext in (".jpg", ".jpeg", ".png") else ".jpg"
                cv2.imwrite(str(run_dir / f"{stem}{ext}"), out)
            if save_txt:
                write_txt(run_dir / "labels" / f"{stem}.txt", d)
        bar.update(len(chunk))
        bar.set_postfix_str(f"{sum(len(d) for _, d in results)} det")
    bar.close()
    if save_dota is not None:
        write_dota([(Path(f).stem, d) for f, d in results], det.names, save_dota)
    per_class: dict[str, int] = {}
    for _, d in results:
        for lab in d.labels:
            per_class[lab] = per_class.get(lab, 0) + 1
    n_det = int(sum(len(d) for _, d in results))
    speed = det.speed()
    summary = {
        "run_dir": None if run_dir is None else str(run_dir),
        "task1_dir": None if save_dota is None else str(save_dota),
        "n_images": len(files),
        "n_det": n_det,
        "n_tiled": int(n_tiled),
        "n_windows": det.n_windows,
        "per_class": per_class,
        "speed_ms": speed,
        "seconds": time.perf_counter() - t0,
        "results": results,
    }
    if verbose:
        print(format_summary(summary, det.input_shape, det.batch))
    return summary


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
    return "\n".join(lines)

