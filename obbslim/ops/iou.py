"""Exact IoU of rotated rectangles and quads, vectorised in torch (CPU and CUDA).

Method: Sutherland-Hodgman clipping of quad A by the 4 half-planes of convex quad B on fixed-size
padded tensors with vertex counts (a convex polygon cut by a half-plane gains at most one vertex),
then the shoelace area. Signed distances within a few ulps of a clip line are snapped to 0, so
identical boxes give 1 and boxes sharing an edge give 0. (A Green's-theorem variant, edges of A in B
plus edges of B in A, was tried: it is ill-conditioned for nearly collinear edges.)
Only pairs whose circumscribed circles overlap are clipped; the rest are 0 without work.
Pairs with a non-convex quad (poly_iou only) use signed triangle fans, as the DOTA devkit does.
"""

from __future__ import annotations

from typing import Any

import torch

from obbslim.ops.boxes import _as_tensor, _back, _rbox2poly

__all__ = ["rbox_iou", "poly_iou"]

# pairs per chunk: ~1 KB of float64 temporaries per pair keeps a chunk well under 256 MB
CHUNK_PAIRS = 131072
# a quad whose area is below THIN * diameter^2 (a rectangle with h < ~1e-6 w) is degenerate: IoU 0
THIN = 1e-6


def _signed_area(p: torch.Tensor) -> torch.Tensor:
    """Shoelace signed area of closed polygons [..., K, 2] (all K vertices valid)."""
    q = p.roll(-1, dims=-2)
    return 0.5 * (p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0]).sum(-1)


def _orient(p: torch.Tensor) -> torch.Tensor:
    """Reverse vertex order where the signed area is negative, so every quad is positively oriented."""
    neg = _signed_area(p) < 0
    return torch.where(neg[..., None, None], p.flip(-2), p)


