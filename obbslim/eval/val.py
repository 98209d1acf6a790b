"""`obbslim val`: a checkpoint's OBB metrics on a dataset split, or on original large images.

Two protocols:
- the split (default): the dataset's images letterboxed to ``imgsz`` through
  ``obbslim.eval.metrics`` (the numbers training reports);
- ``full_images``: the DOTA benchmark protocol. SRC has ``images/`` and ``labelTxt/`` of original
  large images; every image is tiled like ``obbslim split`` (``tile = imgsz``, ``gap``), each tile
  predicted by the :class:`~obbslim.inference.detector.Detector`, the tiles merged with class-wise rotated
  NMS, Task1 files written into the run dir and scored by ``evaluate_dota`` against SRC/labelTxt.

Both print a per-class table (P, R at the best-mean-F1 confidence, AP50 VOC07 = the DOTA number,
AP50 VOC12, AP50-95), the YOLOv5 speed line, and write ``PR_curve.png`` into the run dir.
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from obbslim.data.classes import normalize_name
from obbslim.data.dataset import build_dataloader
from obbslim.data.labels import ScanReport, load_data_yaml, load_split
from obbslim.errors import InputError, ObbslimError
from obbslim.eval.dota import evaluate_dota
from obbslim.eval.metrics import IOU_THRS, pr_at_best_f1, validate
from obbslim.eval.plots import plot_pr_curves
from obbslim.inference.detect import check_stems, list_sources, windows_line, write_dota
from obbslim.inference.detector import Detector, set_theta_conf
from obbslim.model import load
from obbslim.options import ValConfig
from obbslim.utils.device import cpu_layout, select_device
from obbslim.utils.io import atomic_write_text, open_run_dir, run_path
from obbslim.utils.names import check_names
from obbslim.utils.text import plural
from obbslim.utils.threads import default_workers, use_threads


def metric_rows(res07: dict, res12: list[dict], classes: list[str]) -> dict[str, dict[str, float]]:
    """Per class and 'all': n_gt, n_det, P, R, mAP50 (VOC07), mAP50_voc12, mAP50_95."""
    p, r = pr_at_best_f1(res07, classes)
    rows: dict[str, dict[str, float]] = {}
    for k, c in enumerate(classes):
        rows[c] = {
            "n_gt": int(res07["n_gt"].get(c, 0)),
            "n_det": int(res07["n_det"].get(c, 0)),
            "precision": float(p[k]),
            "recall": float(r[k]),
            "mAP50": float(res07["per_class"][c]),
            "mAP50_voc12": float(res12[0]["per_class"][c]),
            "mAP50_95": float(np.mean([res["per_class"][c] for res in res12])),
        }
    keys = ("precision", "recall", "mAP50", "mAP50_voc12", "mAP50_95")
    allrow: dict[str, float] = {k: float(np.mean([v[k] for v in rows.values()] or [0.0])) for k in keys}
    allrow["n_gt"] = int(sum(v["n_gt"] for v in rows.values()))
    allrow["n_det"] = int(sum(v["n_det"] for v in rows.values()))
    return {"all": allrow, **rows}


def format_val_table(rows: dict[str, dict[str, float]], n_images: int) -> str:
    """YOLOv5's val table: class, images, instances, P, R, mAP50 (VOC07), mAP50 (VOC12), mAP50-95."""
    width = max([len("class")] + [len(c) for c in rows])
    head = (
        f"{'class':>{width}} {'images':>7} {'labels':>7} {'dets':>7} {'P':>7} {'R':>7} "
        f"{'mAP50':>7} {'mAP50':>8} {'mAP50-95':>8}"
    )
    out = [head, " " * (width + 41) + "(VOC07)  (VOC12)  (VOC12)"]
    for c, v in rows.items():
        out.append(
            f"{c:>{width}} {n_images:>7} {int(v['n_gt']):>7} {int(v['n_det']):>7} {v['precision']:>7.3f} "
            f"{v['recall']:>7.3f} {v['mAP50']:>7.4f} {v['mAP50_voc12']:>8.4f} {v['mAP50_95']:>8.4f}"
        )
    return "\n".join(out)


def speed_line(speed: dict[str, float], shape: tuple[int, ...]) -> str:
    return (
        f"Speed: {speed['preprocess']:.1f}ms pre-process, {speed['inference']:.1f}ms inference, "
        f"{speed['nms']:.1f}ms NMS per image at shape {tuple(shape)}"
    )


