"""The run directory: runs/train/<name>/ with weights/, args.yaml, results.csv and results.png."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml

from obbslim.options import plain
from obbslim.utils.io import atomic_savefig, atomic_write_text


def write_yaml(path: str | Path, data: dict) -> None:
    atomic_write_text(path, yaml.safe_dump(plain(data), sort_keys=False))


def read_yaml(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


class ResultsCSV:
    """Append one row per epoch; the header is fixed by the first row written (or the existing file)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.keys: list[str] | None = None
        if self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as f:
                self.keys = next(csv.reader(f), None)

    def truncate(self, last_epoch: int) -> None:
        """Drop rows after ``last_epoch`` (a resumed run redoes the epoch that was interrupted)."""
        rows = self.read()
        if not rows or self.keys is None:
            return
        keep = [r for r in rows if int(float(r["epoch"])) <= last_epoch]
        lines = [",".join(self.keys)] + [",".join(r[k] for k in self.keys) for r in keep]
        atomic_write_text(self.path, "\n".join(lines) + "\n")

    def append(self, row: dict[str, Any]) -> None:
        """Rewrite the file with the new row (atomically: a full disk never leaves half a row)."""
        if self.keys is None:
            self.keys = list(row)
            atomic_write_text(self.path, ",".join(self.keys) + "\n")
        old = self.path.read_text(encoding="utf-8")
        if old and not old.endswith("\n"):
            old += "\n"
        atomic_write_text(self.path, old + ",".join(_fmt(row.get(k, "")) for k in self.keys) + "\n")

    def read(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def plot_results(csv_path: str | Path, out: str | Path | None = None) -> Path | None:
    """results.png: one small panel per numeric column against epoch (losses, lr, metrics)."""
    rows = ResultsCSV(csv_path).read()
    if not rows:
        return None
    # matplotlib takes about 0.5 s to import: only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = numeric_series(rows)
    ncol = min(5, max(len(series), 1))
    nrow = max((len(series) + ncol - 1) // ncol, 1)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3 * ncol, 2.5 * nrow), squeeze=False)
    for ax, (k, pts) in zip(axes.ravel(), series.items()):
        ax.plot([e for e, _ in pts], [v for _, v in pts], marker=".", lw=1.5)
        ax.set_title(k, fontsize=9)
    for ax in axes.ravel()[len(series) :]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out) if out else Path(csv_path).with_suffix(".png")
    try:
        return atomic_savefig(fig, out, dpi=120)
    finally:
        plt.close(fig)


def numeric_series(rows: list[dict[str, str]]) -> dict[str, list[tuple[float, float]]]:
    """Column -> [(epoch, value)] for the numeric columns; blank cells (epochs without validation) skipped."""
    series = {}
    for k in rows[0] if rows else []:
        pts = [(float(r["epoch"]), _float(r[k])) for r in rows if k not in ("epoch", "time") and r[k] != ""]
        if pts and all(v is not None for _, v in pts):
            series[k] = pts
    return series


def _float(v: str) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
