"""Hyperparameters. ``hyp.default.yaml`` beside this file is their one home (every key, its default and
its meaning); :func:`load_hyp` is the one place a user's keys are merged over it.

Code reads ``hyp[key]`` and never supplies a fallback value: a key missing from a hyp dict means it
did not come through ``load_hyp``.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

from obbslim.errors import InputError, ObbslimError

HYP_FILE = Path(__file__).resolve().parent / "hyp.default.yaml"


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    return yaml.safe_load(HYP_FILE.read_text()) or {}


def read_hyp_file(path: str | Path) -> dict[str, Any]:
    """The keys of a user's hyperparameter YAML; errors name the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise ObbslimError(f"hyperparameter file not found: {path}")
    try:
        user = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise InputError(f"invalid YAML: {e}", path, None if mark is None else mark.line + 1) from e
    if user is None:
        return {}
    if not isinstance(user, dict):
        raise InputError("hyperparameter file must be a mapping of key: value", path)
    return user


def load_hyp(hyp: str | Path | dict | None = None) -> dict[str, Any]:
    """The defaults with the user's keys over them: ``hyp`` is a YAML path, a dict, or None.

    Starting from the defaults means an older YAML (or an older checkpoint's hyp) that lacks a newer
    key still works.
    """
    out = copy.deepcopy(_defaults())
    out.update(read_hyp_file(hyp) if isinstance(hyp, (str, Path)) else (hyp or {}))
    return out