def val(*args: Any, detector: Any = None, **options: Any) -> dict[str, Any]:
    """``val(weights, data, **options)`` with the options of :class:`~obbslim.options.ValConfig` (or
    ``val(ValConfig(...))``): validate a .pt checkpoint (``full_images`` also takes .onnx, or a built
    ``detector``).

    Returns ``{run_dir, rows (per class and 'all'), mAP50, mAP50_voc12, mAP50_95, precision, recall,
    speed_ms, n_images, json (what --json writes)}`` and, with ``full_images``, ``task1_dir``.

    The split's scan report is printed (what was skipped, and why); a checkpoint for another number of
    classes, or labels naming classes the data YAML does not list, are errors (the score would be
    wrong). ``threads`` (None: the machine's default) holds for the call.
    """
    cfg = ValConfig.of(*args, **options)
    with use_threads(cfg.threads), open_run_dir(run_path(cfg.project, cfg.name), cfg.exist_ok) as lock:
        return _val(cfg, lock.folder, detector)  # the run folder is this run's until it ends


def _val(cfg: ValConfig, run_dir: Path, detector: Any) -> dict[str, Any]:
    if cfg.full_images is not None:
        out = _val_full_images(cfg, run_dir, detector)
    elif cfg.data is None:
        raise ObbslimError("val needs --data (a dataset YAML) unless --full-images is given")
    else:
        out = _val_split(cfg)
    res07, res12, classes = out.pop("res07"), out.pop("res12"), out.pop("classes")
    rows = metric_rows(res07, res12, classes)
    allrow = rows["all"]
    keys = ("mAP50", "mAP50_voc12", "mAP50_95", "precision", "recall")
    out.update(run_dir=str(run_dir), rows=rows, **{k: allrow[k] for k in keys})
    out["json"] = {
        "metric": "voc07",
        "iou_thr": 0.5,
        "mAP": allrow["mAP50"],
        "per_class": {c: rows[c]["mAP50"] for c in classes},
        "n_gt": {c: rows[c]["n_gt"] for c in classes},
        "n_det": {c: rows[c]["n_det"] for c in classes},
        **{k: allrow[k] for k in keys[1:]},
        "speed_ms": out["speed_ms"],
    }
    if cfg.plots:
        out["pr_curve"] = str(plot_pr_curves(res12[0], run_dir / "PR_curve.png", classes))
    if cfg.json_path is not None:
        atomic_write_text(cfg.json_path, json.dumps(out["json"], indent=2) + "\n")
    if cfg.verbose:
        print(format_val_table(rows, out["n_images"]))
        if list(out.get("windows_per_rate") or [1.0]) != [1.0] or out.get("flip"):
            print(windows_line(out["windows_per_rate"], out["flip"], out["n_images"]))
        print(speed_line(out["speed_ms"], out["shape"]))
        print(f"Results saved to {run_dir}")
        if cfg.json_path is not None:
            print(f"Metrics (JSON) written to {cfg.json_path}")
    return out


def _val_split(cfg: ValConfig) -> dict:
    weights = cfg.weights
    if isinstance(weights, (str, Path)) and Path(weights).suffix.lower() == ".onnx":
        raise ObbslimError(f"{weights}: split validation takes a .pt checkpoint (ONNX: use --full-images)")
    dev = select_device(cfg.device)
    from_file = isinstance(weights, (str, Path))
    model = cpu_layout(load(weights, device=dev), dev) if from_file else weights.to(dev)
    if cfg.theta_conf is not None:
        set_theta_conf(model, cfg.theta_conf)
    d = load_data_yaml(cfg.data)
    check_model_classes(model, d["names"], weights, d.get("yaml_file"), verbose=False)
    samples, report = load_split(d, cfg.split, verbose=False)
    check_scan(report, d.get("yaml_file"))
    if cfg.verbose:  # what the scan skipped, and why; then whether the model's names differ
        print(report.summary(), file=sys.stderr)
        check_model_classes(model, d["names"], weights, d.get("yaml_file"), verbose=True)
    if not samples:
        raise InputError(f"split {cfg.split!r} has no usable images", d.get("yaml_file"))
    stride = int(model.stride.max())
    loader = build_dataloader(samples, cfg.split, cfg.imgsz, cfg.batch, augment=False,
                              workers=default_workers(cfg.workers), stride=stride)  # fmt: skip
    timer: dict[str, float] = {}
    half = cfg.half and dev.type == "cuda"
    m = validate(model, loader, d["names"], cfg.conf, cfg.iou, cfg.max_det, half=half, progress=cfg.progress,
                 timer=timer, merge=cfg.merge)  # fmt: skip
    n = max(timer.get("images", 0), 1)
    return {
        "res07": m["voc07"],
        "res12": m["voc12"],
        "classes": list(m["per_class"]),
        "n_images": len(samples),
        "speed_ms": {k: 1000 * timer.get(k, 0.0) / n for k in ("preprocess", "inference", "nms")},
        "shape": (cfg.batch, 3, cfg.imgsz, cfg.imgsz),
    }


