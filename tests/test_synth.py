"""The synthetic dataset: determinism, label tightness, layout and the `obbslim synth` command."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon

from obbslim.data.labels import load_data_yaml, load_split
from obbslim.data.labeltxt import read_labeltxt
from obbslim.data.synth import CLASSES, make_object, make_synthetic, object_mask, poly_mask, render_image
from obbslim.errors import ObbslimError


@pytest.fixture(scope="module")
def rendered():
    """A few 256 px images with their objects (shared by the geometry tests)."""
    return [render_image(7, i, 256) for i in range(8)]


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(root.glob(pattern))


def test_same_seed_same_files(tmp_path):
    a = make_synthetic(tmp_path / "a", n_images=5, size=96, seed=3, val_frac=0.4, workers=2)
    b = make_synthetic(tmp_path / "b", n_images=5, size=96, seed=3, val_frac=0.4, workers=1)
    c = make_synthetic(tmp_path / "c", n_images=5, size=96, seed=4, val_frac=0.4)
    la, lb = _files(a.parent, "labelTxt/*/*.txt"), _files(b.parent, "labelTxt/*/*.txt")
    assert [p.relative_to(a.parent) for p in la] == [p.relative_to(b.parent) for p in lb] and len(la) == 5
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(la, lb))
    ia, ib = _files(a.parent, "images/*/*.png"), _files(b.parent, "images/*/*.png")
    assert all(np.array_equal(cv2.imread(str(x)), cv2.imread(str(y))) for x, y in zip(ia, ib))
    assert a.read_text() == b.read_text()
    ic = _files(c.parent, "images/*/*.png")
    assert not all(np.array_equal(cv2.imread(str(x)), cv2.imread(str(y))) for x, y in zip(ia, ic))
    assert len(list((a.parent / "images" / "val").glob("*.png"))) == 2


def test_dataset_loads_and_labels_match_rendering(tmp_path):
    y = make_synthetic(tmp_path / "ds", n_images=6, size=128, seed=1, val_frac=0.5)
    d = load_data_yaml(y)
    assert d["names"] == list(CLASSES) and d["path"] == str(tmp_path / "ds")
    train, rep = load_split(y, "train", verbose=False)
    val, rep_val = load_split(y, "val", verbose=False)
    assert rep.label_format == "labeltxt" and rep.skipped_bad == 0 and rep.orphans == 0
    assert len(train) == len(val) == 3 and rep.dropped_degenerate == rep_val.dropped_degenerate == 0
    for s in train + val:
        assert s.shape == (128, 128) and not s.difficult.any()
        i = int(Path(s.im_file).stem.split("_")[1])
        img, objects = render_image(1, i, 128)
        assert np.array_equal(cv2.imread(s.im_file), img)
        np.testing.assert_allclose(s.polys, np.array([o.label for o in objects]).reshape(-1, 8), atol=0.006)
        assert s.cls.tolist() == [CLASSES.index(o.name) for o in objects]
    lf = read_labeltxt(Path(train[0].im_file.replace("/images/", "/labelTxt/")).with_suffix(".txt"))
    assert set(lf.names) <= set(CLASSES)


def test_all_classes_present_sizes_and_border(rendered):
    objects = [o for _, objs in rendered for o in objs]
    assert {o.name for o in objects} == set(CLASSES)
    quads = np.array([o.label for o in objects]).reshape(-1, 4, 2)
    sides = np.linalg.norm(quads - np.roll(quads, -1, axis=1), axis=2)
    assert sides.max(1).min() >= 8 - 0.5 and sides.max(1).max() <= 150 * 1.01
    assert ((quads < 0) | (quads > 256)).any(axis=(1, 2)).sum() >= 1  # some objects cut by the border
    counts = [len(objs) for _, objs in rendered]
    assert min(counts) >= 2 and max(counts) >= 15  # parking rows make some scenes dense


def test_labels_tightly_cover_drawn_pixels(rendered):
    for img, objects in rendered:
        for o in objects:
            m = object_mask(o, img.shape[:2])
            n = int(m.sum())
            if n < 10:
                continue
            # >= 95% of the object's pixels inside the label polygon (rasterised the same way) ...
            assert (m & poly_mask(o.label, m.shape)).sum() >= 0.95 * n, o.name
            # ... and every pixel centre within 1 px of it (shapely as the reference)
            ys, xs = np.nonzero(m)
            poly = Polygon(o.label.reshape(4, 2))
            assert shapely.contains_xy(poly.buffer(1.0), xs, ys).all(), o.name
            # tight: no larger than the min-area rectangle of the drawn pixels (plus a pixel's rim)
            quad = o.label.reshape(4, 2)
            fully_inside = (quad >= 0).all() and (quad <= np.array(m.shape[::-1]) - 1).all()
            if fully_inside and n >= 30:
                (_, _), (w, h), _ = cv2.minAreaRect(np.stack([xs, ys], 1).astype(np.float32))
                assert poly.area <= (w + 2.5) * (h + 2.5), o.name


def test_shapes_fill_their_boxes_as_designed():
    rng = np.random.default_rng(0)
    shape = (400, 400)
    fills = {}
    for name in CLASSES:
        o = make_object(name, rng, 200.0, 200.0, math.radians(30), scale=120)
        fills[name] = object_mask(o, shape).sum() / Polygon(o.label.reshape(4, 2)).area
        r = Polygon(o.label.reshape(4, 2)).minimum_rotated_rectangle
        assert Polygon(o.label.reshape(4, 2)).area == pytest.approx(r.area, rel=1e-3)
    assert fills["small-vehicle"] > 0.95 and fills["large-vehicle"] > 0.95
    assert fills["storage-tank"] == pytest.approx(math.pi / 4, abs=0.03)  # circle in its square
    assert 0.25 < fills["plane"] < 0.6  # a cross
    assert 0.75 < fills["ship"] < 0.95  # a hull with a pointed bow
    with pytest.raises(ValueError, match="unknown synthetic class"):
        make_object("zeppelin", rng, 0, 0, 0)


def test_objects_mostly_do_not_overlap(rendered):
    for img, objects in rendered:
        masks = [poly_mask(o.label, img.shape[:2]) for o in objects]
        areas = np.array([m.sum() for m in masks])
        flat = np.stack(masks).reshape(len(masks), -1).astype(np.float32)
        inter = flat @ flat.T  # pairwise overlap in pixels
        np.fill_diagonal(inter, 0)
        # no pair overlaps by more than 10% of the smaller box (a car is never buried under a plane)
        assert (inter <= 0.1 * np.minimum.outer(areas, areas) + 2).all()


def test_cli_synth(tmp_path, capsys):
    from obbslim.cli import main

    dst = tmp_path / "syn"
    args = [
        "synth",
        str(dst),
        "--images",
        "3",
        "--size",
        "64",
        "--seed",
        "2",
        "--val-frac",
        "0.34",
        "--workers",
        "1",
    ]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(dst / "data.yaml")
    assert len(list((dst / "images" / "train").glob("*.png"))) == 2
    assert len(list((dst / "labelTxt" / "val").glob("*.txt"))) == 1
    assert main(args) == 2  # refuses to write over an existing dataset ...
    assert "already holds a dataset" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0  # ... unless asked
    with pytest.raises(ObbslimError):
        make_synthetic(tmp_path / "x", n_images=0)
