"""`obbslim detect`: run the Detector over images, folders or globs and save what was asked.

Each image has an id: its file stem, or, when two inputs share a stem (two sources, or a glob over
sub-folders), the path from the folder they share with ``_`` for ``/`` (``a/x.png``, ``b/x.png`` ->
``a_x``, ``b_x``; the same stem with two extensions gets the extension: ``x_png``, ``x_jpg``), so
no output overwrites another and Task1 never mixes two images under one id. The same file given
twice is detected once.

Outputs (under ``project/name``, created only when something is saved):
- ``--save-img``: the image with rotated boxes, class names and scores drawn (``<id>.jpg``/png);
- ``--save-txt``: ``labels/<id>.txt``, one ``x1 y1 ... x4 y4 class score`` line per detection
  (the merged-detection layout ``obbslim.data.merge.read_tile_detections`` reads back);
- ``--save-dota DIR``: ``Task1_<class>.txt`` (``image score x1 ... y4``), the DOTA evaluation
  server's submission format, one file per class (empty ones too). Results are kept per image in
  ``DIR/.detect/`` as images finish (:mod:`obbslim.inference.task1_parts`): rerunning the same
  command after an interruption or a crash resumes where it stopped (``--save-img``/``--save-txt``
  of the resumed run cover the finished images too); the Task1 files are written (atomically) once
  every image is done.

An image that cannot be read (truncated, corrupt, not an image) is skipped, named and counted; the
run goes on.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from obbslim.data.classes import class_key
from obbslim.data.imageinfo import IMG_FORMATS
from obbslim.data.labeltxt import write_task1
from obbslim.data.show import draw_rboxes
from obbslim.errors import InputError
from obbslim.inference.detector import Detections, Detector
from obbslim.inference.task1_parts import Task1Parts, detection_rows
from obbslim.ops import poly2rbox
from obbslim.options import DetectConfig
from obbslim.utils.io import atomic_imwrite, atomic_write_text, open_run_dir, run_path
from obbslim.utils.lock import RunLock
from obbslim.utils.names import check_image_id, check_name, check_names, safe_join
from obbslim.utils.text import plural
from obbslim.utils.threads import use_threads


def list_sources(source: str | Path | Sequence[str | Path]) -> list[str]:
    """Image paths from a file, a folder (not recursive), a glob, or a list of those; sorted, each file
    once (the same file reached by two paths counts once). A broken symbolic link among them is an
    ``InputError`` naming it (never skipped silently)."""
    if not isinstance(source, (str, Path)):
        return _unique_files(f for s in source for f in list_sources(s))
    text = str(source)
    if any(ch in text for ch in "*?["):
        files = [f for f in glob.glob(text, recursive=True) if Path(f).suffix.lower() in IMG_FORMATS]
        if not files:
            raise InputError("no images match this pattern", text)
        return _no_broken_links(_unique_files(files))
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


def _unique_files(files: Iterable[str]) -> list[str]:
    seen: dict[str, str] = {}
    for f in sorted(files):
        seen.setdefault(os.path.realpath(f), f)
    return sorted(seen.values())


def image_ids(files: Sequence[str]) -> list[str]:
    """One id per file (see the module doc): the stem where it is unique, else the path from the
    shared folder (``a_x``), else with the extension (``x_png``); a number is added if still taken."""
    by_stem: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        by_stem.setdefault(Path(f).stem, []).append(i)
    ids = [Path(f).stem for f in files]
    for stem, idx in by_stem.items():
        if len(idx) < 2:
            continue
        paths = [Path(os.path.realpath(files[i])) for i in idx]
        root = Path(os.path.commonpath([str(q.parent) for q in paths]))
        for i, q in zip(idx, paths):
            rel = q.parent.relative_to(root).parts
            ids[i] = "_".join((*rel, stem)) if rel else stem
        if len({ids[i] for i in idx}) < len(idx):  # same folder: x.png and x.jpg
            for i, q in zip(idx, paths):
                ids[i] = f"{ids[i]}_{q.suffix.lstrip('.').lower()}"
    taken: set[str] = set()
    for i, x in enumerate(ids):
        k, new = 2, x
        while new in taken:
            new, k = f"{x}-{k}", k + 1
        ids[i] = new
        taken.add(new)
    return ids


def _no_broken_links(files: list[str]) -> list[str]:
    for f in files:
        if os.path.islink(f) and not os.path.exists(f):
            raise InputError(f"broken symbolic link (to {os.readlink(f)})", f)
    return files


def check_stems(files: Sequence[str], task1: bool, ids: Sequence[str] | None = None) -> None:
    """Image ids (the stems, or ``ids`` from :func:`image_ids`) become output file names and, with
    ``task1``, the first field of Task1 lines: refuse unsafe names (and whitespace for Task1) before any
    image is processed (``utils.names``)."""
    for f, i in zip(files, ids if ids is not None else [Path(f).stem for f in files]):
        if task1:
            check_image_id(i, f)
        else:
            check_name(i, "image file name", f)


def _same_folder(a: Path | None, b: str | Path) -> bool:
    return a is not None and Path(b).is_dir() and os.path.samefile(a, b)


def task1_records(dets: Iterable[tuple[str, Any]], names: Sequence[str]) -> dict[str, list]:
    """``{class: [(image_id, score, poly8)]}`` for ``write_task1``, every class present (maybe empty)."""
    out: dict[str, list] = {class_key(n): [] for n in names}
    for image_id, d in dets:
        for c, s, p in detection_rows(d, names):
            out.setdefault(c, []).append((image_id, s, p))
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
    task1_dir, n_images, n_det, n_tiled, n_windows, n_resumed, skipped, per_class, speed_ms, seconds,
    results}`` (``results``: [(path, Detections)] of the images detected by this call; ``skipped``:
    [(path, reason)] of unreadable images; ``n_resumed``: images an interrupted run had finished).

    ``detector`` reuses a built :class:`~obbslim.inference.detector.Detector` (then ``weights`` and the
    model options are ignored). ``threads`` (None: the machine's default) holds for the call.
    """
    cfg = DetectConfig.of(*args, **options)
    with use_threads(cfg.threads):
        return _detect(cfg, detector)


