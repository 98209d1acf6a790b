"""Precision-recall curves of an evaluation, one figure with a line per class and the mean (YOLOv5's
PR_curve.png), drawn from the ranked curves an ``evaluate_*`` result dict carries."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from obbslim.utils.io import atomic_savefig


def pr_envelope(recall: np.ndarray, precision: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Precision on a recall ``grid`` from the monotone envelope (max precision at recall >= r), the
    curve VOC all-point AP integrates; 0 beyond the highest recall reached."""
    rec = np.concatenate(([0.0], np.asarray(recall, np.float64), [1.0]))
    pre = np.concatenate(([1.0], np.asarray(precision, np.float64), [0.0]))
    env = np.flip(np.maximum.accumulate(np.flip(pre)))
    idx = np.searchsorted(rec, grid, side="left").clip(0, len(rec) - 1)
    return env[idx]


def plot_pr_curves(
    result: dict, path: str | Path, classes: Sequence[str] | None = None, title: str | None = None
) -> Path:
    """Write the PR curves of ``result`` (an ``evaluate_polys``/``evaluate_dota`` dict at one IoU) to
    ``path``; legend entries carry each class's AP and the mean AP. Returns the path."""
    # matplotlib takes about 0.5 s to import: only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(classes if classes is not None else result["per_class"])
    grid = np.linspace(0, 1, 1001)
    curves = np.stack(
        [pr_envelope(result["recall"][c], result["precision"][c], grid) for c in classes]
    ) if classes else np.zeros((0, grid.size))
    fig, ax = plt.subplots(1, 1, figsize=(9, 6), tight_layout=True)
    many = len(classes) > 20  # YOLOv5: no per-class legend when there are too many
    for c, y in zip(classes, curves):
        ax.plot(grid, y, linewidth=1, label=None if many else f"{c} {result['per_class'][c]:.3f}")
    mean_ap = float(np.mean([result["per_class"][c] for c in classes])) if classes else 0.0
    if len(classes):
        ax.plot(grid, curves.mean(0), linewidth=3, color="blue", label=f"all classes {mean_ap:.3f} mAP")
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    metric = result.get("metric", "")
    ax.set_title(title or f"Precision-Recall curve ({metric}, IoU > {result.get('iou_thr', 0.5)})")
    if len(classes):
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left", fontsize=8)
    try:
        return atomic_savefig(fig, path, dpi=150)  # a full disk leaves no 0-byte PR_curve.png
    finally:
        plt.close(fig)
