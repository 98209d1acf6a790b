from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obbslim.cli import main
from obbslim.data.labeltxt import read_labeltxt, write_labeltxt, write_task1
from obbslim.errors import InputError
from obbslim.eval import evaluate_dota, evaluate_images, evaluate_polys, format_table, voc_ap

# Official DOTA devkit numbers for /work/shared/data/dota_eval_example (README table).
OFFICIAL = {
    "voc07": {
        "harbor": 0.676437,
        "large-vehicle": 0.876430,
        "ship": 0.429752,
        "small-vehicle": 0.875804,
        "mean": 0.714606,
    },
    "voc12": {
        "harbor": 0.685845,
        "large-vehicle": 0.907175,
        "ship": 0.436246,
        "small-vehicle": 0.936779,
        "mean": 0.741511,
    },
}


def example(shared_data: Path) -> tuple[Path, Path, Path]:
    d = shared_data / "dota_eval_example"
    return d / "result_classname", d / "row_DOTA_labels", d / "imgnamefile.txt"


# ---------------------------------------------------------------- reference: the devkit, transcribed
def ref_voc_ap(rec, prec, use_07_metric):
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def shapely_iou(p, q):
    from shapely.geometry import Polygon

    a, b = Polygon(np.reshape(p, (4, 2))), Polygon(np.reshape(q, (4, 2)))
    inter = a.intersection(b).area
    return inter / (a.area + b.area - inter)


