"""The official DOTA Task1 metric (DOTA_devkit ``dota_evaluation_task1.py``), vectorised.

Semantics follow the devkit's ``voc_eval`` exactly:

- per class, detections are ranked by ``np.argsort(-confidence)`` (numpy's default sort kind, so
  score ties break as in the official code, by the order of the detections in the file);
- each detection's candidate is the ground truth of the same image and class with the highest
  polygon IoU (first one on ties); it is a true positive when that IoU is strictly above the
  threshold, the candidate is not difficult and not matched yet; a second detection on the same
  ground truth is a false positive; a best match on a difficult ground truth counts as neither;
- AP is VOC07 11-point (``"voc07"``) or VOC12 all-point (``"voc12"``), as ``voc_ap``.

Where the devkit crashes we choose: detections on images outside the image set are skipped
(neither TP nor FP; the devkit raises KeyError), a class without detections scores 0, and a class
without non-difficult ground truth scores 0 (the devkit divides by zero).

Speed: the candidate (best IoU, index) of every detection does not depend on the threshold or on
the matching state, so it is computed once for all classes from the (detection, ground truth)
pairs of the same image and class whose bounding boxes overlap (the devkit's own pre-filter), with
one exact polygon IoU call; matching at any number of thresholds is then pure numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from obbslim.data.classes import class_key, normalize_name
from obbslim.data.labeltxt import read_labeltxt, read_task1
from obbslim.errors import InputError
from obbslim.ops import poly_area, poly_iou
from obbslim.utils.text import plural

METRICS = ("voc07", "voc12")
_PAIR_CHUNK = 1 << 20  # candidate pairs handled per IoU call (bounds memory)


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = False) -> float:
    """Average precision from a recall/precision curve, bit for bit as the devkit's ``voc_ap``."""
    rec = np.asarray(rec, np.float64)
    prec = np.asarray(prec, np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            above = rec >= t
            p = np.max(prec[above]) if above.any() else 0
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _hbb(polys: np.ndarray) -> np.ndarray:
    xs, ys = polys[:, 0::2], polys[:, 1::2]
    return np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)


