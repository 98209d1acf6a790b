"""Run an exported obbslim model with numpy, OpenCV and ONNX Runtime only (no PyTorch, no obbslim).

Copy this one file next to the .onnx file on the deployment machine::

    import cv2
    from standalone import Detector
    det = Detector("model.onnx")
    rboxes, scores, cls = det(cv2.imread("tile.jpg"))   # original-image pixels
    polys = rbox2poly(rboxes)                             # [n, 8] corners for drawing / DOTA files

Same steps as the PyTorch path: letterbox (grey 114, RGB, 0..1), the graph (model + decode), then
confidence filter (obj > conf, score = obj x best class > conf), best `max_nms` candidates, rotated
NMS per class (greedy, exact polygon IoU, a box is dropped when IoU > iou), `max_det` best kept, each
merged with the boxes of its class it overlaps (merge-NMS, `merge=False` to skip).
The NMS and the merge are plain numpy loops: fine for a few thousand candidates, not a hot path.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import onnxruntime as ort


def letterbox(img: np.ndarray, shape: tuple[int, int], color: int = 114):
    """Resize keeping the aspect ratio and pad to `shape` (h, w); returns (img, gain, (left, top))."""
    h0, w0 = img.shape[:2]
    r = min(shape[0] / h0, shape[1] / w0)
    w1, h1 = max(1, int(round(w0 * r))), max(1, int(round(h0 * r)))
    if (w1, h1) != (w0, h0):
        img = cv2.resize(img, (w1, h1), interpolation=cv2.INTER_LINEAR)
    dw, dh = shape[1] - w1, shape[0] - h1
    left, top = dw // 2, dh // 2
    img = cv2.copyMakeBorder(img, top, dh - top, left, dw - left, cv2.BORDER_CONSTANT, value=(color,) * 3)
    return img, (w1 / w0, h1 / h0), (left, top)


def norm_rbox(r: np.ndarray) -> np.ndarray:
    """(cx, cy, w, h, theta) with w >= h and theta in [-pi/2, pi/2) (the obbslim convention)."""
    r = r.copy()
    swap = r[:, 2] < r[:, 3]
    r[swap, 2], r[swap, 3] = r[swap, 3], r[swap, 2].copy()
    r[swap, 4] += math.pi / 2
    r[:, 4] = np.remainder(r[:, 4] + math.pi / 2, math.pi) - math.pi / 2
    r[:, 4] = np.where(r[:, 4] >= math.pi / 2, r[:, 4] - math.pi, r[:, 4])
    return r


def rbox2poly(r: np.ndarray) -> np.ndarray:
    """rboxes [n, 5] -> corners [n, 8] (x1 y1 ... x4 y4)."""
    cx, cy, w, h, t = (r[:, i] for i in range(5))
    c, s = np.cos(t), np.sin(t)
    ux, uy, vx, vy = c * w / 2, s * w / 2, -s * h / 2, c * h / 2
    xs = np.stack((cx - ux - vx, cx + ux - vx, cx + ux + vx, cx - ux + vx), -1)
    ys = np.stack((cy - uy - vy, cy + uy - vy, cy + uy + vy, cy - uy + vy), -1)
    return np.stack((xs, ys), -1).reshape(-1, 8)


def _clip_area(subject: np.ndarray, clip: np.ndarray) -> float:
    """Area of convex polygon `subject` clipped by convex polygon `clip` (Sutherland-Hodgman)."""
    pts = subject
    for k in range(4):
        a, b = clip[k], clip[(k + 1) % 4]
        ex, ey = b - a
        side = ex * (pts[:, 1] - a[1]) - ey * (pts[:, 0] - a[0])  # >= 0: inside (clockwise on screen)
        out = []
        n = len(pts)
        for i in range(n):
            p, q, sp, sq = pts[i], pts[(i + 1) % n], side[i], side[(i + 1) % n]
            if sp >= 0:
                out.append(p)
            if (sp >= 0) != (sq >= 0):
                out.append(p + (q - p) * (sp / (sp - sq)))
        if len(out) < 3:
            return 0.0
        pts = np.array(out)
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def nms_rotated(rboxes: np.ndarray, scores: np.ndarray, iou_thr: float) -> np.ndarray:
    """Greedy rotated NMS with exact IoU; indices kept, in descending score order."""
    order = np.argsort(-scores, kind="stable")
    polys = rbox2poly(rboxes.astype(np.float64)).reshape(-1, 4, 2)
    area = rboxes[:, 2].astype(np.float64) * rboxes[:, 3]
    rad = 0.5 * np.hypot(rboxes[:, 2], rboxes[:, 3])
    removed = np.zeros(len(order), bool)
    keep = []
    for a, i in enumerate(order):
        if removed[a]:
            continue
        keep.append(i)
        rest = order[a + 1 :]
        near = ~removed[a + 1 :] & (np.hypot(*(rboxes[rest, :2] - rboxes[i, :2]).T) < rad[rest] + rad[i])
        for b in np.flatnonzero(near):
            j = rest[b]
            inter = _clip_area(polys[j], polys[i])
            if inter / max(area[i] + area[j] - inter, 1e-12) > iou_thr:
                removed[a + 1 + b] = True
    return np.array(keep, np.int64)


def merge_rotated(rboxes: np.ndarray, scores: np.ndarray, cls: np.ndarray, keep: np.ndarray, iou_thr: float,
                  min_ratio: float = 0.25) -> np.ndarray:
    """Each kept box -> the score-weighted mean of the boxes of its class with IoU > iou_thr (itself
    included) that score at least min_ratio of it; each member written as the one of its equal forms
    ((w, h, t), (h, w, t + pi/2), t + pi) whose angle is nearest the kept box's (as ops.merge_rotated)."""
    r = rboxes.astype(np.float64)
    polys = rbox2poly(r).reshape(-1, 4, 2)
    area, rad = r[:, 2] * r[:, 3], 0.5 * np.hypot(r[:, 2], r[:, 3])
    out = r[keep].copy()
    for n, i in enumerate(keep):
        near = (cls == cls[i]) & (scores >= min_ratio * scores[i])
        near &= np.hypot(*(r[:, :2] - r[i, :2]).T) < rad + rad[i]
        near[i] = False
        cand = np.flatnonzero(near)
        inter = np.array([_clip_area(polys[j], polys[i]) for j in cand], np.float64)
        mem = cand[inter / np.maximum(area[i] + area[cand] - inter, 1e-12) > iou_thr]
        if len(mem) == 0:
            continue
        m = np.concatenate(([i], mem))
        w, (x, y, a, b, t) = scores[m].astype(np.float64), r[m].T
        d = np.remainder(t - r[i, 4] + math.pi / 2, math.pi) - math.pi / 2
        turn = np.abs(d) > math.pi / 4
        a, b, d = np.where(turn, b, a), np.where(turn, a, b), np.where(turn, d - np.sign(d) * math.pi / 2, d)
        mean = np.stack((x, y, a, b, d)) @ w / w.sum()
        out[n] = (*mean[:4], r[i, 4] + mean[4])
    return norm_rbox(out).astype(rboxes.dtype)