def _detect(cfg: DetectConfig, detector: Detector | None) -> dict[str, Any]:
    files = list_sources(cfg.source)
    ids = image_ids(files)
    if cfg.save_dota is not None or cfg.save_img or cfg.save_txt:
        check_stems(files, task1=cfg.save_dota is not None, ids=ids)
    det = detector or Detector(
        cfg.weights, device=cfg.device, imgsz=cfg.imgsz, conf=cfg.conf, iou=cfg.iou, max_det=cfg.max_det,
        tile=cfg.tile, gap=cfg.gap, half=cfg.half, batch=cfg.batch, merge=cfg.merge,
        rates=cfg.rates, flip=cfg.flip, theta_conf=cfg.theta_conf,
    )  # fmt: skip
    if cfg.save_dota is not None:  # class names become Task1_<name>.txt: checked before any work
        check_names(det.names, "class name", None if detector else cfg.weights)
    det.reset_times()
    shared = [i for f, i in zip(files, ids) if i != Path(f).stem]
    if shared and cfg.verbose:
        print(f"detect: some inputs share a file stem: {plural(len(shared), 'image')} named after its folder "
              f"instead (output and Task1 id), e.g. {shared[0]}", file=sys.stderr)  # fmt: skip
    run_dir = None
    with ExitStack() as locks:  # the output folders are this run's until it ends
        if cfg.save_img or cfg.save_txt:
            run_dir = locks.enter_context(open_run_dir(run_path(cfg.project, cfg.name), cfg.exist_ok)).folder
            (run_dir / "labels" if cfg.save_txt else run_dir).mkdir(parents=True, exist_ok=True)
        if cfg.save_dota is not None and not _same_folder(run_dir, cfg.save_dota):
            locks.enter_context(RunLock(cfg.save_dota, clean_depth=1))
        return _run(cfg, det, files, ids, run_dir)


def _run(cfg: DetectConfig, det: Detector, files: list[str], ids: list[str], run_dir: Path | None) -> dict:
    """Detect on the images not done yet (resume), write what was asked, and summarise."""
    parts = None if cfg.save_dota is None else Task1Parts(cfg.save_dota, _settings(cfg, det))
    try:
        return _run_parts(cfg, det, files, ids, run_dir, parts)
    except BaseException:  # Ctrl-C, SIGTERM, a full disk, a crash: what was finished stays for a rerun
        if parts is not None:
            if parts.count():
                kept = plural(parts.count(), "finished image")
                print(f"detect: stopped; {kept} kept in {parts.dir}: rerun the same command to go on",
                      file=sys.stderr)  # fmt: skip
            else:
                parts.close()  # nothing to resume: leave no parts folder behind
        raise


