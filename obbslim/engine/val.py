"""`obbslim val`: a checkpoint's OBB metrics on a dataset split, or on original large images.

Two protocols:
- the split (default): the dataset's images letterboxed to ``imgsz`` through
  ``obbslim.engine.validate`` (the numbers training reports);
- ``full_images``: the DOTA benchmark protocol. SRC has ``images/`` and ``labelTxt/`` of original
  large images; every image is tiled like ``obbslim split`` (``tile = imgsz``, ``gap``), each tile
  predicted by the :class:`~obbslim.engine.predict.Detector`, the tiles merged with class-wise rotated
  NMS, Task1 files written into the run dir and scored by ``evaluate_dota`` against SRC/labelTxt.

Both print a per-class table (P, R at the best-mean-F1 confidence, AP50 VOC07 = the DOTA number,
AP50 VOC12, AP50-95), the YOLOv5 speed line, and write ``PR_curve.png`` into the run dir.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from obbslim.errors import InputError, ObbslimError


def metric_rows(res07: dict, res12: list[dict], classes: list[str]) -> dict[str, dict[str, float]]:
    """Per class and 'all': n_gt, n_det, P, R, mAP50 (VOC07), mAP50_voc12, mAP50_95."""
    from obbslim.engine.validate import pr_at_best_f1

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
        f"{'mAP50':>7} {'mAP50-12':>8} {'mAP50-95':>8}"
    )
    out = [head, "  " + " " * (width + 32) + "(VOC07)  (VOC12)   (VOC12)"]
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


def val(
    weights: Any,
    data: str | Path | dict | None = None,
    split: str = "val",
    imgsz: int = 1024,
    batch: int = 16,
    conf: float = 0.001,
    iou: float = 0.4,
    max_det: int = 300,
    device: str | None = None,
    half: bool = False,
    full_images: str | Path | None = None,
    gap: int | None = None,
    json_path: str | Path | None = None,
    project: str | Path = "runs/val",
    name: str = "exp",
    exist_ok: bool = False,
    workers: int = 0,
    plots: bool = True,
    verbose: bool = True,
    progress: bool = True,
    detector: Any = None,
) -> dict[str, Any]:
    """Validate ``weights`` (a .pt checkpoint; ``full_images`` also takes .onnx or a ``detector``).

    Returns ``{run_dir, rows (per class and 'all'), mAP50, mAP50_voc12, mAP50_95, precision, recall,
    speed_ms, n_images, json (what --json writes)}`` and, with ``full_images``, ``task1_dir``.
    """
    from obbslim.engine.runs import increment_path

    run_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    run_dir.mkdir(parents=True, exist_ok=True)
    if full_images is not None:
        out = _val_full_images(
            weights, Path(full_images), run_dir, imgsz, batch, conf, iou, max_det, device, half, gap,
            progress, detector,
        )
    else:
        if data is None:
            raise ObbslimError("val needs --data (a dataset YAML) unless --full-images is given")
        out = _val_split(
            weights, data, split, imgsz, batch, conf, iou, max_det, device, half, workers, progress
        )
    res07, res12, classes = out.pop("res07"), out.pop("res12"), out.pop("classes")
    rows = metric_rows(res07, res12, classes)
    allrow = rows["all"]
    out.update(
        run_dir=str(run_dir),
        rows=rows,
        mAP50=allrow["mAP50"],
        mAP50_voc12=allrow["mAP50_voc12"],
        mAP50_95=allrow["mAP50_95"],
        precision=allrow["precision"],
        recall=allrow["recall"],
    )
    out["json"] = {
        "metric": "voc07",
        "iou_thr": 0.5,
        "mAP": allrow["mAP50"],
        "per_class": {c: rows[c]["mAP50"] for c in classes},
        "n_gt": {c: rows[c]["n_gt"] for c in classes},
        "n_det": {c: rows[c]["n_det"] for c in classes},
        "mAP50_voc12": allrow["mAP50_voc12"],
        "mAP50_95": allrow["mAP50_95"],
        "precision": allrow["precision"],
        "recall": allrow["recall"],
        "speed_ms": out["speed_ms"],
    }
    if plots:
        from obbslim.eval.plots import plot_pr_curves

        out["pr_curve"] = str(plot_pr_curves(res12[0], run_dir / "PR_curve.png", classes))
    if json_path is not None:
        from obbslim.utils.io import atomic_write_text

        atomic_write_text(json_path, json.dumps(out["json"], indent=2) + "\n")
    if verbose:
        print(format_val_table(rows, out["n_images"]))
        print(speed_line(out["speed_ms"], out["shape"]))
        print(f"Results saved to {run_dir}")
    return out


def _val_split(
    weights, data, split, imgsz, batch, conf, iou, max_det, device, half, workers, progress
) -> dict:
    from obbslim.data.dataset import build_dataloader
    from obbslim.data.labels import load_data_yaml, load_split
    from obbslim.engine.predict import select_device
    from obbslim.engine.validate import validate
    from obbslim.model import load

    if isinstance(weights, (str, Path)) and Path(weights).suffix.lower() == ".onnx":
        raise ObbslimError(f"{weights}: split validation takes a .pt checkpoint (ONNX: use --full-images)")
    dev = select_device(device)
    model = load(weights, device=dev) if isinstance(weights, (str, Path)) else weights.to(dev)
    d = load_data_yaml(data)
    samples, _ = load_split(d, split, verbose=False)
    if not samples:
        raise InputError(f"split {split!r} has no usable images", d.get("yaml_file"))
    stride = int(model.stride.max())
    loader = build_dataloader(samples, split, imgsz, batch, augment=False, workers=workers, stride=stride)
    timer: dict[str, float] = {}
    m = validate(model, loader, d["names"], conf, iou, max_det, half=half and dev.type == "cuda",
                 progress=progress, timer=timer)
    n = max(timer.get("images", 0), 1)
    return {
        "res07": m["voc07"],
        "res12": m["voc12"],
        "classes": list(m["per_class"]),
        "n_images": len(samples),
        "speed_ms": {k: 1000 * timer.get(k, 0.0) / n for k in ("preprocess", "inference", "nms")},
        "shape": (batch, 3, imgsz, imgsz),
    }


def _val_full_images(
    weights, src: Path, run_dir: Path, imgsz, batch, conf, iou, max_det, device, half, gap, progress, detector
) -> dict:
    from tqdm import tqdm

    from obbslim.engine.detect import list_sources, write_dota
    from obbslim.engine.predict import Detector
    from obbslim.engine.validate import IOU_THRS
    from obbslim.eval.dota import evaluate_dota
    from obbslim.utils.io import atomic_write_text

    img_dir, ann_dir = src / "images", src / "labelTxt"
    for p in (img_dir, ann_dir):
        if not p.is_dir():
            raise InputError("--full-images needs images/ and labelTxt/ folders; missing", p)
    files = list_sources(img_dir)
    det = detector or Detector(
        weights, device=device, imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, tile=imgsz, gap=gap,
        half=half, batch=batch, multi_label=True,
    )
    det.reset_times()
    results = []
    chunk = max(det.batch // 4, 1)  # a large image makes many windows already
    for i in tqdm(range(0, len(files), chunk), desc="  full images", disable=None if progress else True,
                  leave=False):
        part = files[i : i + chunk]
        results += [(Path(f).stem, d) for f, d in zip(part, det.predict_batch(part))]
    task1_dir = run_dir / "Task1"
    write_dota(results, det.names, task1_dir)
    imageset = run_dir / "imageset.txt"
    atomic_write_text(imageset, "".join(f"{s}\n" for s, _ in results))
    res07 = evaluate_dota(task1_dir, ann_dir, imageset, metric="voc07", iou_thr=0.5)
    res12 = evaluate_dota(task1_dir, ann_dir, imageset, metric="voc12", iou_thr=IOU_THRS)
    classes = [c for c in res07["per_class"] if res07["n_gt"].get(c, 0) > 0]
    return {
        "res07": res07,
        "res12": res12,
        "classes": classes,
        "n_images": len(files),
        "n_windows": det.n_windows,
        "speed_ms": det.speed(),
        "shape": (det.batch, 3, *det.input_shape),
        "task1_dir": str(task1_dir),
    }