def ref_voc_eval(gt, dets, classname, ovthresh, use_07_metric):
    """dota_evaluation_task1.voc_eval on in-memory data; shapely stands in for polyiou.
    gt: {image: [(poly8, name, difficult)]}; dets: [(image, score, poly8)] in file order."""
    class_recs, npos = {}, 0
    for img, objs in gt.items():
        r = [o for o in objs if o[1] == classname]
        difficult = np.array([o[2] for o in r]).astype(bool)
        npos += int(np.sum(~difficult))
        class_recs[img] = {
            "bbox": np.array([o[0] for o in r]),
            "difficult": difficult,
            "det": [False] * len(r),
        }
    confidence = np.array([d[1] for d in dets], np.float64)
    bbs = np.array([d[2] for d in dets], np.float64).reshape(-1, 8)
    sorted_ind = np.argsort(-confidence)
    bbs = bbs[sorted_ind, :]
    image_ids = [dets[x][0] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        if image_ids[d] not in class_recs:  # our documented choice: skip (the devkit raises KeyError)
            continue
        r = class_recs[image_ids[d]]
        bb = bbs[d]
        ovmax, bbgt = -np.inf, r["bbox"].astype(float)
        if bbgt.size > 0:
            gx0, gy0 = bbgt[:, 0::2].min(1), bbgt[:, 1::2].min(1)
            gx1, gy1 = bbgt[:, 0::2].max(1), bbgt[:, 1::2].max(1)
            bx0, by0, bx1, by1 = bb[0::2].min(), bb[1::2].min(), bb[0::2].max(), bb[1::2].max()
            iw = np.maximum(np.minimum(gx1, bx1) - np.maximum(gx0, bx0) + 1.0, 0.0)
            ih = np.maximum(np.minimum(gy1, by1) - np.maximum(gy0, by0) + 1.0, 0.0)
            inters = iw * ih
            uni = (bx1 - bx0 + 1.0) * (by1 - by0 + 1.0) + (gx1 - gx0 + 1.0) * (gy1 - gy0 + 1.0) - inters
            keep = np.where(inters / uni > 0)[0]
            if len(keep) > 0:
                overlaps = [shapely_iou(bbgt[k], bb) for k in keep]
                ovmax = np.max(overlaps)
                jmax = keep[np.argmax(overlaps)]
        if ovmax > ovthresh:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp[d] = 1.0
                    r["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return ref_voc_ap(rec, prec, use_07_metric)


# ---------------------------------------------------------------- the official numbers
@pytest.mark.parametrize("metric", ["voc07", "voc12"])
def test_official_example_numbers(shared_data, metric):
    det, ann, imageset = example(shared_data)
    r = evaluate_dota(det, ann, imageset, metric=metric)
    want = OFFICIAL[metric]
    assert list(r["per_class"]) == ["harbor", "large-vehicle", "ship", "small-vehicle"]
    for name, ap in r["per_class"].items():
        assert ap == pytest.approx(want[name], abs=1e-6), name
    assert r["mAP"] == pytest.approx(want["mean"], abs=1e-6)
    assert r["n_det"] == {"harbor": 55, "large-vehicle": 242, "ship": 36, "small-vehicle": 137}
    # default image set = every label file; the example's imgnamefile lists all four
    assert evaluate_dota(det, ann, metric=metric)["mAP"] == r["mAP"]


def test_official_example_matches_transcribed_devkit(shared_data):
    det, ann, imageset = example(shared_data)
    from obbslim.data.labeltxt import read_task1

    gt = {}
    for p in sorted(ann.glob("*.txt")):
        lf = read_labeltxt(p)
        gt[p.stem] = list(zip(lf.polys, lf.names, lf.difficult))
    r = evaluate_dota(det, ann, imageset, metric="voc12")
    for name in r["per_class"]:
        ids, scores, polys = read_task1(det / f"Task1_{name}.txt")
        ref = ref_voc_eval(gt, list(zip(ids, scores, polys)), name, 0.5, False)
        assert r["per_class"][name] == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("metric", ["voc07", "voc12"])
def test_cli_official_example_and_json(shared_data, tmp_path, capsys, metric):
    det, ann, imageset = example(shared_data)
    out = tmp_path / "res.json"
    rc = main(
        ["evaluate", str(det), str(ann), "--imageset", str(imageset), "--metric", metric, "--json", str(out)]
    )
    assert rc == 0
    text = capsys.readouterr().out
    want = OFFICIAL[metric]
    assert f"{want['mean']:.6f}" in text and "small-vehicle" in text and f"{want['harbor']:.6f}" in text
    data = json.loads(out.read_text())
    assert data["metric"] == metric
    assert data["mAP"] == pytest.approx(want["mean"], abs=1e-6)
    assert set(data["per_class"]) == {"harbor", "large-vehicle", "ship", "small-vehicle"}
    for name, ap in data["per_class"].items():
        assert ap == pytest.approx(want[name], abs=1e-6)


def test_cli_classes_and_iou(shared_data, tmp_path):
    det, ann, imageset = example(shared_data)
    out = tmp_path / "r.json"
    assert main(["evaluate", str(det), str(ann), "--classes", "ship,small vehicle", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert list(data["per_class"]) == ["ship", "small-vehicle"]
    assert data["mAP"] == pytest.approx((0.429752 + 0.875804) / 2, abs=1e-6)
    assert main(["evaluate", str(det), str(ann), "--iou", "0.7", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["mAP"] < 0.714606 - 0.05  # stricter threshold, lower mAP
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(det), str(ann), "--iou", "1.5"])
    assert e.value.code == 2


def test_in_memory_api_matches_files_and_multi_threshold(shared_data):
    det, ann, imageset = example(shared_data)
    from obbslim.data.labeltxt import read_task1

    names = ["harbor", "large-vehicle", "ship", "small-vehicle"]
    images = sorted(p.stem for p in ann.glob("*.txt"))
    labels = [read_labeltxt(ann / f"{i}.txt") for i in images]
    flat = {k: [] for k in ("det_polys", "det_scores", "det_cls", "det_img")}
    for c, name in enumerate(names):
        ids, scores, polys = read_task1(det / f"Task1_{name}.txt")
        flat["det_polys"].append(polys), flat["det_scores"].append(scores)
        flat["det_cls"].append(np.full(len(ids), c)), flat["det_img"].append([images.index(i) for i in ids])
    flat = {k: np.concatenate(v) for k, v in flat.items()}
    gt = dict(
        gt_polys=np.concatenate([lf.polys for lf in labels]),
        gt_cls=[names.index(n) for lf in labels for n in lf.names],
        gt_img=np.concatenate([np.full(len(lf), i) for i, lf in enumerate(labels)]),
        gt_difficult=np.concatenate([lf.difficult for lf in labels]),
    )
    thrs = [0.5, 0.6, 0.75, 0.9]
    mem = evaluate_polys(**gt, **flat, names=names, metric="voc12", iou_thr=thrs)
    files = evaluate_dota(det, ann, imageset, metric="voc12", iou_thr=thrs)
    assert [m["iou_thr"] for m in mem] == thrs
    for m, f, t in zip(mem, files, thrs):
        assert m["per_class"] == f["per_class"]
        assert f["mAP"] == evaluate_dota(det, ann, imageset, metric="voc12", iou_thr=t)["mAP"]
    assert mem[0]["mAP"] == pytest.approx(0.741511, abs=1e-6)
    assert files[0]["mAP"] > files[2]["mAP"] > files[3]["mAP"]

    # per-image lists (a validation loop): ranking ties now break by image order, so only close
    by_img = [np.flatnonzero(flat["det_img"] == i) for i in range(len(images))]
    dets = [(flat["det_polys"][k], flat["det_scores"][k], flat["det_cls"][k]) for k in by_img]
    gts = [(lf.polys, [names.index(n) for n in lf.names], lf.difficult) for lf in labels]
    r = evaluate_images(gts, dets, names, metric="voc12")
    assert r["mAP"] == pytest.approx(0.741511, abs=1e-3)
    assert r["n_gt"] == mem[0]["n_gt"] and r["n_det"] == mem[0]["n_det"]


@pytest.mark.parametrize("folder", ["dota_demo/labelTxt", "dota_eval_example/row_DOTA_labels"])
def test_perfect_detections_score_one(shared_data, tmp_path, folder):
    ann = shared_data / folder
    dets: dict[str, list] = {}
    for p in sorted(ann.glob("*.txt")):
        lf = read_labeltxt(p)
        area = 0.5 * np.abs(
            (lf.polys[:, 0::2] * np.roll(lf.polys[:, 1::2], -1, 1)).sum(1)
            - (lf.polys[:, 1::2] * np.roll(lf.polys[:, 0::2], -1, 1)).sum(1)
        )
        for poly, name, a in zip(lf.polys, lf.names, area):
            if a > 0:  # zero-area boxes can never be matched (IoU 0/0), by the devkit either
                dets.setdefault(name, []).append((p.stem, 1.0, poly))
    write_task1(tmp_path, dets)
    for metric in ("voc07", "voc12"):
        r = evaluate_dota(tmp_path, ann, metric=metric)
        assert r["mAP"] == pytest.approx(1.0, abs=1e-12), r["per_class"]
        assert set(r["per_class"]) == set(dets)


# ---------------------------------------------------------------- hand-built cases
def box(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def scene(tmp_path, gts: dict, dets: dict, imageset: list[str] | None = None):
    """gts: {image: [(poly, name, difficult)]}; dets: {class: [(image, score, poly)]}."""
    ann, det = tmp_path / "ann", tmp_path / "det"
    ann.mkdir(exist_ok=True)
    det.mkdir(exist_ok=True)
    for img, objs in gts.items():
        write_labeltxt(ann / f"{img}.txt", [o[0] for o in objs], [o[1] for o in objs], [o[2] for o in objs])
    write_task1(det, dets)
    iset = None
    if imageset is not None:
        iset = tmp_path / "imageset.txt"
        iset.write_text("".join(i + "\n" for i in imageset))
    return det, ann, iset


def test_voc_ap_hand_values():
    rec, prec = np.array([0.5, 1.0]), np.array([1.0, 0.5])
    assert voc_ap(rec, prec, False) == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
    assert voc_ap(rec, prec, True) == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)
    assert voc_ap(np.zeros(0), np.zeros(0), True) == 0.0 and voc_ap(np.zeros(0), np.zeros(0), False) == 0.0


@pytest.mark.parametrize("tp_first, want", [(True, 1.0), (False, 0.5)])
def test_score_ties_break_by_file_order(tmp_path, tp_first, want):
    hit, miss = ("A", 0.7, box(0, 0, 10, 10)), ("A", 0.7, box(50, 50, 60, 60))
    det, ann, _ = scene(
        tmp_path, {"A": [(box(0, 0, 10, 10), "ship", 0)]}, {"ship": [hit, miss] if tp_first else [miss, hit]}
    )
    for metric in ("voc07", "voc12"):
        # ranked [TP, FP]: precision 1 at recall 1; ranked [FP, TP]: precision 0.5 at recall 1
        assert evaluate_dota(det, ann, metric=metric)["mAP"] == pytest.approx(want)


def test_many_ties_follow_numpy_default_argsort(tmp_path):
    # >16 tied scores: numpy's default (introsort) is not stable, the devkit's order is what it is
    rng = np.random.default_rng(3)
    gts = {"A": [(box(20 * i, 0, 20 * i + 10, 10), "ship", 0) for i in range(20)]}
    dets = []
    for k in rng.permutation(40):
        x = 20 * (k % 20) + (0 if k < 20 else 200 * 20)  # half hit a GT, half hit nothing
        dets.append(("A", float(rng.choice([0.5, 0.9])), box(x, 0, x + 10, 10)))
    det, ann, _ = scene(tmp_path, gts, {"ship": dets})
    for metric in ("voc07", "voc12"):
        ref = ref_voc_eval(gts, dets, "ship", 0.5, metric == "voc07")
        assert evaluate_dota(det, ann, metric=metric)["mAP"] == pytest.approx(ref, abs=1e-12)


def test_duplicate_detection_is_false_positive(tmp_path):
    g = box(0, 0, 10, 10)
    det, ann, _ = scene(tmp_path, {"A": [(g, "ship", 0)]}, {"ship": [("A", 0.9, g), ("A", 0.8, g)]})
    r = evaluate_dota(det, ann, metric="voc12")
    assert r["n_tp"]["ship"] == 1
    np.testing.assert_allclose(r["precision"]["ship"], [1.0, 0.5])
    np.testing.assert_allclose(r["recall"]["ship"], [1.0, 1.0])


def test_second_best_gt_is_not_used_when_best_is_taken(tmp_path):
    # the devkit matches only the best-IoU GT; if it is taken the detection is FP even if another GT fits
    g1, g2 = box(0, 0, 10, 10), box(1, 0, 11, 10)
    gts = {"A": [(g1, "ship", 0), (g2, "ship", 0)]}
    det, ann, _ = scene(tmp_path, gts, {"ship": [("A", 0.9, g1), ("A", 0.8, box(0, 0, 10.2, 10))]})
    r = evaluate_dota(det, ann, metric="voc12")
    assert r["n_tp"]["ship"] == 1 and r["n_gt"]["ship"] == 2
    assert r["mAP"] == pytest.approx(0.5)


def test_difficult_gt_is_neither_tp_nor_fp(tmp_path):
    gd, g = box(0, 0, 10, 10), box(100, 100, 110, 110)
    gts = {"A": [(gd, "ship", 1), (g, "ship", 0)]}
    dets = {"ship": [("A", 0.9, gd), ("A", 0.95, gd), ("A", 0.5, g)]}
    det, ann, _ = scene(tmp_path, gts, dets)
    r = evaluate_dota(det, ann, metric="voc12")
    assert r["n_gt"]["ship"] == 1  # npos counts non-difficult only
    assert r["n_tp"]["ship"] == 1 and r["mAP"] == pytest.approx(1.0)  # 0.5 if difficult counted as FP
    np.testing.assert_allclose(r["precision"]["ship"], [0.0, 0.0, 1.0])  # ignored rows keep their place


def test_equal_iou_goes_to_the_first_ground_truth(tmp_path):
    # two identical GTs, the first difficult: np.argmax picks the first, so the detection is ignored
    g = box(0, 0, 10, 10)
    det, ann, _ = scene(tmp_path, {"A": [(g, "ship", 1), (g, "ship", 0)]}, {"ship": [("A", 0.9, g)]})
    r = evaluate_dota(det, ann, metric="voc12")
    assert r["n_gt"]["ship"] == 1 and r["n_tp"]["ship"] == 0 and r["mAP"] == 0.0
    det, ann, _ = scene(tmp_path, {"A": [(g, "ship", 0), (g, "ship", 1)]}, {"ship": [("A", 0.9, g)]})
    assert evaluate_dota(det, ann, metric="voc12")["mAP"] == 1.0


def test_iou_exactly_at_threshold_is_not_a_match(tmp_path):
    # GT 10x10 inside a 20x10 detection: IoU = 100 / 200 = 0.5 exactly
    det, ann, _ = scene(
        tmp_path, {"A": [(box(0, 0, 10, 10), "ship", 0)]}, {"ship": [("A", 0.9, box(0, 0, 20, 10))]}
    )
    assert evaluate_dota(det, ann, iou_thr=0.5)["mAP"] == 0.0
    assert evaluate_dota(det, ann, iou_thr=0.49)["mAP"] == pytest.approx(1.0)


def test_missing_class_file_and_empty_file_score_zero(tmp_path):
    g = box(0, 0, 10, 10)
    gts = {"A": [(g, "ship", 0), (box(30, 30, 40, 40), "plane", 0), (box(60, 60, 70, 70), "harbor", 0)]}
    det, ann, _ = scene(tmp_path, gts, {"ship": [("A", 0.9, g)], "harbor": []})
    r = evaluate_dota(det, ann)
    assert r["per_class"] == {"harbor": 0.0, "plane": 0.0, "ship": pytest.approx(1.0)}
    assert r["n_det"] == {"harbor": 0, "plane": 0, "ship": 1}
    assert r["mAP"] == pytest.approx(1 / 3)
    table = format_table(r)
    assert "plane" in table and "0.333333" in table


def test_class_names_hyphen_and_space_match(tmp_path):
    g = box(0, 0, 10, 10)
    det, ann, _ = scene(tmp_path, {"A": [(g, "small-vehicle", 0)]}, {})
    (det / "Task1_small vehicle.txt").write_text("A 0.9 " + " ".join(map(str, g)) + "\n")
    assert evaluate_dota(det, ann, metric="voc12")["per_class"] == {"small-vehicle": 1.0}
    r = evaluate_dota(det, ann, classes=["small vehicle"], metric="voc12")
    assert r["per_class"] == {"small-vehicle": 1.0}
    (det / "Task1_small-vehicle.txt").write_text("")
    with pytest.raises(InputError, match="two detection files"):
        evaluate_dota(det, ann)


def test_detections_on_images_outside_the_imageset_are_skipped(tmp_path):
    g = box(0, 0, 10, 10)
    gts = {"A": [(g, "ship", 0)], "B": [(g, "ship", 0)]}
    dets = {"ship": [("B", 0.99, box(50, 50, 60, 60)), ("Z", 0.98, g), ("A", 0.5, g)]}
    det, ann, iset = scene(tmp_path, gts, dets, imageset=["A"])
    r = evaluate_dota(det, ann, iset, metric="voc12")
    assert r["per_class"]["ship"] == 1.0 and r["n_det"]["ship"] == 1 and r["n_gt"]["ship"] == 1
    # without an image set, B counts: its false positive ranks first and its GT is missed
    r = evaluate_dota(det, ann, metric="voc12")
    assert r["n_gt"]["ship"] == 2 and r["per_class"]["ship"] == pytest.approx(0.25)


def test_imageset_with_missing_label_file(tmp_path):
    g = box(0, 0, 10, 10)
    det, ann, iset = scene(tmp_path, {"A": [(g, "ship", 0)]}, {"ship": []}, imageset=["A", "P0404"])
    with pytest.raises(InputError, match="P0404") as e:
        evaluate_dota(det, ann, iset)
    assert e.value.line == 2 and "imageset.txt:2:" in str(e.value)


def test_malformed_label_line_via_api_and_cli(tmp_path, capsys):
    g = box(0, 0, 10, 10)
    det, ann, _ = scene(tmp_path, {"A": [(g, "ship", 0)]}, {"ship": [("A", 0.9, g)]})
    with open(ann / "A.txt", "a") as f:
        f.write("1 2 3 4 5 6 7 ship 0\n")
    with pytest.raises(InputError, match=r"A\.txt:2:"):
        evaluate_dota(det, ann)
    assert main(["evaluate", str(det), str(ann)]) == 2
    err = capsys.readouterr().err
    assert "A.txt:2:" in err and len(err.strip().splitlines()) == 1


def test_malformed_detection_line_via_cli(tmp_path, capsys):
    g = box(0, 0, 10, 10)
    det, ann, _ = scene(tmp_path, {"A": [(g, "ship", 0)]}, {"ship": [("A", 0.9, g)]})
    with open(det / "Task1_ship.txt", "a") as f:
        f.write("A 0.5 0 0 10 0 10 10 0 ten\n")
    assert main(["evaluate", str(det), str(ann)]) == 2
    assert "Task1_ship.txt:2:" in capsys.readouterr().err


def test_missing_folders_are_clear_errors(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nodet"), str(tmp_path)]) == 2
    assert "no such" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="annotation"):
        evaluate_dota(tmp_path, tmp_path / "noann")


def test_class_with_only_difficult_gt_scores_zero():
    r = evaluate_polys(
        gt_polys=[box(0, 0, 10, 10)],
        gt_cls=[0],
        gt_img=[0],
        gt_difficult=[1],
        det_polys=[box(0, 0, 10, 10)],
        det_scores=[0.9],
        det_cls=[0],
        det_img=[0],
        names=["ship"],
        metric="voc12",
    )
    assert r["per_class"] == {"ship": 0.0} and r["n_gt"] == {"ship": 0}


def test_bad_arguments():
    kw = dict(gt_polys=np.zeros((0, 8)), gt_cls=[], gt_img=[], det_polys=np.zeros((0, 8)), det_scores=[])
    kw.update(det_cls=[], det_img=[], names=["a"])
    with pytest.raises(ValueError, match="metric"):
        evaluate_polys(**kw, metric="coco")
    with pytest.raises(ValueError, match="IoU threshold"):
        evaluate_polys(**kw, iou_thr=1.0)
    assert evaluate_polys(**kw)["mAP"] == 0.0


# ---------------------------------------------------------------- property test against the devkit
def random_scene(seed: int):
    rng = np.random.default_rng(seed)
    names = ["ship", "plane"]

    def rect():
        cx, cy = rng.uniform(10, 90, 2)
        w, h = rng.uniform(4, 30, 2)
        t = rng.uniform(-np.pi / 2, np.pi / 2)
        c, s = np.cos(t), np.sin(t)
        corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
        return np.round(corners @ np.array([[c, s], [-s, c]]) + [cx, cy], 1).reshape(8)

    gts = {}
    for img in ("A", "B", "C")[: rng.integers(1, 4)]:
        gts[img] = [
            (rect(), names[rng.integers(2)], int(rng.random() < 0.2)) for _ in range(rng.integers(0, 7))
        ]
    for n in names:  # every class has a non-difficult GT (the devkit divides by zero otherwise)
        gts["A"].append((rect(), n, 0))
    dets = {n: [] for n in names}
    for img, objs in gts.items():
        for poly, n, _ in objs:
            for _ in range(rng.integers(0, 3)):  # jittered copies: TPs, duplicates, near misses
                pts = poly.reshape(4, 2)
                c = pts.mean(0)
                a = rng.normal(0, 0.1)  # similarity jitter keeps the quad convex
                rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) * rng.uniform(0.8, 1.2)
                jit = (pts - c) @ rot + c + rng.normal(0, 2.0, 2)
                dets[n].append((img, float(rng.choice([0.3, 0.6, 0.9])), np.round(jit, 1).reshape(8)))
    for n in names:
        for _ in range(rng.integers(0, 6)):  # clutter
            dets[n].append((str(rng.choice(list(gts))), float(rng.choice([0.3, 0.6, 0.9])), rect()))
        rng.shuffle(dets[n])
    return names, gts, dets


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), thr=st.sampled_from([0.1, 0.5, 0.7]))
def test_matches_transcribed_devkit_on_random_scenes(tmp_path_factory, seed, thr):
    names, gts, dets = random_scene(seed)
    det, ann, _ = scene(tmp_path_factory.mktemp("s"), gts, dets)
    for metric in ("voc07", "voc12"):
        r = evaluate_dota(det, ann, classes=names, metric=metric, iou_thr=thr)
        for n in names:
            ref = ref_voc_eval(gts, dets[n], n, thr, metric == "voc07")
            assert r["per_class"][n] == pytest.approx(ref, abs=1e-9), (n, metric)


def test_chunked_candidate_pairs_give_the_same_result(shared_data, monkeypatch):
    import obbslim.eval.dota as dota

    det, ann, imageset = example(shared_data)
    want = evaluate_dota(det, ann, imageset, metric="voc12", iou_thr=[0.3, 0.5])
    monkeypatch.setattr(dota, "_PAIR_CHUNK", 7)  # many chunks, some detections alone in theirs
    got = evaluate_dota(det, ann, imageset, metric="voc12", iou_thr=[0.3, 0.5])
    assert [g["per_class"] for g in got] == [w["per_class"] for w in want]