def _inter_area(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection area of positively oriented quads a [P,4,2] and convex quads b [P,4,2] -> [P].

    Sutherland-Hodgman: a is clipped by the 4 half-planes of b in turn. Every output vertex lies on a
    segment between two vertices of the previous polygon, so rounding near collinear edges only moves
    vertices along thin slivers (the area stays right). A convex polygon cut by a half-plane gains at
    most one vertex; one more slot per stage absorbs a sign flip from rounding.
    """
    P = a.shape[0]
    dev, dt = a.device, a.dtype
    if P == 0:
        return a.new_zeros(0)
    origin = b.mean(1, keepdim=True)
    a = a - origin
    b = b - origin
    scale = torch.maximum(b.abs().amax((1, 2)), (a - a.mean(1, keepdim=True)).abs().amax((1, 2)))
    tol = ((32 * torch.finfo(dt).eps) * scale)[:, None]
    # edge lines of b as nx x + ny y + c = signed distance (+ inside); a zero-length edge gives 0
    e = b.roll(-1, dims=1) - b
    e = e / torch.linalg.vector_norm(e, dim=-1, keepdim=True).clamp_min(torch.finfo(dt).tiny)
    nx, ny = -e[..., 1], e[..., 0]
    c = -(nx * b[..., 0] + ny * b[..., 1])
    # polygon slots past the vertex count n repeat vertex 0, so "next vertex" is a plain shift
    pts = a
    n = torch.full((P, 1), 4, dtype=torch.long, device=dev)
    K = 4
    for k in range(4):
        x, y = pts[..., 0], pts[..., 1]
        f = nx[:, k : k + 1] * x + ny[:, k : k + 1] * y + c[:, k : k + 1]
        f = torch.where(f.abs() <= tol, torch.zeros_like(f), f)
        fn = torch.cat((f[:, 1:], f[:, :1]), 1)
        pn = torch.cat((pts[:, 1:], pts[:, :1]), 1)
        valid = torch.arange(K, device=dev) < n
        ins, insn = f >= 0, fn >= 0
        m0 = valid & ins
        m1 = valid & (ins != insn)
        t = f / torch.where(m1, f - fn, torch.ones_like(f))
        p1 = pts + t[..., None] * (pn - pts)
        cand = torch.stack((pts, p1), 2).reshape(P, 2 * K, 2)
        mask = torch.stack((m0, m1), 2).reshape(P, 2 * K)
        K_out = K + 2 if k < 3 else K + 1
        tgt = torch.where(mask, mask.cumsum(1) - 1, torch.full_like(n, K_out)).clamp_max(K_out)
        out = torch.zeros(P, K_out + 1, 2, dtype=dt, device=dev)
        out.scatter_(1, tgt[..., None].expand(-1, -1, 2), cand)
        n = mask.sum(1, keepdim=True).clamp_max(K_out)
        pts = torch.where((torch.arange(K_out, device=dev) < n)[..., None], out[:, :K_out], out[:, :1])
        K = K_out
    q = torch.cat((pts[:, 1:], pts[:, :1]), 1)
    cross = pts[..., 0] * q[..., 1] - pts[..., 1] * q[..., 0]  # padding slots add 0 (vertex 0 twice)
    return (0.5 * cross.sum(1)).clamp_min(0)


def _is_convex(q: torch.Tensor) -> torch.Tensor:
    """Positively oriented quads [P,4,2] whose turns are all left (up to rounding) -> bool [P]."""
    e = q.roll(-1, dims=1) - q
    f = e.roll(-1, dims=1)
    turn = e[..., 0] * f[..., 1] - e[..., 1] * f[..., 0]
    size = torch.linalg.vector_norm(e, dim=-1) * torch.linalg.vector_norm(f, dim=-1)
    return (turn >= -1e-9 * size).all(-1)


def _fan_inter_area(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection area of any two quads [P,4,2] (non-convex too) by signed triangle fans.

    As the DOTA devkit's polyiou: area(A & B) = sum_ij s_i s_j area(T_i & U_j), with the triangles
    T_i = (O, a_i, a_i+1), U_j = (O, b_j, b_j+1) and s their orientation signs (O: b's vertex mean).
    """
    o = b.mean(1, keepdim=True)
    a, b = a - o, b - o

    def fan(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p, n = q, q.roll(-1, dims=1)
        s = torch.sign(p[..., 0] * n[..., 1] - p[..., 1] * n[..., 0])  # [P,4]
        p, n = torch.where((s < 0)[..., None], n, p), torch.where((s < 0)[..., None], p, n)
        zero = torch.zeros_like(p)
        return torch.stack((zero, p, n, n), 2), s  # triangles as quads with a repeated vertex [P,4,4,2]

    ta, sa = fan(a)
    tb, sb = fan(b)
    P = a.shape[0]
    ti = ta[:, :, None].expand(P, 4, 4, 4, 2).reshape(-1, 4, 2)
    tj = tb[:, None, :].expand(P, 4, 4, 4, 2).reshape(-1, 4, 2)
    inter = _inter_area(ti, tj).reshape(P, 4, 4)
    return (inter * sa[:, :, None] * sb[:, None, :]).sum((1, 2)).clamp_min(0)


def _pairs_iou(
    ca: torch.Tensor, pa: torch.Tensor, cb: torch.Tensor, pb: torch.Tensor, convex: bool = True
) -> torch.Tensor:
    """IoU of aligned quad pairs given as centre [P,2] + corners relative to it [P,4,2]; chunked.

    Relative corners keep float32 exact enough for DOTA-sized coordinates: the pair is placed in
    the frame of b's centre by the small difference ca - cb. Degenerate pairs give 0. With
    convex=False, pairs with a non-convex quad use the exact triangle-fan method.
    """
    out = pa.new_zeros(pa.shape[0])
    for s in range(0, pa.shape[0], CHUNK_PAIRS):
        sl = slice(s, s + CHUNK_PAIRS)
        qa = pa[sl] + (ca[sl] - cb[sl])[:, None, :]
        qb = pb[sl]
        aa, ab = _signed_area(qa), _signed_area(qb)
        inter = _inter_area(qa, qb)
        if not convex:
            k = (~(_is_convex(qa) & _is_convex(qb))).nonzero().squeeze(1)
            if k.numel():
                inter[k] = _fan_inter_area(qa[k], qb[k])
        inter = torch.minimum(inter, torch.minimum(aa, ab))
        union = aa + ab - inter
        # degenerate (w or h ~ 0): area <= THIN * diameter^2, i.e. short/long side below ~THIN
        ok = (aa > THIN * 4 * (pa[sl] ** 2).sum(-1).amax(-1)) & (ab > THIN * 4 * (qb**2).sum(-1).amax(-1))
        ok = ok & (union > 0)
        iou = inter / torch.where(ok, union, torch.ones_like(union))
        out[sl] = torch.where(ok, iou.clamp(0, 1), torch.zeros_like(iou))
    return out


def _quads_iou(
    ca: torch.Tensor, pa: torch.Tensor, cb: torch.Tensor, pb: torch.Tensor, aligned: bool, convex: bool = True
) -> torch.Tensor:
    """Core for quads = centre [N,2] + positively oriented relative corners [N,4,2].

    Returns [N,M], or [N] if aligned. Only pairs whose circumscribed circles overlap are clipped.
    """
    ra = torch.linalg.vector_norm(pa, dim=-1).amax(-1)
    rb = torch.linalg.vector_norm(pb, dim=-1).amax(-1)
    if aligned:
        near = ((ca - cb) ** 2).sum(-1) < (ra + rb) ** 2
        out = pa.new_zeros(pa.shape[0])
        i = near.nonzero().squeeze(1)
        out[i] = _pairs_iou(ca[i], pa[i], cb[i], pb[i], convex)
        return out
    N, M = pa.shape[0], pb.shape[0]
    out = pa.new_zeros(N, M)
    rows = max(1, (4 * CHUNK_PAIRS) // max(M, 1))
    for s in range(0, N, rows):
        d2 = ((ca[s : s + rows, None, :] - cb[None]) ** 2).sum(-1)
        near = d2 < (ra[s : s + rows, None] + rb[None]) ** 2
        i, j = near.nonzero().unbind(1)
        if i.numel():
            out[s + i, j] = _pairs_iou(ca[s + i], pa[s + i], cb[j], pb[j], convex)
    return out


def _rel_rbox(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rboxes [N,5] -> (centres [N,2], positively oriented corners relative to them [N,4,2])."""
    r = r.reshape(-1, 5)
    rel = r.clone()
    rel[:, :2] = 0
    return r[:, :2], _orient(_rbox2poly(rel))


def _rel_quad(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quads [N,8] -> (vertex means [N,2], positively oriented relative corners [N,4,2])."""
    q = p.reshape(-1, 4, 2)
    c = q.mean(1)
    return c, _orient(q - c[:, None, :])


def _common(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor, bool]:
    ta, np_a = _as_tensor(a)
    tb, _ = _as_tensor(b)
    dt = torch.promote_types(ta.dtype, tb.dtype)
    if not dt.is_floating_point:
        dt = torch.float64
    return ta.to(dt), tb.to(dtype=dt, device=ta.device), np_a


def rbox_iou(a: Any, b: Any, aligned: bool = False) -> Any:
    """Exact IoU of rotated boxes: a [N,5] x b [M,5] -> [N,M] (or [N] for a[i] vs b[i] if aligned).

    Boxes need not be normalised. Degenerate boxes (h < ~1e-6 w, or w = h = 0) give 0, never NaN.
    """
    ta, tb, was_np = _common(a, b)
    return _back(_quads_iou(*_rel_rbox(ta), *_rel_rbox(tb), aligned), was_np)


def poly_iou(a: Any, b: Any, aligned: bool = False) -> Any:
    """Exact IoU of quads: a [N,8] x b [M,8] -> [N,M] (or [N] if aligned); CW or CCW vertex order.

    Convex quads are clipped directly; pairs with a non-convex quad use signed triangle fans, as the
    official DOTA devkit (polyiou) does, so its numbers are reproduced for any simple quad.
    Self-intersecting quads get the devkit's signed-area convention (area = |shoelace|).
    """
    ta, tb, was_np = _common(a, b)
    return _back(_quads_iou(*_rel_quad(ta), *_rel_quad(tb), aligned, convex=False), was_np)