def _aligned_poly_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of a[k] with b[k] for every k (float64 [K])."""
    if len(a) == 0:
        return np.zeros(0, np.float64)
    return np.asarray(poly_iou(a, b, aligned=True), dtype=np.float64).reshape(-1)


def best_candidates(
    det_polys: np.ndarray,
    det_key: np.ndarray,
    gt_polys: np.ndarray,
    gt_key: np.ndarray,
    min_iou: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """For each detection: (highest IoU with a ground truth of the same key, that ground truth's
    index). Keys are group ids (image and class); a negative detection key has no candidates.
    Without any overlapping ground truth the IoU is -inf and the index -1, as in the devkit.

    Pairs whose IoU cannot exceed ``min_iou`` (an upper bound from areas and box overlap) are not
    computed, so the result is exact for any matching threshold >= ``min_iou``."""
    nd = len(det_polys)
    ovmax = np.full(nd, -np.inf)
    jmax = np.full(nd, -1, np.int64)
    if nd == 0 or len(gt_polys) == 0:
        return ovmax, jmax
    order = np.argsort(gt_key, kind="stable")  # keeps file order inside a group (tie-break)
    skey = gt_key[order]
    start = np.searchsorted(skey, det_key, "left")
    count = np.searchsorted(skey, det_key, "right") - start
    count[det_key < 0] = 0
    dbox, gbox = _hbb(det_polys), _hbb(gt_polys)
    darea, garea = poly_area(det_polys), poly_area(gt_polys)
    ends = np.cumsum(count)
    lo = 0
    while lo < nd:  # chunks of detections, each with about _PAIR_CHUNK candidate pairs
        base = ends[lo - 1] if lo else 0
        hi = max(int(np.searchsorted(ends, base + _PAIR_CHUNK, "right")), lo + 1)
        cnt = count[lo:hi]
        total = int(cnt.sum())
        if total:
            pd = np.repeat(np.arange(lo, hi), cnt)
            offs = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            pg = order[np.repeat(start[lo:hi], cnt) + offs]
            db, gb = dbox[pd], gbox[pg]
            iw = np.minimum(db[:, 2], gb[:, 2]) - np.maximum(db[:, 0], gb[:, 0])
            ih = np.minimum(db[:, 3], gb[:, 3]) - np.maximum(db[:, 1], gb[:, 1])
            keep = (iw > 0) & (ih > 0)  # the devkit's pre-filter: a positive IoU needs overlapping boxes
            pd, pg = pd[keep], pg[keep]
            # IoU <= m / (A + B - m) with m = min(A, B, box overlap); skip pairs that cannot match
            m = np.minimum(np.minimum(darea[pd], garea[pg]), iw[keep] * ih[keep])
            with np.errstate(divide="ignore", invalid="ignore"):
                bound = m / (darea[pd] + garea[pg] - m)
            keep = ~(bound < min_iou - 1e-9)  # margin: the bound is rounded too; NaN (0/0) is kept
            pd, pg = pd[keep], pg[keep]
            iou = _aligned_poly_iou(det_polys[pd], gt_polys[pg])
            iou = np.nan_to_num(iou, nan=0.0)
            # best IoU per detection, lowest ground-truth index on ties (np.argmax semantics)
            srt = np.lexsort((pg, -iou, pd))
            pd, pg, iou = pd[srt], pg[srt], iou[srt]
            first = np.ones(len(pd), bool)
            first[1:] = pd[1:] != pd[:-1]
            ovmax[pd[first]] = iou[first]
            jmax[pd[first]] = pg[first]
        lo = hi
    return ovmax, jmax


def _as_thresholds(iou_thr: float | Sequence[float]) -> tuple[list[float], bool]:
    single = np.ndim(iou_thr) == 0
    thrs = [float(iou_thr)] if single else [float(t) for t in iou_thr]
    for t in thrs:
        if not 0.0 <= t < 1.0:
            raise ValueError(f"IoU threshold must be in [0, 1), got {t}")
    return thrs, single


def evaluate_polys(
    *,
    gt_polys: np.ndarray,
    gt_cls: np.ndarray,
    gt_img: np.ndarray,
    det_polys: np.ndarray,
    det_scores: np.ndarray,
    det_cls: np.ndarray,
    det_img: np.ndarray,
    names: Sequence[str],
    gt_difficult: np.ndarray | None = None,
    metric: str = "voc07",
    iou_thr: float | Sequence[float] = 0.5,
) -> dict | list[dict]:
    """DOTA Task1 evaluation of in-memory arrays (no files), e.g. for validation during training.

    Ground truth: ``gt_polys`` [G, 8], ``gt_cls`` [G] (index into ``names``), ``gt_img`` [G]
    (image index), ``gt_difficult`` [G] (nonzero = difficult). Detections: ``det_polys`` [D, 8],
    ``det_scores`` [D], ``det_cls`` [D], ``det_img`` [D] (a negative image index = an image outside
    the evaluated set: skipped). Within a class, the detections' order is the tie-break order.
    Rows whose class is outside ``names`` are dropped. ``iou_thr`` a float gives one result dict;
    a sequence gives a list of dicts (the IoUs are computed once).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    thrs, single = _as_thresholds(iou_thr)
    nc = len(names)
    gt_polys, gt_cls, gt_img, diff = _gt_arrays(gt_polys, gt_cls, gt_img, gt_difficult)
    det_polys, det_scores, det_cls, det_img = _det_arrays(det_polys, det_scores, det_cls, det_img)

    gt_ok = (gt_cls >= 0) & (gt_cls < nc)
    gt_key = np.where(gt_ok, gt_img * nc + gt_cls, -1)
    det_ok = (det_cls >= 0) & (det_cls < nc)
    det_key = np.where(det_ok & (det_img >= 0), det_img * nc + det_cls, -1)
    ovmax, jmax = best_candidates(det_polys, det_key, gt_polys[gt_ok], gt_key[gt_ok], min(thrs))
    has = jmax >= 0
    jmax[has] = np.flatnonzero(gt_ok)[jmax[has]]  # back to indices of the full ground-truth arrays
    cand_diff = np.zeros(len(jmax), bool)
    cand_diff[has] = diff[jmax[has]]

    npos = np.bincount(gt_cls[gt_ok & ~diff], minlength=nc)[:nc]
    ranked = []  # per class: detection indices in ranked order
    for c in range(nc):
        idx = np.flatnonzero(det_cls == c)
        ranked.append(idx[np.argsort(-det_scores[idx])])

    results = []
    for t in thrs:
        res: dict = {
            "metric": metric,
            "iou_thr": t,
            "mAP": 0.0,
            "per_class": {},
            "n_gt": {},
            "n_det": {},
            "n_tp": {},
            "precision": {},
            "recall": {},
            "scores": {},
        }
        for c, name in enumerate(names):
            d = ranked[c]
            tp, fp = _match(ovmax[d] > t, det_key[d] < 0, cand_diff[d], jmax[d])
            n = int(npos[c])
            rec = tp / float(n) if n else np.zeros(len(d))
            prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
            res["per_class"][name] = voc_ap(rec, prec, metric == "voc07") if n else 0.0
            res["n_gt"][name] = n
            res["n_det"][name] = int((det_key[d] >= 0).sum())
            res["n_tp"][name] = int(tp[-1]) if len(tp) else 0
            res["precision"][name] = prec
            res["recall"][name] = rec
            res["scores"][name] = det_scores[d]
        aps = list(res["per_class"].values())
        res["mAP"] = float(sum(aps) / len(aps)) if aps else 0.0
        results.append(res)
    return results[0] if single else results


