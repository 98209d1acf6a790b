"""Greedy rotated NMS with exact IoU, in memory linear in the number of boxes.

The result is the textbook loop's: take the best remaining box, drop every box whose IoU with it is
> iou_thr; ties in score keep input order (per group for batched NMS). It is computed on all boxes
at once, in score-ordered blocks (_BLOCK0 boxes first, each block _GROW times the previous one):

1. every box of the block is tested against the kept boxes (all better) that could overlap it, and
   those with IoU > iou_thr go at once: in a dense scene nearly all low-score boxes end here, after a
   few tests each against the few kept boxes around them;
2. the survivors are resolved among themselves by greedy NMS over their candidate pairs (lazily, with
   IoU only for pairs whose better box is kept, when they are many).
After a block the kept set is final up to its last box, so ``max_keep`` stops as soon as enough are
(detection keeps max_det boxes: at conf 0.001 that is a small part of the work).

Candidate pairs come from range queries on a sorted grid (_Grid): boxes are grouped in levels by
size (a power of two of the circumscribed diameter, so a few huge boxes do not widen the search of
the many small ones) and sorted by (group, level, row, x). For a query box and a level, IoU > t needs
the axis-aligned bounding boxes to overlap by at least t / (1 + t) (a_q + a_min) / (2 min(ey_q, ey_max))
along x (likewise y), which gives the rows and the x interval where a partner's centre can be. Each
pair is then tested from cheap to exact: circles and bounding-box overlap (_may_suppress), projection
bounds, the exact areas of each box cut by the other's two slabs (_slab_bounds), and the exact
intersection (_rect_inter) only for the few pairs all these bounds leave undecided.

Memory: pairs are built, filtered and tested in chunks of at most PAIR_BUDGET raw pairs (grid rows in
chunks of _ROW_BUDGET), queries never exceed a block (_BLOCK_MAX), and the pairs a block keeps for
step 2 never exceed PAIR_BUDGET (a block whose survivors would need more is cut short; the rest goes
to the next block). Peak memory is O(N) + O(PAIR_BUDGET), however much the boxes overlap: about
0.3 KB per box (float32 boxes; 0.5 KB in float64) plus a fixed part under 0.2 GB. Measured: 200,000
boxes +0.15 GB, 800,000 boxes +0.3 GB. Time is not bounded the same way: boxes that overlap without
suppressing each other (IoU <= iou_thr) are all kept, and each such pair is still tested once.

On CPU the work runs on one thread (thousands of small tensor ops: more threads only add
synchronisation, and stall on a busy machine); on CUDA tensors the same code runs on the GPU.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from obbslim.ops.boxes import _as_tensor
from obbslim.ops.iou import CHUNK_PAIRS, THIN

__all__ = ["nms_rotated", "batched_nms_rotated"]

PAIR_BUDGET = 4 * CHUNK_PAIRS  # raw candidate pairs built at once (~150 B each while filtered)
_BLOCK0 = 512  # boxes in the first block
_BLOCK_MAX = 16384  # largest block
_GROW = 4  # each block is _GROW times the previous one
_ROW_BUDGET = 1 << 18  # grid rows searched at once
_SLAB_MIN = 512  # undecided pairs worth the slab bounds before clipping
_EAGER_PAIRS = 32768  # candidate pairs below which a block tests them all at once
_MAX_ROUNDS = 48  # vectorised rounds before the remaining chains are finished by a loop
_LAZY_ROUNDS = 4  # lazy-IoU rounds before the remaining pairs are evaluated at once


class _Grid:
    """Sort keys of all boxes (in score order) for range queries.

    Boxes are grouped in levels by circumscribed diameter d: level l holds s0 2^(l-1) < d <= s0 2^l
    (level 0: d <= s0), with s0 the smallest diameter (at least 2^-14 of the extent, so that keys fit
    in int64). Within a level, boxes are sorted by row (height s0 2^l / 2) then by x (in steps of
    1/16 of that), so the boxes of a row whose centre x lies in an interval are one contiguous range.
    Key: ((group L + level) R + row) X + column, rows and columns padded by one.
    """

    def __init__(self, r: torch.Tensor, groups: torch.Tensor, geo: torch.Tensor) -> None:
        self.geo = geo
        self.g64 = geo.detach().double()  # (x, y, radius, area, ex, ey) for the range arithmetic
        x, y = self.g64[:, 0], self.g64[:, 1]
        d = torch.sqrt(r[:, 2].double() ** 2 + r[:, 3].double() ** 2)
        self.x0, self.y0 = float(x.min()), float(y.min())
        sx, sy = float(x.max()) - self.x0, float(y.max()) - self.y0
        extent = max(sx, sy, float(d.max()))
        s0 = max(float(d.min()), extent * 2.0**-14)
        self.s0 = s0 if math.isfinite(s0) and s0 > 0 else 1.0
        lv = torch.ceil(torch.log2((d / self.s0).clamp_min(1.0))).long()
        lv += (d > self.s0 * torch.exp2(lv.double())).long()  # log2 rounding, both ways
        lv -= ((lv > 0) & (d <= self.s0 * torch.exp2(lv.double() - 1))).long()
        self.level = lv
        self.L = int(lv.max()) + 1
        self.R = int(sy / (self.s0 / 2)) + 3
        self.X = int(sx / (self.s0 / 16)) + 3
        self.gbase = groups.long() * self.L
        self.base = self.gbase + lv  # key = (base R + row) X + column
        # (y0, y0, y0, x0, x0) and the last row and column, for rows and columns of stacked points
        f64 = dict(dtype=torch.float64, device=r.device)
        self.origin = torch.tensor([[self.y0]] * 3 + [[self.x0]] * 2, **f64)
        self.last = torch.tensor([[self.R - 1]] * 3 + [[self.X - 1]] * 2, **f64)
        h = self.s0 * torch.exp2(lv.double()) / 2
        row = self.rows(y, h)
        self.key = (self.base * self.R + row) * self.X + self.cols(x, h / 8)

    def rows(self, y: torch.Tensor, h: torch.Tensor | float) -> torch.Tensor:
        return (torch.floor((y - self.y0) / h) + 1).clamp(0, self.R - 1).long()

    def cols(self, x: torch.Tensor, u: torch.Tensor | float) -> torch.Tensor:
        return (torch.floor((x - self.x0) / u) + 1).clamp(0, self.X - 1).long()


class _Index:
    """A set of boxes (global indices in score order, ascending) sorted by key, with per-level bounds
    of their bounding-box half extents and areas."""

    def __init__(self, grid: _Grid, members: torch.Tensor) -> None:
        self.grid = grid
        self.members = members
        self.skey, o = torch.sort(grid.key[members], stable=True)
        self.sidx = members[o]  # members in key order (score order among equal keys)
        lv = grid.level[members]
        g = grid.g64[members]
        L, dev = grid.L, members.device
        z = torch.zeros(L, dtype=torch.float64, device=dev)
        stats = torch.stack(
            (
                z.scatter_reduce(0, lv, g[:, 4], "amax"),
                z.scatter_reduce(0, lv, g[:, 5], "amax"),
                z.scatter_reduce(0, lv, g[:, 3], "amax"),
                torch.full_like(z, math.inf).scatter_reduce(0, lv, g[:, 3], "amin"),
            )
        )
        present = torch.unique(lv)
        h = grid.s0 / 2 * torch.exp2(present.double())  # row height of each level
        # per level present: the level, and (max ex, max ey, max area, min area, row height) [5, V]
        self.levels = (present, torch.cat((stats[:, present], h[None])))

    def ranges(self, q: torch.Tensor | None, iou_thr: float) -> Iterator[tuple[torch.Tensor, ...]]:
        """Ranges (owner, start, count) of this index's boxes that boxes q might suppress or be
        suppressed by, in chunks of at most _ROW_BUDGET rows: per level of this index, the rows and
        the x interval where a partner's centre must lie for the bounding boxes to overlap enough
        (IoU > t needs an overlap of t / (1 + t) (a_q + a_min) / (2 min(ey_q, ey_max)) along x at
        least, likewise along y).

        q None: this index's own members, each unordered pair given once (from the smaller level,
        or within a level from the earlier box in key order). Queries in key order run faster.
        """
        half = q is None
        if q is None:
            q = self.sidx
        g = self.grid
        dev = q.device
        lvs, stats = self.levels
        gq = g.g64[q]  # (x, y, radius, area, ex, ey) of the queries
        a = gq[:, 3:4]
        ok = a.clamp(max=stats[2]) > (iou_thr * (1 - 1e-3)) * a.clamp(min=stats[3])  # an area ratio > t
        lq = g.level[q]
        if half:
            ok &= lq[:, None] <= lvs
        i, v = ok.nonzero().unbind(1)  # (query, level) items
        if i.numel() == 0:
            return
        x, y, _, a, ex, ey = gq[i].unbind(1)
        EX, EY, _, amin, h = stats[:, v].unbind(0)
        m = iou_thr / (1 + iou_thr) * (1 - 1e-3) * (a + amin) / 2
        rx = (ex + EX - m / torch.minimum(ey, EY)).clamp_min(0)
        ry = (ey + EY - m / torch.minimum(ex, EX)).clamp_min(0)
        # rows of the range's top and bottom and of the centre, columns of its left and right
        pts = torch.stack((y - ry, y + ry, y, x - rx, x + rx))
        cells = (pts - g.origin).div_(torch.stack((h, h, h, h / 8, h / 8))).floor_().add_(1)
        r0, r1, rc, c0, c1 = torch.minimum(cells.clamp_(min=0), g.last).long().unbind(0)
        kb = g.gbase[q[i]] + lvs[v]  # (group, level) part of the keys
        first = torch.zeros_like(i)
        if half:
            own = lq[i] == lvs[v]
            r0 = torch.where(own, rc, r0)  # rows above: found from the box above
            first = torch.where(own, i + 1, 0)  # in its own row, the boxes after it (q is sidx)
        n = r1 - r0 + 1
        csum = n.cumsum(0)
        items = torch.stack((kb * g.R + r0, c0, c1, first, csum - n, i))
        s = 0
        while s < i.numel():  # items in chunks of about _ROW_BUDGET rows
            base = int(csum[s - 1]) if s else 0
            e = int(torch.searchsorted(csum, torch.tensor(base + _ROW_BUDGET, device=dev), right=True))
            e = min(max(e, s + 1), i.numel())
            tot = int(csum[e - 1]) - base
            rep = torch.arange(s, e, device=dev).repeat_interleave(n[s:e], output_size=tot)
            kr, c0_, c1_, first_, start, qi = items[:, rep].unbind(0)
            dr = torch.arange(base, base + tot, device=dev) - start  # row offset in the item
            key = (kr + dr) * g.X
            lo = torch.searchsorted(self.skey, key + c0_)
            hi = torch.searchsorted(self.skey, key + c1_, right=True)
            if half:
                lo = torch.where(dr == 0, torch.maximum(lo, first_), lo)
            yield q[qi], lo, hi - lo
            s = e

    def pairs(self, ranges: Iterable[tuple[torch.Tensor, ...]]) -> Iterator[tuple[torch.Tensor, ...]]:
        """The (owner, member) pairs of ranges (owner, start, count), in chunks of about PAIR_BUDGET."""
        for owner, start, count in ranges:
            keep = count > 0
            owner, start, count = owner[keep], start[keep], count[keep]
            if owner.numel() == 0:
                continue
            if int(count.max()) > PAIR_BUDGET:  # split ranges longer than a chunk
                parts = (count + PAIR_BUDGET - 1) // PAIR_BUDGET
                r = torch.repeat_interleave(parts)
                k = torch.arange(r.numel(), device=r.device) - (parts.cumsum(0) - parts)[r]
                owner, start = owner[r], start[r] + k * PAIR_BUDGET
                count = (count[r] - k * PAIR_BUDGET).clamp_max(PAIR_BUDGET)
            csum = count.cumsum(0)
            dev = owner.device
            s = 0
            while s < owner.numel():
                base = int(csum[s - 1]) if s else 0
                e = int(torch.searchsorted(csum, torch.tensor(base + PAIR_BUDGET, device=dev), right=True))
                e = min(max(e, s + 1), owner.numel())
                c = count[s:e]
                n = int(csum[e - 1]) - base
                i = owner[s:e].repeat_interleave(c, output_size=n)
                off = (start[s:e] - (csum[s:e] - c - base)).repeat_interleave(c, output_size=n)
                yield i, self.sidx[torch.arange(n, device=dev) + off]
                s = e


def _filter_geo(r: torch.Tensor) -> torch.Tensor:
    """Per box (x, y, circumscribed radius, area, half width and half height of the axis-aligned
    bounding box, widened by a few ulps of the coordinates) [N,6], for _may_suppress."""
    w, h = r[:, 2].abs(), r[:, 3].abs()
    c, s = torch.cos(r[:, 4]).abs(), torch.sin(r[:, 4]).abs()
    slack = 64 * torch.finfo(r.dtype).eps * (r[:, :2].abs().amax() + w.amax() + 1)
    ex = 0.5 * (w * c + h * s) + slack
    ey = 0.5 * (w * s + h * c) + slack
    return torch.stack((r[:, 0], r[:, 1], 0.5 * torch.sqrt(w * w + h * h) + slack, w * h, ex, ey), 1)


def _may_suppress(geo: torch.Tensor, i: torch.Tensor, j: torch.Tensor, iou_thr: float) -> torch.Tensor:
    """Pairs that could have IoU > iou_thr (necessary conditions, with a margin for rounding):
    the circumscribed circles overlap and min(a_i, a_j, bounding-box overlap) > t / (1 + t) (a_i + a_j)."""
    xi, yi, ri, ai, exi, eyi = geo.index_select(0, i).unbind(1)
    xj, yj, rj, aj, exj, eyj = geo.index_select(0, j).unbind(1)
    dx, dy = (xi - xj).abs(), (yi - yj).abs()
    near = dx * dx + dy * dy < (ri + rj) ** 2
    ox = torch.minimum(exi + exj - dx, 2 * torch.minimum(exi, exj)).clamp_min(0)
    oy = torch.minimum(eyi + eyj - dy, 2 * torch.minimum(eyi, eyj)).clamp_min(0)
    inter = torch.minimum(ox * oy, torch.minimum(ai, aj))
    return near & (inter * ((1 + iou_thr) * (1 + 1e-4)) > iou_thr * (ai + aj))


class _Boxes:
    """Per-box quantities for IoU bounds and exact IoU of pairs (boxes in score order)."""

    def __init__(self, r: torch.Tensor) -> None:
        hw, hh = 0.5 * r[:, 2].abs(), 0.5 * r[:, 3].abs()
        area = 4 * hw * hh
        thin = area <= THIN * 4 * (hw**2 + hh**2)  # rbox_iou's degenerate rule
        # one row per box, so that a pair's quantities come from two gathers
        self.props = torch.stack(
            (r[:, 0], r[:, 1], hw, hh, torch.cos(r[:, 4]), torch.sin(r[:, 4]), area, thin), 1
        )
        self.margin = 1000 * torch.finfo(r.dtype).eps

    def suppress(self, i: torch.Tensor, j: torch.Tensor, iou_thr: float) -> torch.Tensor:
        """IoU(i, j) > iou_thr, exact; cheap bounds decide the clear cases without clipping.

        Upper bound: the overlap of the projections on each box's axes (separating-axis extents).
        Lower bound: the overlap of each box with a rectangle inscribed in the other, aligned to the first.
        Pairs these leave undecided get the slab bounds (_slab_bounds), then the exact area (_rect_inter).
        """
        xi, yi, aw, ah, ci, si, ai, ti = self.props.index_select(0, i).unbind(1)
        xj, yj, bw, bh, cj, sj, aj, tj = self.props.index_select(0, j).unbind(1)
        cs, ss = ci * cj + si * sj, ci * sj - si * cj  # cos and sin of the angle from i to j
        c, s = cs.abs(), ss.abs()
        dx, dy = xj - xi, yj - yi
        du, dv = dx * ci + dy * si, dy * ci - dx * si  # j's centre in i's frame
        eu, ev = -(dx * cj + dy * sj), dx * sj - dy * cj  # i's centre in j's frame

        # the scale of the largest copy of each box, turned by the angle, that fits in the box itself
        pw, ph = torch.stack((bw, aw)), torch.stack((bh, ah))
        tiny = torch.finfo(pw.dtype).tiny
        k = torch.minimum(pw / (c * pw + s * ph).clamp_min(tiny), ph / (s * pw + c * ph).clamp_min(tiny))
        # overlaps along i's axes of i and j's bounding box (upper) or its inscribed copy (lower), and the
        # same along j's axes: 8 interval overlaps at once
        x = torch.stack((du, dv, eu, ev)).repeat(2, 1)
        half = torch.stack((aw, ah, bw, bh)).repeat(2, 1)
        kb, ka = k.unbind(0)
        e = torch.stack(
            (bw * c + bh * s, bw * s + bh * c, aw * c + ah * s, aw * s + ah * c)
            + (kb * bw, kb * bh, ka * aw, ka * ah)
        )
        o = (torch.minimum(half, x + e) - torch.maximum(-half, x - e)).clamp_min(0)
        upper = torch.minimum(o[0] * o[1], o[2] * o[3])
        lower = torch.maximum(o[4] * o[5], o[6] * o[7])
        upper = torch.minimum(upper, torch.minimum(ai, aj))
        iou_hi = upper / (ai + aj - upper).clamp_min(torch.finfo(ai.dtype).tiny)
        iou_lo = lower / (ai + aj - lower).clamp_min(torch.finfo(ai.dtype).tiny)
        never = (iou_hi < iou_thr - self.margin) | (ti + tj > 0)
        sure = (iou_lo > iou_thr + self.margin) & ~never
        out = sure.clone()
        k = (~(sure | never)).nonzero().squeeze(1)
        if k.numel():
            # in float64: these pairs are few, and float32 rounding would decide those near iou_thr
            q = torch.stack((du, dv, cs, ss, aw, ah, bw, bh, ai, aj), 1).index_select(0, k).double()
        if k.numel() >= max(_SLAB_MIN, 1):  # (fewer pairs: clipping them all costs less than one more pass)
            ak, bk = q[:, 8], q[:, 9]
            lo, hi = _slab_bounds(*q.unbind(1)[:8])
            m = 1e-9 * (ak + bk)  # rounding of the float64 bounds
            sure = lo - m > iou_thr * (ak + bk - lo + m)
            rest = ~sure & (hi + m > iou_thr * (ak + bk - hi - m))
            out[k[sure]] = True
            k, q = k[rest], q[rest]
        if k.numel():
            inter = torch.cat([_rect_inter(*part.unbind(1)[:8]) for part in q.split(CHUNK_PAIRS)])
            out[k] = inter > iou_thr * (q[:, 8] + q[:, 9] - inter)
        return out


def _slab_area(
    p: torch.Tensor, q: torch.Tensor, nu: torch.Tensor, nv: torch.Tensor, c: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Area of the rectangle [-p, p] x [-q, q] between the lines n.x = c - t and n.x = c + t, n = (nu, nv)
    a unit vector: the difference of its cumulative area along n, a piecewise quadratic (the projected
    width is a trapezoid with ramps of width 2 min(a, b), a = p |nu|, b = q |nv|)."""
    a0, b0 = p * nu.abs(), q * nv.abs()
    a, b = torch.maximum(a0, b0), torch.minimum(a0, b0)
    tiny = torch.finfo(p.dtype).tiny
    h, m, b2 = a + b, a - b, (2 * b).clamp_min(tiny)

    def cum(z: torch.Tensor) -> torch.Tensor:
        w1 = torch.minimum(z, -m).clamp_min(-h) + h  # in the rising ramp
        w2 = z.clamp(-m, m) + m  # on the plateau
        w3 = torch.maximum(z, m).clamp_max(h) - m  # in the falling ramp
        return w1 * w1 / b2 + 2 * w2 + 2 * w3 - w3 * w3 / b2

    return (p * q / a.clamp_min(tiny)) * (cum(c + t) - cum(c - t))