def _run_parts(cfg: DetectConfig, det: Detector, files: list[str], ids: list[str], run_dir: Path | None,
               parts: Task1Parts | None) -> dict:  # fmt: skip
    done: dict[str, list] = {}
    if parts is not None:
        if parts.open():
            done = {i: rows for f, i in zip(files, ids) if (rows := parts.load(i, _source(f))) is not None}
        if parts.note and cfg.verbose:
            print(f"detect: {parts.note}", file=sys.stderr)
        if done and cfg.verbose:
            n = plural(len(done), "image")
            print(f"detect: resuming: {n} of {len(files)} already done in {parts.dir}", file=sys.stderr)
    todo = [(f, i) for f, i in zip(files, ids) if i not in done]
    if run_dir is not None:  # a resumed image's --save-img / --save-txt go into this run's folder too
        for f, i in zip(files, ids):
            if i in done:
                d = detections_from_rows(done[i], det.names, f)
                _save_image_outputs(f, i, d, cfg, run_dir, det.names)
    t0 = time.perf_counter()
    triples, skipped = _detect_files(det, todo, cfg, run_dir, parts)
    if skipped and len(skipped) == len(files):
        path, reason = skipped[0]
        more = f" (and the other {plural(len(skipped) - 1, 'image')})" if len(skipped) > 1 else ""
        raise InputError(f"{reason}{more}: no image could be read", path)
    results = [(f, d) for f, _, d in triples]
    rows = {**done, **{i: detection_rows(d, det.names) for _, i, d in triples}}  # every finished image
    per_class: dict[str, int] = {}
    for image_rows in rows.values():
        for c, _, _ in image_rows:
            per_class[c] = per_class.get(c, 0) + 1
    n_det = sum(per_class.values())
    if parts is not None:
        _write_task1(parts, ids, det.names, rows, cfg.verbose)
    summary = {
        "run_dir": None if run_dir is None else str(run_dir),
        "task1_dir": None if cfg.save_dota is None else str(cfg.save_dota),
        "n_images": len(files),
        "n_det": int(n_det),
        "n_tiled": int(sum(d.windows > 1 for _, d in results)),
        "n_windows": det.n_windows,
        "n_resumed": len(done),
        "skipped": skipped,
        "per_class": per_class,
        "speed_ms": det.speed(),
        "windows_per_rate": dict(det.rate_windows),  # flips not counted
        "flip": det.flip,
        "seconds": time.perf_counter() - t0,
        "results": results,
    }
    summary["n_tiled"] = int(sum(d.tiled for _, d in results))  # with rates or flips, windows > 1 always
    if cfg.verbose:
        for path, reason in skipped:
            print(f"detect: skipped {path}: {reason}", file=sys.stderr)
        print(format_summary(summary, det.input_shape, det.batch))
    return summary


def _source(path: str) -> str:
    return os.path.realpath(path)


def _settings(cfg: DetectConfig, det: Detector) -> dict[str, Any] | None:
    """What decides an image's detections (None when the weights are not a file: no resume)."""
    w = cfg.weights
    if not isinstance(w, (str, Path)) or not Path(w).is_file():
        return None
    st = Path(w).stat()
    return {
        "weights": os.path.realpath(w), "weights_bytes": st.st_size, "weights_mtime_ns": st.st_mtime_ns,
        "imgsz": det.imgsz, "input_shape": list(det.input_shape), "tile": det.tile, "gap": det.gap,
        "conf": det.conf, "iou": det.iou, "max_det": det.max_det, "half": det.half, "names": list(det.names),
        "merge": det.merge, "rates": list(det.rates), "flip": det.flip,
        "theta_conf": getattr(getattr(det.model, "detect", None), "theta_conf", None),  # an export: its file
    }  # fmt: skip


def _write_task1(parts: Task1Parts, ids: list[str], names: Sequence[str], rows: dict, verbose: bool) -> None:
    """The Task1 files from every finished image's rows, in file order; then the parts go."""
    records: dict[str, list] = {class_key(n): [] for n in names}
    for i in ids:
        for c, s, p in rows.get(i, []):
            records.setdefault(c, []).append((i, s, p))
    task1_dir = parts.dir.parent
    written = {p.name for p in write_task1(task1_dir, records)}
    stale = sorted(p.name for p in task1_dir.glob("Task1_*.txt") if p.name not in written)
    if stale and verbose:
        print(f"detect: warning: {task1_dir} also holds {', '.join(stale)} from an earlier run (not a "
              "class of this model): remove it before scoring or submitting the folder",
              file=sys.stderr)  # fmt: skip
    parts.close()