def _gt_arrays(polys: Any, cls: Any, img: Any, difficult: Any) -> tuple[np.ndarray, ...]:
    polys = np.asarray(polys, np.float64).reshape(-1, 8)
    cls, img = np.asarray(cls, np.int64).reshape(-1), np.asarray(img, np.int64).reshape(-1)
    diff = np.zeros(len(polys), bool) if difficult is None else np.asarray(difficult).reshape(-1) != 0
    if not (len(polys) == len(cls) == len(img) == len(diff)):
        raise ValueError("gt_polys, gt_cls, gt_img and gt_difficult must have the same length")
    return polys, cls, img, diff


def _det_arrays(polys: Any, scores: Any, cls: Any, img: Any) -> tuple[np.ndarray, ...]:
    polys, scores = np.asarray(polys, np.float64).reshape(-1, 8), np.asarray(scores, np.float64).reshape(-1)
    cls, img = np.asarray(cls, np.int64).reshape(-1), np.asarray(img, np.int64).reshape(-1)
    if not (len(polys) == len(scores) == len(cls) == len(img)):
        raise ValueError("det_polys, det_scores, det_cls and det_img must have the same length")
    return polys, scores, cls, img


def _match(
    hit: np.ndarray, outside: np.ndarray, difficult: np.ndarray, gt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative TP and FP of ranked detections: a hit on a difficult object or a detection outside the
    evaluated images is neither; each ground truth is claimed once, by its highest-ranked hit."""
    skip = outside | (hit & difficult)
    tp = np.zeros(len(hit))
    pos = np.flatnonzero(hit & ~difficult)
    _, first = np.unique(gt[pos], return_index=True)  # first (highest-ranked) claim wins
    tp[pos[first]] = 1.0
    fp = (~skip & (tp == 0)).astype(np.float64)
    return np.cumsum(tp), np.cumsum(fp)


def evaluate_images(
    gts: Sequence[tuple],
    dets: Sequence[tuple],
    names: Sequence[str],
    metric: str = "voc07",
    iou_thr: float | Sequence[float] = 0.5,
) -> dict | list[dict]:
    """Convenience over ``evaluate_polys`` for per-image lists, as a validation loop has them.

    ``gts[i] = (polys [n, 8], cls [n], difficult [n] or None)``,
    ``dets[i] = (polys [m, 8], scores [m], cls [m])`` (same image order).
    """
    if len(gts) != len(dets):
        raise ValueError(f"{len(gts)} ground-truth images but {len(dets)} detection images")

    def cat(parts, cols, dtype):
        arrs = [
            np.asarray(p, dtype).reshape(-1, cols) if cols else np.asarray(p, dtype).reshape(-1)
            for p in parts
        ]
        return np.concatenate(arrs) if arrs else np.zeros((0, cols) if cols else 0, dtype)

    gdiff = [g[2] if len(g) > 2 and g[2] is not None else np.zeros(len(np.reshape(g[1], -1))) for g in gts]
    return evaluate_polys(
        gt_polys=cat([g[0] for g in gts], 8, np.float64),
        gt_cls=cat([g[1] for g in gts], 0, np.int64),
        gt_img=np.concatenate([np.full(len(np.reshape(g[1], -1)), i) for i, g in enumerate(gts)] or [[]]),
        gt_difficult=cat(gdiff, 0, np.int64),
        det_polys=cat([d[0] for d in dets], 8, np.float64),
        det_scores=cat([d[1] for d in dets], 0, np.float64),
        det_cls=cat([d[2] for d in dets], 0, np.int64),
        det_img=np.concatenate([np.full(len(np.reshape(d[1], -1)), i) for i, d in enumerate(dets)] or [[]]),
        names=names,
        metric=metric,
        iou_thr=iou_thr,
    )


def read_imageset(path: str | Path) -> dict[str, int]:
    """Image id -> 1-based line, one id per line (blank lines skipped, a repeated id kept once)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image set file")
    ids: dict[str, int] = {}
    for num, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if raw.strip():
            ids.setdefault(raw.strip(), num)
    return ids


def find_task1_files(det_dir: str | Path) -> dict[str, Path]:
    """Map class key -> ``Task1_<class>.txt`` in ``det_dir``, the key normalised as class names are
    (``normalize_name``: case, ``_``, ``-`` and spaces do not matter, so ``Task1_small_vehicle.txt`` and
    ``Task1_Ship.txt`` are small-vehicle and ship); two files for one class is an error."""
    det_dir = Path(det_dir)
    if not det_dir.is_dir():
        raise FileNotFoundError(f"{det_dir}: no such detection folder")
    files: dict[str, Path] = {}
    for p in sorted(det_dir.glob("Task1_*.txt")):
        key = normalize_name(p.stem[len("Task1_") :])
        if key in files:
            raise InputError(
                f"two detection files for class {key!r}: {files[key].name} and {p.name}", det_dir
            )
        files[key] = p
    return files


def _read_ground_truth(ann_dir: str | Path, imageset: str | Path | None) -> tuple[list[str], list]:
    """(image ids, their labelTxt files): every label file in ``ann_dir``, or the ``imageset``'s, each
    of which must exist; a non-finite coordinate is an error naming the file and line."""
    ann_dir = Path(ann_dir)
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"{ann_dir}: no such annotation folder")
    if imageset is None:
        image_ids = sorted(p.stem for p in ann_dir.glob("*.txt"))
        if not image_ids:
            raise InputError("no labelTxt files (*.txt) in the annotation folder", ann_dir)
    else:
        listed = read_imageset(imageset)
        for img, num in listed.items():
            if not (ann_dir / f"{img}.txt").is_file():
                raise InputError(f"image {img!r} has no label file {ann_dir / (img + '.txt')}", imageset, num)
        image_ids = list(listed)
    labels = [read_labeltxt(ann_dir / f"{img}.txt") for img in image_ids]
    for lf, img in zip(labels, image_ids):
        bad = ~np.isfinite(lf.polys).all(1)
        if bad.any():
            raise InputError("non-finite coordinate", ann_dir / f"{img}.txt", int(lf.lines[np.argmax(bad)]))
    return image_ids, labels