def postprocess(pred: np.ndarray, conf: float = 0.25, iou: float = 0.4, max_det: int = 300,
                max_nms: int = 30000, merge: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decoded [N, 6 + nc] of one image -> (rboxes [n, 5], scores [n], cls [n]), best first."""
    x = pred[pred[:, 5] > conf]
    s = x[:, 6:] * x[:, 5:6]
    j = s.argmax(1)
    sc = s[np.arange(len(s)), j]
    m = sc > conf
    x, sc, j = x[m], sc[m], j[m]
    if len(sc) > max_nms:
        top = np.argsort(-sc, kind="stable")[:max_nms]
        x, sc, j = x[top], sc[top], j[top]
    rb = norm_rbox(x[:, :5])
    off = rb.copy()  # per-class NMS: shift each class far away from the others
    off[:, :2] += j[:, None] * (4.0 * (np.abs(rb[:, :4]).max() if len(rb) else 1.0) + 1.0)
    k = nms_rotated(off, sc, iou)[:max_det]
    return (merge_rotated(rb, sc, j, k, iou) if merge else rb[k]), sc[k], j[k]


class Detector:
    """Letterbox -> ONNX Runtime -> NMS -> boxes in the original image's pixels."""

    def __init__(self, path: str, providers: list[str] | None = None):
        self.session = ort.InferenceSession(path, providers=providers or ["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        try:  # the metadata may come from a stranger: check it before allocating an input of its size
            self.names = json.loads(meta["names"])
            self.imgsz = tuple(json.loads(meta["imgsz"]))
            self.half = json.loads(meta.get("half", "false"))
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path}: missing or non-JSON metadata ({e})") from None
        fixed = [d for d in self.session.get_inputs()[0].shape[2:] if isinstance(d, int)]
        ok = len(self.imgsz) == 2 and all(isinstance(v, int) and 0 < v <= 16384 for v in self.imgsz)
        if not ok or (len(fixed) == 2 and list(self.imgsz) != fixed):
            raise ValueError(f"{path}: metadata imgsz {self.imgsz} does not fit the graph's input {fixed}")
        if not (isinstance(self.names, list) and all(isinstance(n, str) for n in self.names)):
            raise ValueError(f"{path}: metadata names is not a list of strings")
        if not isinstance(self.half, bool):
            raise ValueError(f"{path}: metadata half is not true or false")
        self.input = self.session.get_inputs()[0].name

    def __call__(self, img_bgr: np.ndarray, conf: float = 0.25, iou: float = 0.4, max_det: int = 300):
        img, ratio, (left, top) = letterbox(img_bgr, self.imgsz)
        x = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))[None].astype(np.float32) / 255
        pred = self.session.run(None, {self.input: x.astype(np.float16) if self.half else x})[0]
        rb, sc, cls = postprocess(pred[0].astype(np.float32), conf, iou, max_det)
        rb[:, 0] -= left  # undo the letterbox as obbslim's scale_rboxes does (one gain, theta kept)
        rb[:, 1] -= top
        rb[:, :4] /= ratio[0]
        return rb, sc, cls
