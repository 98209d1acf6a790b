"""Circular smooth labels (CSL): the angle as a classification over ``bins`` orientation bins.

Bin layout: bin ``i`` represents the angle ``-pi/2 + i * pi / bins``, so with 180 bins bin 0 is
-90 degrees and bin 179 is +89 degrees. ``theta`` is mapped to bin
``round((theta + pi/2) / (pi / bins)) mod bins``; the mod wraps because theta and theta + pi are the
same orientation (theta just below pi/2 rounds to bin ``bins`` == bin 0 == -pi/2).
The label of a box is a window over the circular bin distance ``d = min(|i - c|, bins - |i - c|)``
from its centre bin ``c``:

- ``gaussian``: ``exp(-d^2 / (2 r^2))``
- ``triangle``: ``max(0, 1 - d / (r + 1))`` (so the bins at d <= r are all non-zero)
- ``rect``: ``1`` where ``d <= r``, else 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from obbslim.ops.boxes import _as_tensor, _back

__all__ = ["csl_encode", "csl_decode", "csl_refine", "csl_bin", "csl_bin_angle"]


def csl_bin(theta: Any, bins: int = 180) -> Any:
    """Bin index (int64) of each angle: round((theta + pi/2) / (pi/bins)) mod bins."""
    t, was_np = _as_tensor(theta)
    i = torch.remainder(torch.round((t + math.pi / 2) / (math.pi / bins)).long(), bins)
    return _back(i, was_np)


def csl_bin_angle(index: Any, bins: int = 180) -> Any:
    """Angle represented by each bin index: -pi/2 + i * pi / bins."""
    i, was_np = _as_tensor(index)
    dt = i.dtype if i.dtype.is_floating_point else torch.get_default_dtype()
    return _back(-math.pi / 2 + i.to(dt) * (math.pi / bins), was_np)


def csl_encode(theta: Any, bins: int = 180, radius: float = 2.0, window: str = "gaussian") -> Any:
    """Circular smooth label of each angle: theta [N] -> [N, bins] in [0, 1] (peak 1 at its bin)."""
    t, was_np = _as_tensor(theta)
    t = t.reshape(-1)
    dt = t.dtype if t.dtype.is_floating_point else torch.get_default_dtype()
    c = csl_bin(t, bins)
    i = torch.arange(bins, device=t.device)
    d = (i[None, :] - c[:, None]).abs()
    d = torch.minimum(d, bins - d).to(dt)
    if window == "gaussian":
        y = torch.exp(-(d**2) / (2 * radius**2))
    elif window == "triangle":
        y = (1 - d / (radius + 1)).clamp_min(0)
    elif window == "rect":
        y = (d <= radius).to(dt)
    else:
        raise ValueError(f"unknown CSL window {window!r}; expected gaussian, triangle or rect")
    return _back(y, was_np)


def csl_refine(x: Any, radius: int = 2) -> Any:
    """Sub-bin angle: circular weighted mean of the bin angles within +-radius bins of the argmax.

    Weights are sigmoid(x) (x = logits); the mean is taken on the doubled angle (period pi) so the
    window may straddle the -pi/2 == pi/2 wrap. Returns theta in [-pi/2, pi/2).
    """
    t, was_np = _as_tensor(x)
    bins = t.shape[-1]
    peak = t.argmax(-1, keepdim=True)
    off = torch.arange(-int(radius), int(radius) + 1, device=t.device)
    idx = torch.remainder(peak + off, bins)
    w = torch.sigmoid(torch.gather(t, -1, idx))
    ang = 2 * (-math.pi / 2 + idx.to(t.dtype) * (math.pi / bins))
    s = (w * torch.sin(ang)).sum(-1)
    c = (w * torch.cos(ang)).sum(-1)
    theta = torch.atan2(s, c) / 2
    theta = torch.where(theta >= math.pi / 2, theta - math.pi, theta)
    return _back(theta, was_np)


def csl_decode(x: Any, refine: bool = False, radius: int = 2) -> Any:
    """Angle of CSL logits or probabilities [..., bins] -> theta [...] by argmax (the bin angle).

    ``refine=True`` calls :func:`csl_refine` (expects logits, since it applies a sigmoid).
    """
    if refine:
        return csl_refine(x, radius)
    t, was_np = _as_tensor(x)
    bins = t.shape[-1]
    dt = t.dtype if t.dtype.is_floating_point else torch.get_default_dtype()
    theta = -math.pi / 2 + t.argmax(-1).to(dt) * (math.pi / bins)
    return _back(theta, was_np)
