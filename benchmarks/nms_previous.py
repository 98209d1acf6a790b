"""The rotated NMS of commit 1b0a29d (before the score-ordered blocks), kept verbatim for
benchmarks/bench_nms_scale.py to compare kept sets and times against. Not part of the package."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from obbslim.ops.boxes import _as_tensor
from obbslim.ops.iou import CHUNK_PAIRS, THIN

__all__ = ["nms_rotated", "batched_nms_rotated"]

_MAX_ROUNDS = 48  # vectorised rounds before the remaining chains are finished by a loop
_LAZY_ROUNDS = 24  # lazy-IoU rounds before the remaining pairs are evaluated at once
_GRID_ROUNDS = 32  # grid rounds before the remaining boxes go to the candidate-pair method
_GRID_MIN_PROGRESS = 0.7  # ... or as soon as a round leaves more than this fraction undecided


def _grid_keys(r: torch.Tensor, rad: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cell key (group, row, column) of each box and the row stride; columns and rows are padded by 1.

    Cells are as wide as the largest circumscribed-circle diameter (at least 1e-6 of the extent, so
    keys fit in int64), hence boxes that overlap lie in the same or adjacent cells.
    """
    x, y = r[:, 0], r[:, 1]
    extent = float(torch.maximum(x.max() - x.min(), y.max() - y.min()))
    cell = max(float(2 * rad.max()), extent * 1e-6)
    if not cell > 0:
        cell = 1.0
    gx = torch.floor((x - x.min()) / cell).long() + 1
    gy = torch.floor((y - y.min()) / cell).long() + 1
    Wg = int(gx.max()) + 2
    return (groups.long() * (int(gy.max()) + 2) + gy) * Wg + gx, Wg