def _slab_bounds(
    du: torch.Tensor,
    dv: torch.Tensor,
    c: torch.Tensor,
    s: torch.Tensor,
    aw: torch.Tensor,
    ah: torch.Tensor,
    bw: torch.Tensor,
    bh: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of the intersection area of A = [-aw, aw] x [-ah, ah] and B (centre (du, dv), half sizes
    (bw, bh), long axis at (c, s)), tighter than projections when the boxes are turned.

    B is the intersection of its two slabs S1, S2 (between the lines of its long sides, of its short
    sides), so A & B is at most A & S1 and A & S2, and at least |A & S1| + |A & S2| - |A|; likewise with
    the roles swapped. These are exact areas of a rectangle cut by two parallel lines (_slab_area).
    """
    eu, ev = -(du * c + dv * s), du * s - dv * c  # A's centre in B's frame
    ab = torch.stack(
        (
            torch.stack((aw, ah, -s, c, dv * c - du * s, bh)),  # A cut by B's long sides
            torch.stack((aw, ah, c, s, du * c + dv * s, bw)),  # A cut by B's short sides
            torch.stack((bw, bh, s, c, eu * s + ev * c, ah)),  # B cut by A's long sides
            torch.stack((bw, bh, c, -s, eu * c - ev * s, aw)),  # B cut by A's short sides
        ),
        1,
    )  # [6, 4, P]: one _slab_area call for the four cuts
    a1, a2, b1, b2 = _slab_area(*ab).unbind(0)
    upper = torch.minimum(torch.minimum(a1, a2), torch.minimum(b1, b2))
    lower = torch.maximum(a1 + a2 - 4 * aw * ah, b1 + b2 - 4 * bw * bh).clamp_min(0)
    return lower, upper


def _rect_inter(
    du: torch.Tensor,
    dv: torch.Tensor,
    c: torch.Tensor,
    s: torch.Tensor,
    aw: torch.Tensor,
    ah: torch.Tensor,
    bw: torch.Tensor,
    bh: torch.Tensor,
) -> torch.Tensor:
    """Exact intersection area of rectangle pairs, in the frame of the first: A = [-aw, aw] x [-ah, ah]
    and B centred at (du, dv) with half sizes (bw, bh), its long axis at (c, s) = (cos, sin).

    The intersection polygon's vertices are the ends of B's edges clipped to A (Liang-Barsky) and A's
    corners inside B; they are put in order by a pseudo-angle around their mean. This takes far fewer
    tensor ops than the general quad clipping of obbslim.ops.iou, and NMS calls it once a round.
    A is widened by a few ulps to decide which edges touch it, so that identical boxes and shared edges
    lose nothing to rounding; the clipped ends are then put back onto A itself.
    """
    dt, dev = du.dtype, du.device
    sg = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]], dtype=dt, device=dev)
    tol = (64 * torch.finfo(dt).eps * (aw + ah + bw + bh))[:, None]
    half = torch.stack((aw, ah), -1)[:, None]  # [P,1,2]
    cen = torch.stack((du, dv), -1)[:, None]
    u = torch.stack((c, s), -1)[:, None]
    v = torch.stack((-s, c), -1)[:, None]
    p = cen + sg[:, :1] * bw[:, None, None] * u + sg[:, 1:] * bh[:, None, None] * v  # B's corners [P,4,2]
    d = p.roll(-1, 1) - p  # B's edges p -> p + d
    # Liang-Barsky: the parameter range of each edge inside the widened A, per axis, then intersected
    hi = half + tol[..., None]
    flat = d.abs() <= torch.finfo(dt).tiny  # an edge parallel to that axis: all in or all out
    dd = torch.where(flat, torch.ones_like(d), d)
    t_a, t_b = (-hi - p) / dd, (hi - p) / dd
    out = torch.where(p.abs() <= hi, float("-inf"), float("inf"))
    t0 = torch.where(flat, out, torch.minimum(t_a, t_b)).amax(-1).clamp_min(0)
    t1 = torch.where(flat, -out, torch.maximum(t_a, t_b)).amin(-1).clamp_max(1)
    on_edge = t0 <= t1
    t0, t1 = torch.where(on_edge, t0, 0), torch.where(on_edge, t1, 0)  # (no inf * 0 below)
    # A's corners inside B (in B's frame)
    qa = sg * half
    rel = qa - cen
    a_in_b = ((rel * u).sum(-1).abs() <= bw[:, None] + tol) & ((rel * v).sum(-1).abs() <= bh[:, None] + tol)
    ends = torch.cat((p + t0[..., None] * d, p + t1[..., None] * d), 1)
    ends = torch.minimum(torch.maximum(ends, -half), half)  # back onto A, off its widened border
    pts = torch.cat((ends, qa), 1)  # [P,12,2]
    valid = torch.cat((on_edge, on_edge, a_in_b), 1)
    w = valid.to(dt)
    mid = (pts * w[..., None]).sum(1, keepdim=True) / w.sum(1)[:, None, None].clamp_min(1)
    pts = pts - mid
    x, y = pts.unbind(-1)
    ang = y / (x.abs() + y.abs()).clamp_min(torch.finfo(dt).tiny)  # a pseudo-angle: monotonic, no atan2
    ang = torch.where(valid, torch.where(x < 0, 2 - ang, ang), torch.full_like(w, 4.0))
    o = ang.argsort(1)
    pts = pts.gather(1, o[..., None].expand(-1, -1, 2))
    pts = torch.where(valid.gather(1, o)[..., None], pts, pts[:, :1])  # unused slots repeat vertex 0
    nxt = pts.roll(-1, 1)
    return (0.5 * (pts[..., 0] * nxt[..., 1] - pts[..., 1] * nxt[..., 0]).sum(1)).clamp_min(0)


def _lazy_greedy(
    boxes: _Boxes, gidx: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, iou_thr: float
) -> torch.Tensor:
    """Greedy keep mask over the boxes gidx (in score order) from their candidate pairs (src < dst,
    positions in gidx), computing IoU only where greedy NMS needs it.

    Rounds over all boxes at once: a box with no live candidate suppressor left is kept; each kept
    box is tested once against its still-undecided candidates, and those above iou_thr are removed
    (which drops their own candidate pairs untested). Each round decides at least the best undecided
    box; after _LAZY_ROUNDS the rest is tested eagerly and resolved by _resolve.
    """
    N = gidx.numel()
    dev = gidx.device
    state = torch.zeros(N, dtype=torch.int8, device=dev)  # 0 undecided, 1 kept, 2 removed
    rounds = _LAZY_ROUNDS if src.numel() > _EAGER_PAIRS else 0  # few pairs: one pass costs less
    for _ in range(rounds):
        live = (state[dst] == 0) & (state[src] != 2)
        src, dst = src[live], dst[live]
        blocked = torch.zeros(N, dtype=torch.bool, device=dev)
        blocked[dst] = True
        state[(state == 0) & ~blocked] = 1
        if src.numel() == 0:
            return state == 1
        ev = state[src] == 1
        i, j = src[ev], dst[ev]
        if i.numel():
            state[j[boxes.suppress(gidx[i], gidx[j], iou_thr)]] = 2
        src, dst = src[~ev], dst[~ev]
    # long chains of decisions: test the remaining live pairs at once, then resolve
    live = (state[dst] == 0) & (state[src] != 2)
    src, dst = src[live], dst[live]
    m = boxes.suppress(gidx[src], gidx[dst], iou_thr)
    return _resolve(N, src[m], dst[m], state)


def _greedy(r: torch.Tensor, groups: torch.Tensor, iou_thr: float, max_keep: int | None) -> torch.Tensor:
    """Indices of the kept boxes (boxes in score order), ascending; the first max_keep when given."""
    N = r.shape[0]
    dev = r.device
    geo = _filter_geo(r)
    grid = _Grid(r, groups, geo)
    boxes = _Boxes(r)
    state = torch.zeros(N, dtype=torch.int8, device=dev)  # 0 pending, 1 kept, 2 removed
    kept = torch.zeros(0, dtype=torch.long, device=dev)
    s, size = 0, _BLOCK0
    while s < N and (max_keep is None or kept.numel() < max_keep):
        e = min(N, s + size)
        blk = torch.arange(s, e, device=dev)
        blk = blk[state[s:e] == 0]  # boxes left pending by a block cut short
        # 1. the kept boxes (all better) remove what they suppress
        if kept.numel() and blk.numel():
            removed = torch.zeros(N, dtype=torch.bool, device=dev)
            # the smaller set queries an index of the larger one, in key order
            small, large = (kept, blk) if kept.numel() <= blk.numel() else (blk, kept)
            index = _Index(grid, large)
            q = small[torch.sort(grid.key[small], stable=True).indices]
            for i, j in index.pairs(index.ranges(q, iou_thr)):
                k, t = (i, j) if small is kept else (j, i)  # (kept box, block box)
                m = _may_suppress(geo, k, t, iou_thr)
                k, t = k[m], t[m]
                m = ~removed[t]
                k, t = k[m], t[m]
                if k.numel():
                    removed[t[boxes.suppress(k, t, iou_thr)]] = True
            state[blk[removed[blk]]] = 2
            blk = blk[~removed[blk]]
        # 2. greedy NMS among the survivors, over at most PAIR_BUDGET candidate pairs
        while True:
            index = _Index(grid, blk)
            ranges = list(index.ranges(None, iou_thr))
            if sum(int(c.clamp_min(0).sum()) for _, _, c in ranges) <= PAIR_BUDGET or blk.numel() <= 1:
                break
            blk = blk[: blk.numel() // 2]
            e = int(blk[-1]) + 1  # the rest waits for the next block
        srcs, dsts = [], []
        for i, j in index.pairs(ranges):
            m = _may_suppress(geo, i, j, iou_thr)
            i, j = i[m], j[m]
            srcs.append(torch.minimum(i, j))
            dsts.append(torch.maximum(i, j))
        if srcs and sum(x.numel() for x in srcs):
            src = torch.searchsorted(blk, torch.cat(srcs))
            dst = torch.searchsorted(blk, torch.cat(dsts))
            keep = _lazy_greedy(boxes, blk, src, dst, iou_thr)
        else:
            keep = torch.ones(blk.numel(), dtype=torch.bool, device=dev)
        state[blk] = torch.where(keep, 1, 2).to(torch.int8)
        kept = torch.cat((kept, blk[keep]))
        s, size = e, min(_GROW * size, _BLOCK_MAX)
        if N - s <= min(_GROW * size, _BLOCK_MAX):
            size = N - s  # one block for the rest rather than a large and a small one
    return kept if max_keep is None else kept[:max_keep]


def _resolve(N: int, src: torch.Tensor, dst: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy keep mask [N] from suppression edges src -> dst (src earlier in score order)."""
    dev = src.device
    if state is None:
        state = torch.zeros(N, dtype=torch.int8, device=dev)  # 0 undecided, 1 kept, 2 removed
    state = state.clone()
    for _ in range(_MAX_ROUNDS):
        hit = torch.zeros(N, dtype=torch.bool, device=dev)
        hit[dst[state[src] == 1]] = True
        state[hit & (state == 0)] = 2
        live = (state[dst] == 0) & (state[src] != 2)
        src, dst = src[live], dst[live]
        blocked = torch.zeros(N, dtype=torch.bool, device=dev)
        blocked[dst] = True
        state[(state == 0) & ~blocked] = 1
        if not bool((state == 0).any()):
            return state == 1
    # long suppression chains: finish sequentially over the few remaining edges
    st = state.cpu().numpy()
    s, d = src.cpu().numpy(), dst.cpu().numpy()
    o = np.argsort(s, kind="stable")
    s, d = s[o], d[o]
    ptr = np.searchsorted(s, np.arange(N + 1))
    for i in np.flatnonzero(st != 2):
        if st[i] == 0:
            st[i] = 1
        if st[i] == 1:
            nb = d[ptr[i] : ptr[i + 1]]
            st[nb[st[nb] == 0]] = 2
    return torch.from_numpy(st == 1).to(dev)


def _nms(rboxes: Any, scores: Any, groups: Any, iou_thr: float, max_keep: int | None) -> Any:
    r, was_np = _as_tensor(rboxes)
    r = r.reshape(-1, 5)
    if not r.dtype.is_floating_point:
        r = r.double()
    sc = torch.as_tensor(np.asarray(scores) if not isinstance(scores, torch.Tensor) else scores)
    sc = sc.to(r.device).reshape(-1)
    if groups is None:
        g = torch.zeros(r.shape[0], dtype=torch.long, device=r.device)
    else:
        g = torch.as_tensor(np.asarray(groups) if not isinstance(groups, torch.Tensor) else groups)
        g = g.to(r.device).reshape(-1).long()
    N = r.shape[0]
    if N == 0 or (max_keep is not None and max_keep <= 0):
        keep = torch.zeros(0, dtype=torch.long, device=r.device)
    else:
        # one thread on CPU: NMS is thousands of small ops, where more threads only add synchronisation,
        # and on a busy machine a descheduled thread stalls every op (measured 30x slower with 2)
        threads = torch.get_num_threads()
        if r.device.type == "cpu" and threads > 1:
            torch.set_num_threads(1)
        try:
            order = torch.sort(sc, descending=True, stable=True).indices
            _, g = torch.unique(g[order], return_inverse=True)  # compact group ids for the grid key
            keep = order[_greedy(r[order], g, float(iou_thr), max_keep)]
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
    return keep.cpu().numpy() if was_np else keep


def nms_rotated(rboxes: Any, scores: Any, iou_thr: float, max_keep: int | None = None) -> Any:
    """Indices (int64) of the boxes greedy rotated NMS keeps, in descending score order.

    A box is suppressed when its exact IoU with a kept, higher-scored box is > iou_thr. Ties in score
    keep input order. rboxes [N,5] (any normalisation), scores [N]; numpy in -> numpy out.
    ``max_keep``: return only the first max_keep kept boxes (the same as slicing the full result),
    stopping as soon as they are known; what detection's ``max_det`` needs.
    """
    return _nms(rboxes, scores, None, iou_thr, max_keep)


def batched_nms_rotated(
    rboxes: Any, scores: Any, classes: Any, iou_thr: float, max_keep: int | None = None
) -> Any:
    """nms_rotated applied independently per class; kept indices in descending score order."""
    return _nms(rboxes, scores, classes, iou_thr, max_keep)