def _class_names(
    labels: list, classes: Iterable[str] | None, det_files: dict[str, Path], det_dir: str | Path
) -> tuple[list[str], list[str], list[str]]:
    """(evaluated class names as the ground truth spells them, every ground-truth object's class name,
    warnings about classes absent from the ground truth and detection files of no class)."""
    gt_spelling: dict[str, str] = {}  # normalised -> as the ground truth spells it (first seen)
    for lf in labels:
        for n in lf.names:
            gt_spelling.setdefault(normalize_name(n), class_key(n))
    gt_names = [gt_spelling[normalize_name(n)] for lf in labels for n in lf.names]
    warnings: list[str] = []
    if classes is None:
        names = sorted(set(gt_names))
    else:
        names = list(dict.fromkeys(gt_spelling.get(normalize_name(c), class_key(c)) for c in classes))
        absent = [n for n in names if normalize_name(n) not in gt_spelling]
        if absent:
            warnings.append(f"{plural(len(absent), 'class', 'classes')} not in the ground truth (AP 0): "
                            f"{', '.join(absent)}")  # fmt: skip
    evaluated = {normalize_name(n) for n in names}
    if not det_files:
        warnings.append(f"no Task1_<class>.txt files in {det_dir}: every class scores 0")
    unmatched = [p.name for k, p in det_files.items() if k not in evaluated and k not in gt_spelling]
    if unmatched:
        warnings.append(f"{plural(len(unmatched), 'detection file')} of no class in the ground truth "
                        f"ignored: {', '.join(unmatched)} (classes: {', '.join(names)})")  # fmt: skip
    return names, gt_names, warnings


