"""Reporting an evaluation: the per-class text table, the JSON summary, and the CLI entry."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable

from obbslim.eval.dota import evaluate_dota
from obbslim.options import EvaluateConfig
from obbslim.utils.io import atomic_write_text
from obbslim.utils.threads import use_threads


def format_table(result: dict, digits: int = 6) -> str:
    """Rows ``class  n_gt  n_det  AP`` and a ``mean`` row, from an ``evaluate_*`` result dict."""
    per_class: dict = result["per_class"]
    n_gt: dict = result.get("n_gt", {})
    n_det: dict = result.get("n_det", {})
    width = max([len("class"), len("mean")] + [len(n) for n in per_class])
    head = f"{'class':<{width}}  {'n_gt':>7}  {'n_det':>7}  {'AP':>{digits + 2}}"
    rows = [head, "-" * len(head)]
    for name, ap in per_class.items():
        rows.append(f"{name:<{width}}  {n_gt.get(name, ''):>7}  {n_det.get(name, ''):>7}  {ap:.{digits}f}")
    rows.append("-" * len(head))
    tot_gt = sum(n_gt.values()) if n_gt else ""
    tot_det = sum(n_det.values()) if n_det else ""
    rows.append(f"{'mean':<{width}}  {tot_gt:>7}  {tot_det:>7}  {result['mAP']:.{digits}f}")
    thr = result.get("iou_thr")
    rows.append(f"mAP ({result.get('metric', '?')}, IoU > {thr}): {result['mAP']:.{digits}f}")
    return "\n".join(rows)


def result_json(result: dict) -> dict:
    """The JSON-safe summary of a result: metric, iou_thr, mAP, per_class, n_gt, n_det."""
    keys = ("metric", "iou_thr", "mAP", "per_class", "n_gt", "n_det")
    return {k: result[k] for k in keys if k in result}


def evaluate_report(
    det_dir: str | Path,
    ann_dir: str | Path,
    imageset: str | Path | None = None,
    classes: Iterable[str] | None = None,
    metric: str = EvaluateConfig.metric,
    iou_thr: float = EvaluateConfig.iou,
    json_path: str | Path | None = None,
    threads: int | None = None,
) -> str:
    """Run ``evaluate_dota``, write the JSON summary if asked, and return the table text; what the
    evaluation ignored is printed to stderr as warnings."""
    with use_threads(threads):
        result = evaluate_dota(det_dir, ann_dir, imageset, classes, metric, iou_thr)
    for w in result.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    text = format_table(result)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(result_json(result), indent=2) + "\n")
        text += f"\nJSON summary written to {json_path}"
    return text