def _detect_files(det: Detector, todo: list[tuple[str, str]], cfg: DetectConfig, run_dir: Path | None,
                  parts: Task1Parts | None) -> tuple[list, list]:  # fmt: skip
    """([(path, id, Detections)], [(path, reason)]) for the images to do, whole images per chunk (their
    windows share batches), with what was asked written as each image finishes. An unreadable image
    is skipped (its chunk is redone image by image to find it)."""
    results: list[tuple[str, str, Any]] = []
    skipped: list[tuple[str, str]] = []
    # disable=None: no bar when stderr is not a terminal (logs, captured output)
    bar = tqdm(total=len(todo), desc="detect", unit="img", disable=None if cfg.progress else True,
               bar_format="{l_bar}{bar:10}{r_bar}")  # fmt: skip
    for k in range(0, len(todo), det.batch):
        chunk = todo[k : k + det.batch]
        for f, image_id, d in _predict_chunk(det, chunk, skipped):
            results.append((f, image_id, d))
            _save_image_outputs(f, image_id, d, cfg, run_dir, det.names)
            if parts is not None:
                parts.save(image_id, _source(f), detection_rows(d, det.names))
        bar.update(len(chunk))
        bar.set_postfix_str(f"{sum(len(d) for _, _, d in results)} det")
    bar.close()
    return results, skipped


def _save_image_outputs(f: str, image_id: str, d: Any, cfg: DetectConfig, run_dir: Path | None,
                        names: Sequence[str]) -> None:  # fmt: skip
    """``--save-img`` and ``--save-txt`` of one image."""
    if cfg.save_img:
        out = draw_rboxes(cv2.imread(f, cv2.IMREAD_COLOR), d.rboxes, d.cls, names, d.scores)
        ext = Path(f).suffix.lower()
        ext = ext if ext in (".jpg", ".jpeg", ".png") else ".jpg"
        atomic_imwrite(safe_join(run_dir, f"{image_id}{ext}"), out)
    if cfg.save_txt:
        write_txt(safe_join(run_dir / "labels", f"{image_id}.txt"), d)


def detections_from_rows(rows: list, names: Sequence[str], path: str | None = None) -> Detections:
    """A ``Detections`` back from stored ``(class, score, poly8)`` rows (a resumed image's)."""
    index = {class_key(n): i for i, n in enumerate(names)}
    polys = np.array([p for _, _, p in rows], np.float64).reshape(-1, 8)
    return Detections(
        rboxes=np.asarray(poly2rbox(polys), np.float64).reshape(-1, 5),
        scores=np.array([s for _, s, _ in rows], np.float64),
        cls=np.array([index.get(c, -1) for c, _, _ in rows], np.int64),
        names=list(names),
        path=path,
    )


def _predict_chunk(det: Detector, chunk: list[tuple[str, str]], skipped: list) -> list[tuple[str, str, Any]]:
    """(path, id, Detections) of the readable images of a chunk; the others go to ``skipped``."""
    try:
        return [(f, i, d) for (f, i), d in zip(chunk, det.predict_batch([f for f, _ in chunk]))]
    except InputError as e:
        if len(chunk) == 1:
            skipped.append((chunk[0][0], e.reason if e.path is not None else str(e)))
            return []
    out = []
    for f, i in chunk:
        out += _predict_chunk(det, [(f, i)], skipped)
    return out


def format_summary(s: dict[str, Any], shape: tuple[int, int], batch: int) -> str:
    """The closing lines of ``obbslim detect`` (counts, YOLOv5-style speed line, where results went)."""
    top = sorted(s["per_class"].items(), key=lambda kv: -kv[1])
    counts = ", ".join(f"{n} {c}" for c, n in top[:8]) + (", ..." if len(top) > 8 else "")
    sp = s["speed_ms"]
    extra = [f"{s['n_resumed']} done before (resumed)"] if s.get("n_resumed") else []
    if s.get("skipped"):
        extra.append(f"{len(s['skipped'])} skipped as unreadable")
    lines = [
        f"{plural(s['n_images'], 'image')} ({s['n_tiled']} tiled, {plural(s['n_windows'], 'window')}"
        + "".join(f", {x}" for x in extra)
        + f"): {plural(s['n_det'], 'detection')}"
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

