"""Per-image results of `obbslim detect --save-dota DIR`, kept while the run goes, so that an interrupted
run resumes where it stopped and the Task1 files are written once, complete.

Each finished image gets ``DIR/.detect/<id>.txt`` (its source path, then one ``class score x1 ... y4``
line per detection, floats written exactly), atomically, as soon as it is done. ``settings.json``
beside them fingerprints what decides the results (the weights file, sizes, thresholds): rerunning
the same command reads the finished images back instead of detecting them again; a run with other
settings starts over. At the end the Task1 files are built from the parts (so a resumed run writes
the same bytes as an uninterrupted one) and the parts folder is removed: DIR then holds the
submission only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from obbslim.data.classes import class_key
from obbslim.utils.io import atomic_write_text

PARTS_DIR = ".detect"


def _fmt(x: float) -> str:
    return repr(float(x))  # shortest text that reads back to the same float64


class Task1Parts:
    """The parts folder of one ``--save-dota`` output folder."""

    def __init__(self, task1_dir: str | Path, settings: dict[str, Any] | None):
        self.dir = Path(task1_dir) / PARTS_DIR
        self.settings = settings  # None: nothing identifies the model, never resume
        self.note: str | None = None

    def open(self) -> int:
        """Prepare the folder; returns how many finished images an earlier run left (0: a fresh start)."""
        stored = self.dir / "settings.json"
        old = None
        if stored.is_file():
            try:
                old = json.loads(stored.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = None
        n_old = self.count()
        if self.dir.is_dir() and (self.settings is None or old != self.settings):
            if n_old:
                self.note = (f"{self.dir}: {n_old} results of a run with other settings (weights, sizes or "
                             "thresholds) discarded; starting over")  # fmt: skip
            shutil.rmtree(self.dir)
            n_old = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stored, json.dumps(self.settings, indent=1, sort_keys=True) + "\n")
        return n_old

    def path(self, image_id: str) -> Path:
        return self.dir / f"{image_id}.txt"

    def load(self, image_id: str, source: str) -> list[tuple[str, float, list[float]]] | None:
        """The stored rows ``(class, score, poly8)`` of an image, or None when it is not done (or the part
        belongs to another file of that id)."""
        p = self.path(image_id)
        if self.settings is None or not p.is_file():
            return None
        lines = p.read_text(encoding="utf-8").splitlines()
        if not lines or lines[0] != f"# {source}":
            return None
        rows = []
        try:
            for line in lines[1:]:
                f = line.split()
                if len(f) != 10:
                    return None
                rows.append((f[0], float(f[1]), [float(v) for v in f[2:]]))
        except ValueError:  # a damaged part: detect that image again
            return None
        return rows

    def save(self, image_id: str, source: str, rows: Iterable[tuple[str, float, Sequence[float]]]) -> None:
        text = [f"# {source}\n"]
        text += [f"{c} {_fmt(s)} " + " ".join(map(_fmt, p)) + "\n" for c, s, p in rows]
        atomic_write_text(self.path(image_id), "".join(text))

    def count(self) -> int:
        """Finished images kept."""
        return len(list(self.dir.glob("*.txt"))) if self.dir.is_dir() else 0

    def close(self) -> None:
        """Remove the parts (the Task1 files are complete, or nothing was finished)."""
        shutil.rmtree(self.dir, ignore_errors=True)


def detection_rows(d: Any, names: Sequence[str]) -> list[tuple[str, float, list[float]]]:
    """``(class, score, poly8)`` of each detection of a ``Detections`` (class as Task1 spells it)."""
    polys = np.asarray(d.polys, np.float64).reshape(-1, 8).tolist()
    out = []
    for p, s, c in zip(polys, d.scores.tolist(), d.cls.tolist()):
        out.append((class_key(names[c]) if 0 <= c < len(names) else str(c), float(s), p))
    return out
