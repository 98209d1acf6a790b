"""Hyperparameters. ``hyp.default.yaml`` beside this file is their one home (every key, its default and
its meaning); :func:`load_hyp` is the one place a user's keys are merged over it.

Code reads ``hyp[key]`` and never supplies a fallback value: a key missing from a hyp dict means it
did not come through ``load_hyp``.

A user's keys are checked before any work starts: an unknown key is an error naming the nearest known
one (``lr`` -> ``lr0``), a value must have its default's type (a number for a number, a whole number
for an integer, text for text), text values must be one of their choices and a few numbers have a
range (probabilities in [0, 1], gains >= 0). A checkpoint's stored hyp is not the user's: it is
taken as it is, less the keys this version does not know (an older version's).
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
from pathlib import Path
from typing import Any, Callable

import yaml

from obbslim.errors import InputError, ObbslimError

HYP_FILE = Path(__file__).resolve().parent / "hyp.default.yaml"

# text values: the choices the code knows
CHOICES: dict[str, tuple[str, ...]] = {
    "csl_window": ("gaussian", "triangle", "rect"),
    "box_loss": ("ciou", "rciou", "probiou", "kld"),
    "optimizer": ("SGD", "Adam", "AdamW", "auto"),
    "lr_schedule": ("cosine", "linear"),
    "theta_loss": ("bce", "ce"),
    "obj_target": ("box", "rotated"),
    "theta_iou_form": ("probiou", "expected"),
    "theta_square_grad": ("all", "head"),
    "assign": ("shared", "unique", "mixed"),
}
_UNIT = ("in [0, 1]", lambda v: 0 <= v <= 1)
_NON_NEGATIVE = (">= 0", lambda v: v >= 0)
_POSITIVE = ("> 0", lambda v: v > 0)
# number ranges (keys not listed only need the right type)
RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    **{k: _UNIT for k in ("hsv_h", "hsv_s", "hsv_v", "flipud", "fliplr", "flipdiag", "mosaic", "mixup",
                          "label_smoothing", "momentum", "warmup_momentum", "ema_decay", "translate",
                          "lrf", "csl_square")},  # fmt: skip
    **{k: _NON_NEGATIVE for k in ("weight_decay", "warmup_epochs", "warmup_bias_lr", "box", "obj", "cls",
                                  "theta", "theta_iou", "theta_square", "box_size", "degrees", "scale",
                                  "shear", "min_size", "clip_grad_norm", "close_mosaic",
                                  "warmup_min_iters")},  # fmt: skip
    "theta_conf": ("in [0, 8]", lambda v: 0 <= v <= 8),  # the range a checkpoint's arch.theta_conf may hold
    **{k: _POSITIVE for k in ("lr0", "cls_pw", "obj_pw", "theta_pw", "anchor_t", "csl_radius", "ema_tau",
                              "nbs")},  # fmt: skip
}


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    return yaml.safe_load(HYP_FILE.read_text()) or {}


def _key_lines(text: str) -> dict[str, int]:
    """1-based line of each top-level key of a YAML mapping (for messages)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): k.start_mark.line + 1 for k, _ in node.value}


def read_hyp_file(path: str | Path) -> dict[str, Any]:
    """The keys of a user's hyperparameter YAML; errors name the file (and line)."""
    return _read_hyp_file(path)[0]


def _read_hyp_file(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    path = Path(path)
    if not path.is_file():
        raise ObbslimError(f"hyperparameter file not found: {path}")
    text = path.read_text()
    try:
        user = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise InputError(f"invalid YAML: {e}", path, None if mark is None else mark.line + 1) from e
    if user is None:
        return {}, {}
    if not isinstance(user, dict):
        raise InputError("hyperparameter file must be a mapping of key: value", path)
    return user, _key_lines(text)


def check_hyp(user: dict[str, Any], path: str | Path | None = None, lines: dict[str, int] | None = None
              ) -> dict[str, Any]:  # fmt: skip
    """The user's keys checked against the defaults (see the module doc); returns them with integral
    floats of integer keys made ints. Errors name the file and line when there is one."""
    defaults = _defaults()
    lines = lines or {}
    out = {}
    for key, value in user.items():
        where = {"path": path, "line": lines.get(str(key))}
        if key not in defaults:
            near = nearest(str(key), list(defaults))
            hint = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
            msg = f"unknown hyperparameter {key!r}{hint}; the known ones are in {HYP_FILE}"
            raise InputError(msg, **where)
        out[key] = _checked(str(key), value, defaults[key], where)
    return out


def nearest(word: str, known: list[str], cutoff: float = 0.5) -> list[str]:
    """The known words closest to ``word`` (difflib's ratio; all that tie for the best)."""
    scored = [(difflib.SequenceMatcher(None, word, k).ratio(), k) for k in known]
    best = max((r for r, _ in scored), default=0.0)
    return [k for r, k in scored if r == best] if best >= cutoff else []


def _checked(key: str, value: Any, default: Any, where: dict) -> Any:
    def bad(what: str) -> InputError:
        return InputError(f"{key}: {what}, got {value!r}", **where)

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("expected true or false")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("expected a number")
        if isinstance(default, int):
            if value != int(value):
                raise bad("expected a whole number")
            value = int(value)
        rule = RANGES.get(key)
        if rule and not rule[1](value):
            raise bad(f"expected a value {rule[0]}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("expected text")
        choices = CHOICES.get(key)
        if choices and value not in choices:
            raise bad(f"expected one of {', '.join(choices)}")
        return value
    return value


def load_hyp(hyp: str | Path | dict | None = None, *, stored: bool = False) -> dict[str, Any]:
    """The defaults with the user's keys over them: ``hyp`` is a YAML path, a dict, or None.

    Starting from the defaults means an older YAML (or an older checkpoint's hyp) that lacks a newer
    key still works. The keys are checked (:func:`check_hyp`) unless ``stored`` (a checkpoint's own
    hyp: taken as it is, keys this version does not know left out).
    """
    out = copy.deepcopy(_defaults())
    if isinstance(hyp, (str, Path)):
        user, lines = _read_hyp_file(hyp)
        out.update(check_hyp(user, hyp, lines))
    elif stored:
        out.update({k: v for k, v in (hyp or {}).items() if k in out})
    else:
        out.update(check_hyp(dict(hyp or {})))
    return out
