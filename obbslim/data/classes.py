"""DOTA class lists and class-name normalisation.

DOTA labelTxt files spell names with hyphens ("small-vehicle") while Ultralytics YAMLs use spaces
("small vehicle"); both must map to the same class id.
"""

from __future__ import annotations

import re
from typing import Iterable

DOTA_V1_0: tuple[str, ...] = (
    "plane",
    "ship",
    "storage-tank",
    "baseball-diamond",
    "tennis-court",
    "basketball-court",
    "ground-track-field",
    "harbor",
    "bridge",
    "large-vehicle",
    "small-vehicle",
    "helicopter",
    "roundabout",
    "soccer-ball-field",
    "swimming-pool",
)
DOTA_V1_5: tuple[str, ...] = DOTA_V1_0 + ("container-crane",)
DOTA_V2_0: tuple[str, ...] = DOTA_V1_5 + ("airport", "helipad")

DOTA_CLASSES: dict[str, tuple[str, ...]] = {
    "dota1.0": DOTA_V1_0,
    "dota1.5": DOTA_V1_5,
    "dota2.0": DOTA_V2_0,
}

_SEP = re.compile(r"[\s_\-]+")


def normalize_name(name: str) -> str:
    """Lower-case, trimmed, with runs of hyphens, underscores and spaces turned into one hyphen."""
    return _SEP.sub("-", str(name).strip().lower()).strip("-")


def class_key(name: str) -> str:
    """A class name as DOTA files spell it (Task1 file names, detection lines): trimmed, spaces become
    hyphens ("small vehicle" -> "small-vehicle"); case is kept."""
    return name.strip().replace(" ", "-")


def class_index(names: Iterable[str]) -> dict[str, int]:
    """Map normalised class name -> class id (position in `names`). Duplicate names are an error."""
    index: dict[str, int] = {}
    for i, n in enumerate(names):
        key = normalize_name(n)
        if key in index:
            raise ValueError(f"duplicate class name {n!r} (same as class {index[key]} after normalisation)")
        index[key] = i
    return index


def dota_names(version: str) -> list[str]:
    """The shipped class list for 'dota1.0', 'dota1.5' or 'dota2.0' (also 'dotav1', 'DOTA-v1.5', ...)."""
    key = version.strip().lower().replace("-", "").replace("_", "").replace("v", "")
    if key in ("dota1", "dota10"):
        key = "dota1.0"
    elif key in ("dota15",):
        key = "dota1.5"
    elif key in ("dota2", "dota20"):
        key = "dota2.0"
    if key not in DOTA_CLASSES:
        raise KeyError(f"unknown class list {version!r}; expected one of {sorted(DOTA_CLASSES)}")
    return list(DOTA_CLASSES[key])