def _sorted_grid(r: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per box (x, y, circumscribed radius, area) [N,4], grid key, the row stride, and the keys sorted."""
    w, h = r[:, 2].abs(), r[:, 3].abs()
    rad = 0.5 * torch.sqrt(w * w + h * h)
    key, Wg = _grid_keys(r, rad, groups)
    skey, order = torch.sort(key)
    return torch.stack((r[:, 0], r[:, 1], rad, w * h), 1), key, Wg, skey, order


def _may_suppress(geo: torch.Tensor, i: torch.Tensor, j: torch.Tensor, iou_thr: float) -> torch.Tensor:
    """Pairs that could have IoU > iou_thr: circumscribed circles overlap, min/max area > iou_thr."""
    xi, yi, ri, ai = geo.index_select(0, i).unbind(1)
    xj, yj, rj, aj = geo.index_select(0, j).unbind(1)
    near = (xi - xj) ** 2 + (yi - yj) ** 2 < (ri + rj) ** 2
    return near & (torch.minimum(ai, aj) > iou_thr * torch.maximum(ai, aj))


def _candidate_pairs(
    r: torch.Tensor, groups: torch.Tensor, iou_thr: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (src, dst), src < dst in score order, same group, that may have IoU > iou_thr.

    Boxes are sorted by grid cell (key = group, row, column); cells are as wide as the largest
    circumscribed circle's diameter, so overlapping boxes are in the same or adjacent cells. Each
    unordered pair is generated once from a half stencil: the rest of the own cell plus the cell to the
    right (one contiguous range of the sorted boxes) and the 3 cells of the next row (another one).
    """
    dev = r.device
    N = r.shape[0]
    geo, key, Wg, skey, order = _sorted_grid(r, groups)
    # per sorted position p: range A = [p + 1, end of the right cell), range B = next row's 3 cells
    a_lo = torch.arange(1, N + 1, device=dev)
    a_hi = torch.searchsorted(skey, skey + 1, right=True)
    b_lo = torch.searchsorted(skey, skey + (Wg - 1), right=False)
    b_hi = torch.searchsorted(skey, skey + (Wg + 1), right=True)
    starts = torch.stack((a_lo, b_lo), 1).reshape(-1)
    counts = (torch.stack((a_hi, b_hi), 1).reshape(-1) - starts).clamp_min(0)
    owner = torch.arange(N, device=dev).repeat_interleave(2)
    sgeo = geo[order]  # box properties in sorted order, so that the gathers below read nearby memory
    srcs, dsts = [], []
    csum = counts.cumsum(0)
    total = int(csum[-1]) if N else 0
    budget = 4 * CHUNK_PAIRS
    s = 0
    while s < owner.numel() and total:
        base = int(csum[s - 1]) if s else 0  # take ranges until about `budget` raw pairs
        e = int(torch.searchsorted(csum, torch.tensor(base + budget, device=dev), right=True))
        e = max(e, s + 1)
        c = counts[s:e]
        n = int(csum[e - 1]) - base
        if n:
            i = owner[s:e].repeat_interleave(c, output_size=n)
            j = torch.arange(n, device=dev) + (starts[s:e] - (csum[s:e] - c - base)).repeat_interleave(
                c, output_size=n
            )
            m = _may_suppress(sgeo, i, j, iou_thr)
            i, j = order[i[m]], order[j[m]]
            srcs.append(torch.minimum(i, j))
            dsts.append(torch.maximum(i, j))
        s = e
    if not srcs:
        z = torch.zeros(0, dtype=torch.long, device=dev)
        return z, z
    return torch.cat(srcs), torch.cat(dsts)


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
        """
        xi, yi, aw, ah, ci, si, ai, ti = self.props.index_select(0, i).unbind(1)
        xj, yj, bw, bh, cj, sj, aj, tj = self.props.index_select(0, j).unbind(1)
        cs, ss = ci * cj + si * sj, ci * sj - si * cj  # cos and sin of the angle from i to j
        c, s = cs.abs(), ss.abs()
        dx, dy = xj - xi, yj - yi
        du, dv = dx * ci + dy * si, dy * ci - dx * si  # j's centre in i's frame
        eu, ev = -(dx * cj + dy * sj), dx * sj - dy * cj  # i's centre in j's frame

        def ovl(x: torch.Tensor, e: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            return (torch.minimum(a, x + e) - torch.maximum(-a, x - e)).clamp_min(0)

        def inner(pw: torch.Tensor, ph: torch.Tensor) -> torch.Tensor:
            """Scale k of the largest copy of (pw, ph), turned by the angle, inscribed in (pw, ph)."""
            k1 = pw / (c * pw + s * ph).clamp_min(torch.finfo(pw.dtype).tiny)
            k2 = ph / (s * pw + c * ph).clamp_min(torch.finfo(pw.dtype).tiny)
            return torch.minimum(k1, k2)

        upper = torch.minimum(
            ovl(du, bw * c + bh * s, aw) * ovl(dv, bw * s + bh * c, ah),
            ovl(eu, aw * c + ah * s, bw) * ovl(ev, aw * s + ah * c, bh),
        )
        kb, ka = inner(bw, bh), inner(aw, ah)
        lower = torch.maximum(
            ovl(du, kb * bw, aw) * ovl(dv, kb * bh, ah), ovl(eu, ka * aw, bw) * ovl(ev, ka * ah, bh)
        )
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
            inter = torch.cat([_rect_inter(*part.unbind(1)[:8]) for part in q.split(CHUNK_PAIRS)])
            ak, bk = q[:, 8], q[:, 9]
            out[k] = inter > iou_thr * (ak + bk - inter)
        return out


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


def _lazy_greedy(r: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, iou_thr: float) -> torch.Tensor:
    """Greedy keep mask [N] from candidate pairs, computing IoU only where greedy NMS needs it.

    Rounds over all boxes at once: a box with no live candidate suppressor left is kept; each kept
    box is tested once against its still-undecided candidates, and those above iou_thr are removed
    (which drops their own candidate pairs untested). Each round decides at least the best undecided
    box; after _LAZY_ROUNDS the rest is tested eagerly and resolved by _resolve.
    """
    N = r.shape[0]
    dev = r.device
    boxes = _Boxes(r)
    state = torch.zeros(N, dtype=torch.int8, device=dev)  # 0 undecided, 1 kept, 2 removed
    for _ in range(_LAZY_ROUNDS):
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
            state[j[boxes.suppress(i, j, iou_thr)]] = 2
        src, dst = src[~ev], dst[~ev]
    # long chains of decisions: test the remaining live pairs at once, then resolve
    live = (state[dst] == 0) & (state[src] != 2)
    src, dst = src[live], dst[live]
    m = boxes.suppress(src, dst, iou_thr)
    return _resolve(N, src[m], dst[m], state)


def _grid_greedy(r: torch.Tensor, groups: torch.Tensor, iou_thr: float) -> torch.Tensor:
    """Greedy keep mask [N] (boxes in score order) without building the candidate-pair list.

    Grid cells are as wide as the largest circumscribed-circle diameter, so a box can only be
    suppressed by boxes in its 3x3 cells. Each round, the best undecided box of each cell is kept when
    no better undecided box there could suppress it, and is tested at once against the worse
    undecided boxes of its 3x3 cells, removing those with IoU > iou_thr. After _GRID_ROUNDS the
    remaining undecided boxes are resolved by the candidate-pair method.
    """
    dev = r.device
    N = r.shape[0]
    geo, key, Wg, skey, order = _sorted_grid(r, groups)
    ukey, counts = torch.unique_consecutive(skey, return_counts=True)
    C = ukey.numel()
    ptr = torch.zeros(C + 2, dtype=torch.long, device=dev)  # cell C is an empty sentinel
    ptr[1 : C + 1] = counts.cumsum(0)
    ptr[C + 1] = ptr[C]
    cell_of = torch.empty(N, dtype=torch.long, device=dev)
    cell_of[order] = torch.arange(C, device=dev).repeat_interleave(counts, output_size=N)
    off = torch.tensor([dy * Wg + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)], device=dev)
    nk = key[:, None] + off  # [N, 9] neighbour keys
    ni = torch.searchsorted(ukey, nk).clamp_max(C - 1)
    nbr = torch.where(ukey[ni] == nk, ni, torch.full_like(ni, C))  # [N, 9] cell ids, C if empty
    boxes = _Boxes(r)
    state = torch.zeros(N, dtype=torch.int8, device=dev)  # 0 undecided, 1 kept, 2 removed
    idx = torch.arange(N, device=dev)
    prev = None
    for _ in range(_GRID_ROUNDS):
        und = idx[state == 0]
        if und.numel() == 0:
            return state == 1
        if prev is not None and und.numel() > _GRID_MIN_PROGRESS * prev:
            break  # rounds decide little (spread-out boxes): the candidate pairs are few, use them
        prev = und.numel()
        cmin = torch.full((C + 1,), N, dtype=torch.long, device=dev)
        cmin.scatter_reduce_(0, cell_of[und], und, "amin")
        cand = cmin[:C]
        cand = cand[cand < N]  # the best undecided box of each cell
        cells = nbr[cand].reshape(-1)
        start = ptr[cells]
        cnt = ptr[cells + 1] - start
        n = int(cnt.sum())
        i = cand.repeat_interleave(9).repeat_interleave(cnt, output_size=n)
        first = cnt.cumsum(0) - cnt
        j = order[torch.arange(n, device=dev) + (start - first).repeat_interleave(cnt, output_size=n)]
        # undecided neighbours that could suppress the candidate or be suppressed by it
        m = (j != i) & (state.index_select(0, j) == 0) & _may_suppress(geo, i, j, iou_thr)
        i, j = i[m], j[m]
        blocked = torch.zeros(N, dtype=torch.bool, device=dev)
        blocked[i[j < i]] = True  # a better undecided box may still suppress it
        ready = cand[~blocked[cand]]
        state[ready] = 1
        m = (j > i) & ~blocked[i]
        i, j = i[m], j[m]
        if i.numel():
            state[j[boxes.suppress(i, j, iou_thr)]] = 2
    und = idx[state == 0]
    if und.numel():
        ru, gu = r[und], groups[und]
        src, dst = _candidate_pairs(ru, gu, iou_thr)
        state[und] = torch.where(_lazy_greedy(ru, src, dst, iou_thr), 1, 2).to(torch.int8)
    return state == 1


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


def _nms(rboxes: Any, scores: Any, groups: Any, iou_thr: float) -> Any:
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
    if N == 0:
        keep = torch.zeros(0, dtype=torch.long, device=r.device)
    else:
        order = torch.sort(sc, descending=True, stable=True).indices
        _, g = torch.unique(g[order], return_inverse=True)  # compact group ids for the grid key
        keep = order[_grid_greedy(r[order], g, float(iou_thr))]
    return keep.cpu().numpy() if was_np else keep


def nms_rotated(rboxes: Any, scores: Any, iou_thr: float) -> Any:
    """Indices (int64) of the boxes greedy rotated NMS keeps, in descending score order.

    A box is suppressed when its exact IoU with a kept, higher-scored box is > iou_thr. Ties in score
    keep input order. rboxes [N,5] (any normalisation), scores [N]; numpy in -> numpy out.
    """
    return _nms(rboxes, scores, None, iou_thr)


def batched_nms_rotated(rboxes: Any, scores: Any, classes: Any, iou_thr: float) -> Any:
    """nms_rotated applied independently per class; kept indices in descending score order."""
    return _nms(rboxes, scores, classes, iou_thr)
