"""Speed of obbslim.ops.rbox_iou and nms_rotated against shapely 2 references (prints ratios).

Run: .venv/bin/python benchmarks/bench_ops.py  [--threads N]
The NMS reference is greedy NMS where each kept box's IoU with all remaining boxes is computed with
shapely's vectorised intersection/area. Timings are the best of a few repeats.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import shapely
import torch

from obbslim.ops import nms_rotated, rbox2poly, rbox_iou


def random_boxes(n: int, seed: int, extent: float = 1000.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.c_[rng.uniform(0, extent, (n, 2)), rng.uniform(5, 60, (n, 2)), rng.uniform(-2, 2, n)]


def clustered_boxes(
    n: int, k: int = 150, seed: int = 0, extent: float = 2000.0
) -> tuple[np.ndarray, np.ndarray]:
    """n detections around k objects (jittered centre, size and angle), like raw detector output."""
    rng = np.random.default_rng(seed)
    cen = rng.uniform(0, extent, (k, 2))
    size = rng.uniform(10, 60, (k, 2))
    ang = rng.uniform(-1.5, 1.5, k)
    c = rng.integers(0, k, n)
    r = np.c_[
        cen[c] + rng.normal(0, 4, (n, 2)),
        size[c] * rng.uniform(0.8, 1.2, (n, 2)),
        ang[c] + rng.normal(0, 0.1, n),
    ]
    return r, rng.uniform(0, 1, n)


def shapely_polys(r: np.ndarray) -> np.ndarray:
    return shapely.polygons(rbox2poly(r).reshape(-1, 4, 2))


def shapely_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    pa, pb = shapely_polys(a), shapely_polys(b)
    inter = shapely.area(shapely.intersection(pa[:, None], pb[None]))
    union = shapely.area(pa)[:, None] + shapely.area(pb)[None] - inter
    return inter / union


def shapely_nms(r: np.ndarray, s: np.ndarray, thr: float) -> np.ndarray:
    order = np.argsort(-s, kind="stable")
    polys = shapely_polys(r)[order]
    area = shapely.area(polys)
    alive = np.ones(len(r), bool)
    keep = []
    for k in range(len(r)):
        if not alive[k]:
            continue
        keep.append(order[k])
        rest = np.flatnonzero(alive[k + 1 :]) + k + 1
        if rest.size == 0:
            break
        inter = shapely.area(shapely.intersection(polys[k], polys[rest]))
        alive[rest[inter / (area[k] + area[rest] - inter) > thr]] = False
    return np.asarray(keep, dtype=np.int64)


def best(fn, repeat: int = 3) -> tuple[float, object]:
    t, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        t = min(t, time.perf_counter() - t0)
    return t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, shapely {shapely.__version__}")

    # rbox_iou: n x 200 matrix (shapely's n x n would take minutes at 10k)
    for n in (2000, 10000):
        a, b = random_boxes(n, 1), random_boxes(200, 2)
        t_ref, ref = best(lambda a=a, b=b: shapely_iou(a, b), repeat=1)
        t_ops, got = best(lambda a=a, b=b: rbox_iou(a, b))
        err = float(np.abs(got - ref).max())
        print(
            f"rbox_iou {n}x200: shapely {t_ref:.3f}s  ops {t_ops:.3f}s  speed-up {t_ref / t_ops:.1f}x"
            f"  max|diff| {err:.1e}"
        )

    thr = 0.3
    cases = [
        ("random 2000 (spread out)", *random_scored(2000)),
        ("clustered 3000 (150 clusters)", *clustered_boxes(3000)),
        ("clustered 5000 (150 clusters)", *clustered_boxes(5000)),
        # the reference is O(kept x N): 10,000 spread-out boxes would take minutes, so cluster them
        ("clustered 10000 (1000 clusters)", *clustered_boxes(10000, k=1000, extent=5000.0)),
    ]
    for name, r, s in cases:
        t_ref, ref = best(lambda r=r, s=s: shapely_nms(r, s, thr), repeat=1 if len(r) > 5000 else 2)
        t_ops, got = best(lambda r=r, s=s: nms_rotated(r, s, thr), repeat=5)
        print(
            f"nms_rotated {name}: shapely {t_ref:.3f}s  ops {t_ops:.4f}s  speed-up {t_ref / t_ops:.1f}x"
            f"  kept {len(got)}  same kept set: {np.array_equal(ref, got)}"
        )


def random_scored(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n boxes spread over an area that grows with n (a few overlaps per box)."""
    return random_boxes(n, 3, extent=40 * n**0.5), np.random.default_rng(4).uniform(0, 1, n)


if __name__ == "__main__":
    main()