def _read_detections(
    det_files: dict[str, Path], names: list[str], image_ids: list[str], warnings: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(polys, scores, class indices, image indices) of every evaluated class's Task1 file; detections
    on images outside ``image_ids`` keep image index -1 and are counted in a warning."""
    img_of = {img: i for i, img in enumerate(image_ids)}
    det_parts = []
    outside: dict[str, int] = {}
    for c, name in enumerate(names):
        key = normalize_name(name)
        if key in det_files:
            ids, scores, polys = read_task1(det_files[key])
            dimg = np.array([img_of.get(i, -1) for i in ids], np.int64)
            for i in np.flatnonzero(dimg < 0):
                outside[ids[i]] = outside.get(ids[i], 0) + 1
            det_parts.append((polys, scores, np.full(len(ids), c, np.int64), dimg))
    if outside:
        some = ", ".join(sorted(outside)[:3]) + (", ..." if len(outside) > 3 else "")
        n_det, n_img = plural(sum(outside.values()), "detection"), plural(len(outside), "image")
        warnings.append(f"{n_det} on {n_img} outside the evaluated set ignored ({some})")
    if not det_parts:
        return np.zeros((0, 8)), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)
    det_polys, det_scores, det_cls, det_img = (np.concatenate(x) for x in zip(*det_parts))
    return det_polys, det_scores, det_cls, det_img


def evaluate_dota(
    det_dir: str | Path,
    ann_dir: str | Path,
    imageset: str | Path | None = None,
    classes: Iterable[str] | None = None,
    metric: str = "voc07",
    iou_thr: float | Sequence[float] = 0.5,
) -> dict | list[dict]:
    """Evaluate ``det_dir/Task1_<class>.txt`` against ``ann_dir/<image>.txt`` labelTxt files.

    ``imageset`` lists the image ids (default: every label file in ``ann_dir``); ``classes``
    defaults to every class in the ground truth, sorted. Class names in ``classes`` and in the file
    names match the ground truth's loosely (``normalize_name``). Returns a dict with ``metric``,
    ``mAP``, ``per_class`` {class: AP} and per-class ``n_gt``, ``n_det``, ``n_tp``, ``precision``,
    ``recall``, ``scores`` (the ranked curves), and ``warnings`` (what was ignored, and why: detection
    files of no evaluated class, an empty ``det_dir``, detections on images outside the image set,
    ``classes`` missing from the ground truth); a list of them if ``iou_thr`` is a sequence.
    Non-finite scores or coordinates are errors naming the file and line.
    """
    det_files = find_task1_files(det_dir)
    image_ids, labels = _read_ground_truth(ann_dir, imageset)
    names, gt_names, warnings = _class_names(labels, classes, det_files, det_dir)
    cls_of = {n: i for i, n in enumerate(names)}
    gt_polys = np.concatenate([lf.polys for lf in labels]) if labels else np.zeros((0, 8))
    gt_cls = np.array([cls_of.get(n, -1) for n in gt_names], np.int64)
    gt_img = np.concatenate(
        [np.full(len(lf), i, np.int64) for i, lf in enumerate(labels)] or [np.zeros(0, np.int64)]
    )
    gt_diff = np.concatenate([lf.difficult for lf in labels] or [np.zeros(0, np.int64)])
    det_polys, det_scores, det_cls, det_img = _read_detections(det_files, names, image_ids, warnings)
    result = evaluate_polys(
        gt_polys=gt_polys,
        gt_cls=gt_cls,
        gt_img=gt_img,
        gt_difficult=gt_diff,
        det_polys=det_polys,
        det_scores=det_scores,
        det_cls=det_cls,
        det_img=det_img,
        names=names,
        metric=metric,
        iou_thr=iou_thr,
    )
    for res in result if isinstance(result, list) else [result]:
        res["warnings"] = list(warnings)
    return result