def check_model_classes(
    model: Any, names: list[str], weights: Any, data_file: Any = None, verbose: bool = True
) -> None:
    """A model scored on a dataset must predict its classes: another number of classes is an error; the
    same number under other names is a warning (the dataset's names are used)."""
    nc = getattr(model, "nc", None)
    where = weights if isinstance(weights, (str, Path)) else "the model"
    if nc is not None and int(nc) != len(names):
        raise ObbslimError(
            f"{where} predicts {plural(int(nc), 'class', 'classes')} but the dataset {data_file or ''} has "
            f"{len(names)}: validate a model on the classes it was trained for"
        )
    own = list(getattr(model, "names", None) or [])
    differ = [(a, b) for a, b in zip(own, names) if normalize_name(a) != normalize_name(b)]
    if own and differ and verbose:
        pairs = ", ".join(f"{a!r} -> {b!r}" for a, b in differ[:4]) + (", ..." if len(differ) > 4 else "")
        print(f"warning: {where} names its classes differently from the dataset ({pairs}); "
              "the dataset's names are used", file=sys.stderr)  # fmt: skip


def check_scan(report: ScanReport, data_file: Any) -> None:
    """Labels naming classes the data YAML does not list would be skipped and the score taken on the
    rest: refuse, naming them and the nearest listed names."""
    if not report.unknown_classes:
        return
    keys = {normalize_name(x): x for x in report.names}
    parts = []
    for k, n in sorted(report.unknown_classes.items()):
        near = difflib.get_close_matches(normalize_name(k), list(keys), n=1, cutoff=0.4)
        hint = f", nearest listed: {keys[near[0]]!r}" if near else ""
        parts.append(f"{k!r} ({plural(n, 'image')}{hint})")
    raise InputError(
        f"the {report.split} labels name classes that 'names' does not list: {', '.join(parts)}; fix 'names' "
        "or the labels (a score without those images would be wrong)",
        data_file,
    )


def _val_full_images(cfg: ValConfig, run_dir: Path, detector: Any) -> dict:
    src = Path(cfg.full_images)
    img_dir, ann_dir = src / "images", src / "labelTxt"
    for p in (img_dir, ann_dir):
        if not p.is_dir():
            raise InputError("--full-images needs images/ and labelTxt/ folders; missing", p)
    files = list_sources(img_dir)
    check_stems(files, task1=True)  # image ids of Task1 lines: no whitespace, before any work
    seen: dict[str, str] = {}
    for f in files:  # the ground truth is labelTxt/<stem>.txt: two images of one stem cannot both be it
        stem, name = Path(f).stem, Path(f).name
        if stem in seen:
            msg = f"two images share the stem {stem!r} ({seen[stem]}, {name}): labelTxt/{stem}.txt can be"
            raise InputError(msg + " the labels of one only", img_dir)
        seen[stem] = name
    det = detector or Detector(
        cfg.weights, device=cfg.device, imgsz=cfg.imgsz, conf=cfg.conf, iou=cfg.iou, max_det=cfg.max_det,
        tile=cfg.imgsz, gap=cfg.gap, half=cfg.half, batch=cfg.batch, multi_label=True, merge=cfg.merge,
        rates=cfg.rates, flip=cfg.flip, theta_conf=cfg.theta_conf,
    )  # fmt: skip
    check_names(det.names, "class name", None if detector else cfg.weights)
    det.reset_times()
    results = []
    chunk = max(det.batch // 4, 1)  # a large image makes many windows already
    for i in tqdm(range(0, len(files), chunk), desc="  full images", disable=None if cfg.progress else True,
                  leave=False):  # fmt: skip
        part = files[i : i + chunk]
        results += [(Path(f).stem, d) for f, d in zip(part, det.predict_batch(part))]
    task1_dir = run_dir / "Task1"
    write_dota(results, det.names, task1_dir)
    imageset = run_dir / "imageset.txt"
    atomic_write_text(imageset, "".join(f"{s}\n" for s, _ in results))
    res07 = evaluate_dota(task1_dir, ann_dir, imageset, metric="voc07", iou_thr=0.5)
    res12 = evaluate_dota(task1_dir, ann_dir, imageset, metric="voc12", iou_thr=IOU_THRS)
    classes = [c for c in res07["per_class"] if res07["n_gt"].get(c, 0) > 0]
    known = {normalize_name(n) for n in det.names}
    unknown = [c for c in classes if normalize_name(c) not in known]
    if unknown and cfg.verbose:
        what = plural(len(unknown), "class", "classes")
        print(f"warning: the labels of {ann_dir} have {what} the model does not predict (AP 0): "
              f"{', '.join(unknown)}", file=sys.stderr)  # fmt: skip
    return {
        "res07": res07,
        "res12": res12,
        "classes": classes,
        "n_images": len(files),
        "n_windows": det.n_windows,
        "windows_per_rate": dict(det.rate_windows),
        "flip": det.flip,
        "speed_ms": det.speed(),
        "shape": (det.batch, 3, *det.input_shape),
        "task1_dir": str(task1_dir),
    }
