"""Dataset YAML, label scanning, cache and bad-input report (obbslim.data.labels, classes, imageinfo)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obbslim.data import cache as cache_mod
from obbslim.data import labels
from obbslim.data.classes import DOTA_V1_0, DOTA_V1_5, DOTA_V2_0, class_index, dota_names, normalize_name
from obbslim.data.imageinfo import image_size
from obbslim.data.labels import load_data_yaml, load_split
from obbslim.errors import InputError
from obbslim.ops import quad_area

# ------------------------------------------------------------------------------------------ classes


def test_class_lists():
    assert len(DOTA_V1_0) == 15 and len(DOTA_V1_5) == 16 and len(DOTA_V2_0) == 18
    assert DOTA_V1_0[0] == "plane" and DOTA_V1_0[10] == "small-vehicle" and DOTA_V1_0[14] == "swimming-pool"
    assert DOTA_V1_5[15] == "container-crane" and DOTA_V2_0[16:] == ("airport", "helipad")
    assert dota_names("dota1.0") == list(DOTA_V1_0)
    assert dota_names("DOTA-v1.5") == list(DOTA_V1_5)
    assert dota_names("dota2.0") == list(DOTA_V2_0)
    with pytest.raises(KeyError):
        dota_names("coco")


def test_normalize_name_and_index():
    for s in ("small vehicle", "small-vehicle", "Small_Vehicle", " small  vehicle "):
        assert normalize_name(s) == "small-vehicle"
    idx = class_index(["plane", "small vehicle"])
    assert idx == {"plane": 0, "small-vehicle": 1}
    with pytest.raises(ValueError, match="duplicate"):
        class_index(["small vehicle", "small-vehicle"])


# --------------------------------------------------------------------------------------- image size


def _write_image(path: Path, h: int, w: int, **params) -> None:
    img = (np.arange(h * w * 3) % 251).astype(np.uint8).reshape(h, w, 3)
    flags = [v for kv in params.items() for v in kv]
    assert cv2.imwrite(str(path), img, [int(getattr(cv2, k)) if isinstance(k, str) else k for k in flags])


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300), ext=st.sampled_from([".png", ".jpg", ".bmp"]))
def test_image_size_matches_cv2(tmp_path_factory, h, w, ext):
    p = tmp_path_factory.mktemp("im") / f"x{ext}"
    _write_image(p, h, w)
    assert image_size(p) == (h, w) == cv2.imread(str(p)).shape[:2]


def test_image_size_progressive_jpeg_and_corrupt(tmp_path):
    p = tmp_path / "prog.jpg"
    assert cv2.imwrite(str(p), np.full((37, 53, 3), 90, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert image_size(p) == (37, 53)
    for name, data in [
        ("trunc.jpg", p.read_bytes()[:-40]),
        ("junk.png", b"this is not an image at all" * 10),
        ("empty.jpg", b""),
    ]:
        q = tmp_path / name
        q.write_bytes(data)
        with pytest.raises(InputError, match=name):
            image_size(q)
    _write_image(tmp_path / "ok.png", 20, 30)
    (tmp_path / "trunc.png").write_bytes((tmp_path / "ok.png").read_bytes()[:-20])
    with pytest.raises(InputError, match="truncated PNG"):
        image_size(tmp_path / "trunc.png")


# -------------------------------------------------------------------------------------------- areas


def test_quad_area_matches_shapely_any_vertex_order():
    from shapely.geometry import Polygon

    rng = np.random.default_rng(0)
    for _ in range(200):
        ang = np.sort(rng.uniform(0, 2 * np.pi, 4))
        pts = np.stack([50 + 30 * np.cos(ang) * rng.uniform(0.5, 1.5), 40 + 10 * np.sin(ang)], 1)
        ref = Polygon(pts).area
        shuffled = pts[rng.permutation(4)]  # may be a bow-tie: its quad area is still the hull's
        assert quad_area(shuffled.reshape(1, 8))[0] == pytest.approx(ref, rel=1e-9)
    assert quad_area(np.array([[1, 1, 1, 1, 1, 5, 1, 5]], float))[0] == 0
    assert np.isnan(quad_area(np.array([[0, 0, np.nan, 0, 1, 1, 0, 1]]))[0])


# ---------------------------------------------------------------------------------------- data YAML


def test_load_data_yaml_dota8(shared_data):
    y = shared_data / "dota8" / "dota8.yaml"
    d = load_data_yaml(y)
    assert d["path"] == str(y.parent)
    assert d["train"] == str(y.parent / "images" / "train")
    assert d["val"] == str(y.parent / "images" / "val")
    assert "test" not in d
    assert d["names"][2] == "storage tank" and len(d["names"]) == 15 and d["nc"] == 15
    assert d["yaml_file"] == str(y)
    assert load_data_yaml(d) == d  # idempotent on its own output


def _tiny_dataset(root: Path, names=("a", "b")) -> None:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        _write_image(root / "images" / split / "im0.png", 32, 48)


def test_load_data_yaml_paths_names_and_errors(tmp_path):
    ds = tmp_path / "ds"
    _tiny_dataset(ds)
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    y = cfg / "d.yaml"
    y.write_text("path: ../ds\ntrain: [images/train, images/val]\nval: images/val\nnames: dota1.5\n")
    d = load_data_yaml(y)
    assert d["path"] == str(ds)
    assert d["train"] == [str(ds / "images/train"), str(ds / "images/val")]
    assert len(d["names"]) == 16 and d["names"][-1] == "container-crane"

    # no 'path': the YAML's folder is the root; names as a dict with string ids
    (ds / "d2.yaml").write_text("train: images/train\nval: images/val\nnames: {'1': b, '0': a}\n")
    assert load_data_yaml(ds / "d2.yaml")["names"] == ["a", "b"]

    with pytest.raises(InputError, match="nope.yaml"):
        load_data_yaml(tmp_path / "nope.yaml")
    (ds / "bad.yaml").write_text("train: images/train\nval: images/missing\nnames: [a]\n")
    with pytest.raises(InputError, match=r"bad\.yaml.*images/missing"):
        load_data_yaml(ds / "bad.yaml")
    (ds / "gap.yaml").write_text("train: images/train\nnames: {0: a, 2: b}\n")
    with pytest.raises(InputError, match="without gaps"):
        load_data_yaml(ds / "gap.yaml")
    (ds / "nc.yaml").write_text("train: images/train\nnc: 3\nnames: [a, b]\n")
    with pytest.raises(InputError, match="'nc' is 3"):
        load_data_yaml(ds / "nc.yaml")
    (ds / "syntax.yaml").write_text("train: images/train\nnames: [a, b\n")
    with pytest.raises(InputError, match=r"syntax\.yaml:\d+"):
        load_data_yaml(ds / "syntax.yaml")
    with pytest.raises(InputError, match="root 'path' not found"):
        load_data_yaml({"path": str(tmp_path / "missing"), "train": "x", "names": ["a"]})


def test_split_from_txt_list(tmp_path):
    ds = tmp_path / "ds"
    _tiny_dataset(ds)
    (ds / "labels" / "val" / "im0.txt").write_text("1 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5\n")
    (ds / "list.txt").write_text("./images/val/im0.png\n")
    samples, rep = load_split({"path": str(ds), "val": "list.txt", "names": ["a", "b"]}, "val", cache=False)
    assert [s.im_file for s in samples] == [str(ds / "images" / "val" / "im0.png")]
    assert samples[0].cls.tolist() == [1]
    np.testing.assert_allclose(samples[0].polys[0], [4.8, 3.2, 24, 3.2, 24, 16, 4.8, 16], rtol=1e-6)


# ----------------------------------------------------------------------------------- real DOTA data


def test_dota8_yolo_obb(shared_data):
    samples, rep = load_split(shared_data / "dota8" / "dota8.yaml", "train", cache=False, verbose=False)
    assert rep.label_format == "yolo" and rep.found == rep.used == 4 and rep.skipped_bad == 0
    by_name = {Path(s.im_file).name: s for s in samples}
    s = by_name["P0861__1024__0___1648.jpg"]
    assert s.shape == (1024, 1024)
    assert len(s) == 110 and (s.cls == 1).sum() == 105 and (s.cls == 7).sum() == 5
    assert s.polys.dtype == np.float32 and s.cls.dtype == np.int64 and s.difficult.dtype == np.int64
    # first line: "1 0.813477 0.523437 0.814453 0.504882 0.87207 0.504882 0.87207 0.524414"
    ref = np.array([0.813477, 0.523437, 0.814453, 0.504882, 0.87207, 0.504882, 0.87207, 0.524414]) * 1024
    np.testing.assert_allclose(s.polys[0], ref, rtol=1e-6)
    assert s.polys[:, 1::2].min() == pytest.approx(-74, abs=0.5)  # outside the tile, kept
    assert not s.difficult.any()
    assert rep.objects == sum(len(x) for x in samples)


def test_dota_demo_labeltxt(shared_data):
    data = {"path": str(shared_data / "dota_demo"), "train": "images", "names": "dota1.0"}
    samples, rep = load_split(data, "train", cache=False, verbose=False)
    assert rep.label_format == "labeltxt" and rep.found == rep.used == 4 and rep.orphans == 0
    got = {Path(s.im_file).stem: (len(s), int((s.difficult > 0).sum()), s.shape) for s in samples}
    assert got["P0003"] == (55, 13, (1023, 1147))
    assert got["P0004"] == (107, 34, (1464, 824))
    assert got["P0005"] == (130, 21, (977, 884))
    # P1478 has 295 lines; two are zero-area boxes on the tile edge (lines 2 and 3) and are dropped
    assert got["P1478__1__853___962"][0] == 293
    assert rep.dropped_degenerate == 2
    tile = str(shared_data / "dota_demo" / "labelTxt" / "P1478__1__853___962.txt")
    assert rep.messages == [
        f"{tile}:2: degenerate polygon (area 0 px^2) dropped",
        f"{tile}:3: degenerate polygon (area 0 px^2) dropped",
    ]
    p3 = next(s for s in samples if s.im_file.endswith("P0003.png"))
    # line 3 (after two header lines): "937.0 913.0 921.0 912.0 923.0 874.0 940.0 875.0 small-vehicle 0"
    np.testing.assert_array_equal(p3.polys[0], [937, 913, 921, 912, 923, 874, 940, 875])
    assert p3.cls[0] == DOTA_V1_0.index("small-vehicle") and p3.cls[1] == DOTA_V1_0.index("large-vehicle")


# ------------------------------------------------------------------------------------------ bad input


def _bad_yolo_dataset(root: Path) -> dict:
    im, lb = root / "images" / "train", root / "labels" / "train"
    im.mkdir(parents=True)
    lb.mkdir(parents=True)
    for stem in ("good", "corrupt", "fields", "abc", "unknown", "degen", "background", "empty"):
        _write_image(im / f"{stem}.png", 64, 80)
    (im / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    ok = "0 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5"
    (lb / "good.txt").write_text(f"{ok}\n1 0.2 0.2 0.6 0.2 0.6 0.6 0.2 0.6\n")
    (lb / "corrupt.txt").write_text(f"{ok}\n")
    (lb / "fields.txt").write_text(f"{ok}\n0 0.1 0.1 0.5 0.1 0.5 0.5 0.1\n")  # 8 fields on line 2
    (lb / "abc.txt").write_text(f"{ok}\n\n0 0.1 abc 0.5 0.1 0.5 0.5 0.1 0.5\n")  # line 3
    (lb / "unknown.txt").write_text(f"{ok}\n{ok}\n{ok}\n7 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5\n")  # line 4
    (lb / "degen.txt").write_text(
        f"{ok}\n0 0.5 0.5 0.5 0.5 0.5 0.5 0.5 0.5\n0 nan 0.1 0.5 0.1 0.5 0.5 0.1 0.5\n"
    )
    (lb / "empty.txt").write_text("")
    (lb / "orphan.txt").write_text(f"{ok}\n")
    return {"path": str(root), "train": "images/train", "names": ["small vehicle", "plane"]}


def test_bad_samples_are_reported_with_file_and_line(tmp_path):
    data = _bad_yolo_dataset(tmp_path)
    samples, rep = load_split(data, "train", cache=False, verbose=False)
    lb = tmp_path / "labels" / "train"
    assert rep.found == 8
    assert rep.skipped_bad == 4  # corrupt, fields, abc, unknown
    assert rep.used == 4 and sorted(Path(s.im_file).stem for s in samples) == [
        "background",
        "degen",
        "empty",
        "good",
    ]
    assert rep.background == 2 and rep.orphans == 1 and rep.dropped_degenerate == 2
    msgs = "\n".join(rep.messages)
    assert str(tmp_path / "images" / "train" / "corrupt.png") + ": corrupt" in msgs
    assert f"{lb / 'fields.txt'}:2: expected 9 fields" in msgs
    assert f"{lb / 'abc.txt'}:3: non-numeric value 'abc'" in msgs
    assert f"{lb / 'unknown.txt'}:4: unknown class id '7'" in msgs
    assert f"{lb / 'degen.txt'}:2: degenerate polygon (area 0 px^2) dropped" in msgs
    assert f"{lb / 'degen.txt'}:3: degenerate polygon (NaN/inf coordinate) dropped" in msgs
    assert f"{lb / 'orphan.txt'}: label file without an image" in msgs
    assert len(rep.messages) == 4 + 2 + 1
    degen = next(s for s in samples if s.im_file.endswith("degen.png"))
    assert len(degen) == 1
    good = next(s for s in samples if s.im_file.endswith("good.png"))
    np.testing.assert_allclose(good.polys[1], [16, 12.8, 48, 12.8, 48, 38.4, 16, 38.4], rtol=1e-6)
    text = rep.summary(max_messages=2)
    assert "8 images found, 4 used (2 background), 4 skipped as bad" in text
    assert "2 degenerate polygons dropped, 1 orphan label file;" in text and "... and 5 more messages" in text


def test_bad_labeltxt_dataset(tmp_path):
    im, lb = tmp_path / "images", tmp_path / "labelTxt"
    im.mkdir()
    lb.mkdir()
    for stem in ("ok", "unknown", "short", "eight", "abc", "nolabel"):
        _write_image(im / f"{stem}.png", 40, 40)
    (lb / "ok.txt").write_text(
        "imagesource:GoogleEarth\ngsd:0.1\n1 1 20 1 20 9 1 9 small_vehicle 1\n2 2 30 2 30 30 2 30 Plane\n"
    )
    (lb / "unknown.txt").write_text("1 1 20 1 20 9 1 9 plane 0\n\n1 1 20 1 20 9 1 9 spaceship 0\n")
    # 9 fields where 10 are expected (a coordinate is missing): the name lands among the coordinates
    (lb / "short.txt").write_text("1 1 20 1 20 9 1 plane 0\n")
    (lb / "eight.txt").write_text("\n1 1 20 1 20 9 1 9\n")  # no class name at all
    (lb / "abc.txt").write_text("1 1 20 1 20 9 1 9 plane 0\n1 1 20 abc 20 9 1 9 plane 0\n")
    (lb / "orphan.txt").write_text("1 1 20 1 20 9 1 9 plane 0\n")
    data = {"path": str(tmp_path), "train": "images", "names": "dota1.0"}
    samples, rep = load_split(data, "train", cache=False, verbose=False)
    assert rep.label_format == "labeltxt"
    assert (rep.found, rep.used, rep.skipped_bad, rep.background, rep.orphans) == (6, 2, 4, 1, 1)
    msgs = "\n".join(rep.messages)
    assert f"{lb / 'unknown.txt'}:3: unknown class name 'spaceship'" in msgs
    assert f"{lb / 'short.txt'}:1: non-numeric coordinate" in msgs
    assert f"{lb / 'eight.txt'}:2: expected" in msgs
    assert f"{lb / 'abc.txt'}:2: non-numeric" in msgs
    assert f"{lb / 'orphan.txt'}: label file without an image" in msgs
    ok = next(s for s in samples if s.im_file.endswith("ok.png"))
    assert ok.cls.tolist() == [10, 0] and ok.difficult.tolist() == [1, 0]  # small_vehicle, Plane


def test_no_images_and_no_split(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    with pytest.raises(InputError, match="no images"):
        load_split({"path": str(tmp_path), "train": "images/train", "names": ["a"]}, "train")
    with pytest.raises(InputError, match="no 'val' split"):
        load_split({"path": str(tmp_path), "train": "images/train", "names": ["a"]}, "val")


def test_images_without_any_label_folder_are_background(tmp_path):
    (tmp_path / "images").mkdir()
    _write_image(tmp_path / "images" / "a.png", 16, 16)
    samples, rep = load_split(
        {"path": str(tmp_path), "train": "images", "names": ["a"]}, "train", verbose=False
    )
    assert rep.label_format is None and rep.background == 1 and len(samples) == 1 and len(samples[0]) == 0
    assert rep.notes and not (tmp_path / "labels").exists()


# ---------------------------------------------------------------------------------------------- cache


@pytest.fixture
def dota8_copy(shared_data, tmp_path) -> Path:
    dst = tmp_path / "dota8"
    shutil.copytree(shared_data / "dota8", dst)
    for p in [dst, *dst.rglob("*")]:  # the shared copy is read-only; a user's working copy is not
        p.chmod(p.stat().st_mode | 0o200)
    return dst / "dota8.yaml"


def test_cache_not_written_into_read_only_data(dota8_copy):
    labels_dir = dota8_copy.parent / "labels"
    labels_dir.chmod(0o555)
    try:
        _, r = load_split(dota8_copy, "train", verbose=False)
    finally:
        labels_dir.chmod(0o755)
    assert r.cache_file is None and not (labels_dir / "train.cache").exists()
    assert any("read-only" in n for n in r.notes)


def _count_parses(monkeypatch) -> list:
    calls = []
    real = labels._parse_label_file

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(labels, "_parse_label_file", counting)
    return calls


def _same(a: list, b: list) -> None:
    assert [s.im_file for s in a] == [s.im_file for s in b]
    for x, y in zip(a, b):
        assert x.shape == y.shape
        for f in ("polys", "cls", "difficult"):
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
            assert getattr(x, f).dtype == getattr(y, f).dtype


def test_cache_hit_and_invalidation(dota8_copy, monkeypatch):
    calls = _count_parses(monkeypatch)
    s1, r1 = load_split(dota8_copy, "train", verbose=False)
    assert len(calls) == 4 and not r1.from_cache
    cache_file = dota8_copy.parent / "labels" / "train.cache"
    assert r1.cache_file == str(cache_file) and cache_file.is_file()
    with np.load(cache_file, allow_pickle=False) as z:  # plain arrays, no pickled objects
        assert int(z["version"]) == cache_mod.CACHE_VERSION

    s2, r2 = load_split(dota8_copy, "train", verbose=False)
    assert len(calls) == 4 and r2.from_cache  # no parsing the second time
    _same(s1, s2)
    assert (r2.found, r2.used, r2.objects) == (r1.found, r1.used, r1.objects)

    # a changed label file invalidates the cache
    lb = dota8_copy.parent / "labels" / "train" / "P1142__1024__0___824.txt"
    lb.write_text(lb.read_text() + "3 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2\n")
    s3, r3 = load_split(dota8_copy, "train", verbose=False)
    assert len(calls) == 8 and not r3.from_cache and r3.objects == r1.objects + 1

    # a new orphan label file (and its report line) also invalidates it; the messages are cached too
    (dota8_copy.parent / "labels" / "train" / "extra.txt").write_text("0 0 0 0 0 0 0 0 0\n")
    _, r4 = load_split(dota8_copy, "train", verbose=False)
    assert len(calls) == 12 and r4.orphans == 1
    _, r5 = load_split(dota8_copy, "train", verbose=False)
    assert len(calls) == 12 and r5.from_cache and r5.messages == r4.messages

    # a corrupt cache file is a miss, not an error
    cache_file.write_bytes(b"not a cache")
    _, r6 = load_split(dota8_copy, "train", verbose=False)
    assert len(calls) == 16 and not r6.from_cache
    # cache=False never reads or writes it
    load_split(dota8_copy, "train", cache=False, verbose=False)
    assert len(calls) == 20


def test_cache_keeps_bad_sample_report(tmp_path, monkeypatch):
    data = _bad_yolo_dataset(tmp_path)
    calls = _count_parses(monkeypatch)
    s1, r1 = load_split(data, "train", verbose=False)
    n = len(calls)
    s2, r2 = load_split(data, "train", verbose=False)
    assert len(calls) == n and r2.from_cache
    _same(s1, s2)
    for f in ("found", "used", "skipped_bad", "background", "orphans", "dropped_degenerate", "messages"):
        assert getattr(r1, f) == getattr(r2, f)


def test_unwritable_cache_falls_back_with_a_note(dota8_copy, monkeypatch):
    def refuse(path, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("obbslim.data.cache.atomic_write_bytes", refuse)
    samples, rep = load_split(dota8_copy, "val", verbose=False)
    assert len(samples) == 4 and rep.cache_file is None
    assert any("label cache not written" in n and "Permission denied" in n for n in rep.notes)


def test_summary_is_printed(tmp_path, capsys):
    data = _bad_yolo_dataset(tmp_path)
    load_split(data, "train", cache=False)
    err = capsys.readouterr().err
    assert "train: 8 images found" in err and "corrupt" in err
