"""Polygon areas (shoelace), for numpy or torch polygons ``[N, 2k]`` (``x1 y1 ... xk yk``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["poly_area", "quad_area"]


def _numpy(polys: Any) -> tuple[np.ndarray, bool]:
    if isinstance(polys, torch.Tensor):
        return polys.detach().cpu().numpy(), True
    return np.asarray(polys), False


def _shoelace(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 0.5 * np.abs((x * np.roll(y, -1, -1) - np.roll(x, -1, -1) * y).sum(-1))


def poly_area(polys: Any) -> Any:
    """Absolute shoelace area of each polygon [N, 2k], in float64 (torch in, torch out)."""
    p, was_torch = _numpy(polys)
    p = p[None] if p.ndim == 1 else p
    area = _shoelace(p[:, 0::2].astype(np.float64), p[:, 1::2].astype(np.float64))
    return torch.from_numpy(area) if was_torch else area


def quad_area(polys: Any) -> Any:
    """Area of each quad [N, 8], the largest over the three vertex orders (a bow-tie quad counts fully);
    NaN where a coordinate is not finite. float64 (torch in, torch out)."""
    p, was_torch = _numpy(polys)
    p = np.asarray(p, dtype=np.float64).reshape(-1, 4, 2)
    best = np.zeros(len(p))
    for order in ((0, 1, 2, 3), (0, 1, 3, 2), (0, 2, 1, 3)):
        q = p[:, order]
        best = np.fmax(best, _shoelace(q[..., 0], q[..., 1]))
    area = np.where(np.isfinite(p).all((1, 2)), best, np.nan)
    return torch.from_numpy(area) if was_torch else area
