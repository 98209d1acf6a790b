"""Rotated-box conversions and THE box convention (written once, here).

An rbox is ``(cx, cy, w, h, theta)`` in pixels and radians with the long side ``w >= h`` and
``theta`` in ``[-pi/2, pi/2)``, measured from +x towards +y. Image y points down, so a positive
theta turns the long side clockwise on screen. A quad is ``x1 y1 x2 y2 x3 y3 x4 y4``.

Every function takes numpy or torch and returns the same type; torch keeps device and dtype.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["poly2rbox", "rbox2poly", "norm_rbox", "flip_rboxes"]

HALF_PI = math.pi / 2


def _as_tensor(x: Any) -> tuple[torch.Tensor, bool]:
    """Return (tensor, was_numpy); numpy arrays share memory where possible, other inputs are copied."""
    if isinstance(x, torch.Tensor):
        return x, False
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return torch.from_numpy(np.ascontiguousarray(arr)), True


def _back(t: torch.Tensor, was_numpy: bool) -> Any:
    return t.detach().cpu().numpy() if was_numpy else t


def _norm(r: torch.Tensor) -> torch.Tensor:
    """Torch core of norm_rbox (any leading shape, last dim 5)."""
    cx, cy, w, h, t = r.unbind(-1)
    swap = w < h
    w, h = torch.where(swap, h, w), torch.where(swap, w, h)
    t = torch.where(swap, t + HALF_PI, t)
    t = torch.remainder(t + HALF_PI, math.pi) - HALF_PI
    # remainder can round to exactly pi (tiny negative input) or leave pi/2 - tiny: fold both ends.
    t = torch.where(t >= HALF_PI, t - math.pi, t)
    t = torch.where(t < -HALF_PI, t + math.pi, t)
    return torch.stack((cx, cy, w, h, t), -1)


def norm_rbox(rboxes: Any) -> Any:
    """Normalise any ``(cx, cy, w, h, theta)`` (w < h allowed, any theta) to the convention.

    The same rectangle is described by (w, h, t), (h, w, t + pi/2) and (w, h, t + k*pi); this picks the
    single form with ``w >= h`` and ``theta`` in ``[-pi/2, pi/2)`` (theta == pi/2 maps to -pi/2).
    """
    r, was_np = _as_tensor(rboxes)
    return _back(_norm(r), was_np)


def flip_rboxes(rboxes: Any, width: float | None = None, height: float | None = None) -> Any:
    """Mirror rboxes with their image: ``width`` mirrors left-right (``x -> width - x``), ``height``
    up-down (``y -> height - y``), both a half turn. One mirror negates theta (the long side's
    direction (cos t, sin t) becomes (-cos t, sin t) or (cos t, -sin t)), two keep it; the result is
    normalised (``-(-pi/2)`` is pi/2, folded back to -pi/2). This is the pixel flip exactly: column
    ``i`` of an image ``w`` wide goes to ``w - 1 - i``, its strip ``[i, i + 1)`` to ``[w - 1 - i, w - i)``
    (the mapping ``augment.flip_lr`` / ``flip_ud`` apply to polygons).
    """
    r, was_np = _as_tensor(rboxes)
    r = r.clone()
    if width is not None:
        r[..., 0] = width - r[..., 0]
    if height is not None:
        r[..., 1] = height - r[..., 1]
    if (width is None) != (height is None):
        r[..., 4] = -r[..., 4]
    return _back(_norm(r), was_np)


def _rbox2poly(r: torch.Tensor) -> torch.Tensor:
    """Torch core: [..., 5] -> corners [..., 4, 2]."""
    cx, cy, w, h, t = r.unbind(-1)
    c, s = torch.cos(t), torch.sin(t)
    ux, uy = c * w / 2, s * w / 2  # half long side
    vx, vy = -s * h / 2, c * h / 2  # half short side
    xs = torch.stack((cx - ux - vx, cx + ux - vx, cx + ux + vx, cx - ux + vx), -1)
    ys = torch.stack((cy - uy - vy, cy + uy - vy, cy + uy + vy, cy - uy + vy), -1)
    return torch.stack((xs, ys), -1)


def rbox2poly(rboxes: Any) -> Any:
    """Corners of rboxes, [N,5] -> [N,8].

    Order for theta = 0: top-left, top-right, bottom-right, bottom-left (clockwise on screen, i.e. a
    positive shoelace area in x-y). Corner 1 -> 2 runs along +theta on the long side.
    """
    r, was_np = _as_tensor(rboxes)
    p = _rbox2poly(r)
    return _back(p.reshape(*p.shape[:-2], 8), was_np)


# the 6 point pairs whose directions contain every hull edge of 4 points
_PAIRS_I = (0, 0, 0, 1, 1, 2)
_PAIRS_J = (1, 2, 3, 2, 3, 3)


def _poly2rbox(p: torch.Tensor) -> torch.Tensor:
    """Torch core: quads [..., 8] -> rboxes [..., 5] (minimum-area enclosing rectangle)."""
    pts = p.reshape(*p.shape[:-1], 4, 2)
    # work relative to the first corner: better float32 precision for large image coordinates
    origin = pts[..., :1, :]
    q = pts - origin
    d = q[..., _PAIRS_J, :] - q[..., _PAIRS_I, :]  # [..., 6, 2]
    length = torch.linalg.vector_norm(d, dim=-1)
    ok = length > 0
    u = d / torch.where(ok, length, torch.ones_like(length)).unsqueeze(-1)
    u = torch.where(
        ok.unsqueeze(-1), u, torch.zeros_like(u) + torch.tensor([1.0, 0.0], dtype=u.dtype, device=u.device)
    )
    v = torch.stack((-u[..., 1], u[..., 0]), -1)
    pu = torch.einsum("...kc,...pc->...kp", u, q)  # [..., 6 dirs, 4 pts]
    pv = torch.einsum("...kc,...pc->...kp", v, q)
    umin, umax = pu.amin(-1), pu.amax(-1)
    vmin, vmax = pv.amin(-1), pv.amax(-1)
    area = (umax - umin) * (vmax - vmin)
    best = area.argmin(-1, keepdim=True)  # [..., 1]

    def pick(x: torch.Tensor) -> torch.Tensor:
        return torch.gather(x, -1, best).squeeze(-1)

    ux, uy = pick(u[..., 0]), pick(u[..., 1])
    a0, a1, b0, b1 = pick(umin), pick(umax), pick(vmin), pick(vmax)
    mu, mv = (a0 + a1) / 2, (b0 + b1) / 2
    cx = origin[..., 0, 0] + mu * ux - mv * uy
    cy = origin[..., 0, 1] + mu * uy + mv * ux
    theta = torch.atan2(uy, ux)
    return _norm(torch.stack((cx, cy, a1 - a0, b1 - b0, theta), -1))


def poly2rbox(polys: Any) -> Any:
    """Minimum-area rectangle of each quad, [N,8] -> [N,5] in the convention.

    Works for any 4 points (non-rectangular, non-convex or self-intersecting DOTA quads): the min-area
    rectangle of a point set has a side along a hull edge, and the 6 pairwise directions of 4 points
    contain every hull edge, so the smallest of those 6 candidate rectangles is the answer.
    """
    p, was_np = _as_tensor(polys)
    return _back(_poly2rbox(p), was_np)
