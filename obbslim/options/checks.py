"""Value checks of options, declared per field (``option(..., check=at_least(1))``).

A check is a predicate with the words of its requirement; :meth:`Options.validate` runs them when a
config is built (CLI and Python alike), so ``--conf 2`` and ``Detector(conf=2)`` fail with the same
line: ``--conf must be in [0, 1], got 2``. ``None`` (an optional option left unset) is never checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Check:
    """``ok(value)`` is True for a valid value; ``requirement`` completes "--flag must be ..."."""

    requirement: str
    ok: Callable[[Any], bool]
    integer: bool = False  # the value must be a whole number

    def problem(self, value: Any) -> str | None:
        """None when ``value`` passes, else what is wrong with it."""
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            return next((p for p in map(self.problem, value) if p), None)
        kind = "an integer" if self.integer else "a number"
        if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
            return f"must be {kind}, got {value!r}"
        try:
            number = float(value)
        except (TypeError, ValueError):
            return f"must be {kind}, got {value!r}"
        if math.isnan(number):
            return f"must be {self.requirement}, got {value}"
        if self.integer and number != int(number):
            return f"must be an integer, got {value}"
        return None if self.ok(number) else f"must be {self.requirement}, got {_show(value)}"


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def at_least(low: float, integer: bool = True) -> Check:
    """``value >= low`` (integers unless ``integer=False``)."""
    return Check(f">= {_show(low)}", lambda v: v >= low, integer)


def positive(integer: bool = False) -> Check:
    """``value > 0``."""
    return Check("> 0", lambda v: v > 0 and math.isfinite(v), integer)


def non_negative(integer: bool = False) -> Check:
    """``value >= 0`` and finite."""
    return Check(">= 0", lambda v: v >= 0 and math.isfinite(v), integer)


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    """``low <= value <= high`` (an open end excludes its bound)."""
    text = f"{'(' if low_open else '['}{_show(low)}, {_show(high)}{')' if high_open else ']'}"
    return Check(
        f"in {text}",
        lambda v: (v > low if low_open else v >= low) and (v < high if high_open else v <= high),
    )


AUTO = "auto"


@dataclass(frozen=True)
class AutoOr(Check):
    """The word ``auto`` (a value the command works out) or a number that passes the check."""

    def problem(self, value: Any) -> str | None:
        if value == AUTO:
            return None
        p = super().problem(value)
        return None if p is None else f"must be {AUTO!r} or {self.requirement}, got {value!r}"


def auto_or(check: Check) -> AutoOr:
    """``auto`` or a value passing ``check``."""
    return AutoOr(check.requirement, check.ok, check.integer)


def number_or_auto(text: str) -> float | str:
    """The argparse type of an :func:`auto_or` option: ``auto`` stays a word, anything else a float."""
    return AUTO if str(text).strip().lower() == AUTO else float(text)


FRACTION = between(0.0, 1.0)  # conf, iou, ratios
IMGSZ = Check(">= 32 (the largest stride of the models)", lambda v: v >= 32, integer=True)
COUNT = at_least(1)  # epochs, batch, images, runs
WORKERS = at_least(0)
THREADS = at_least(1)
