"""Tiling (obbslim.data.split) and merging back (obbslim.data.merge), checked against the devkit's
window loop, shapely, and the official DOTA metric on a split-then-merged ground truth."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely.geometry as sg
from hypothesis import given, settings
from hypothesis import strategies as st

from obbslim.cli import main as cli_main
from obbslim.data.labeltxt import read_labeltxt, read_task1, write_labeltxt
from obbslim.data.merge import merge_detections, parse_tile_name, read_tile_detections
from obbslim.data.split import clip_objects, crop_tile, split_dataset, tile_name, tile_windows
from obbslim.errors import InputError, ObbslimError
from obbslim.eval.dota import evaluate_dota


def devkit_windows(w: int, h: int, size: int, gap: int) -> list[tuple[int, int]]:
    """The loop of the DOTA devkit's SplitSingle, transcribed."""
    slide, out, left = size - gap, [], 0
    while left < w:
        if left + size >= w:
            left = max(w - size, 0)
        up = 0
        while up < h:
            if up + size >= h:
                up = max(h - size, 0)
            out.append((left, up))
            if up + size >= h:
                break
            up += slide
        if left + size >= w:
            break
        left += slide
    return out


def shoelace(polys: np.ndarray) -> np.ndarray:
    x, y = polys[:, 0::2], polys[:, 1::2]
    return 0.5 * np.abs((x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y).sum(1))


def shoelace_signed(polys: np.ndarray) -> np.ndarray:
    x, y = polys[:, 0::2], polys[:, 1::2]
    return 0.5 * (x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y).sum(1)


def rect_quad(cx, cy, w, h, t) -> np.ndarray:
    u, v = np.array([np.cos(t), np.sin(t)]), np.array([-np.sin(t), np.cos(t)])
    c = np.array([cx, cy])
    a, b = u * w / 2, v * h / 2
    return np.concatenate([c + a + b, c - a + b, c - a - b, c + a - b])


# ----------------------------------------------------------------------------- window math
@settings(max_examples=150, deadline=None)
@given(w=st.integers(1, 5000), h=st.integers(1, 5000), size=st.integers(32, 1100), data=st.data())
def test_tile_windows_match_devkit_and_cover(w, h, size, data):
    gap = data.draw(st.integers(0, size - 1))
    wins = tile_windows(w, h, size, gap)
    assert wins == devkit_windows(w, h, size, gap)
    for n, starts in ((w, sorted({lf for lf, _ in wins})), (h, sorted({tp for _, tp in wins}))):
        assert starts[0] == 0 and starts[-1] == max(n - size, 0)  # first at 0, last flush with the border
        steps = np.diff(starts)
        assert (steps[:-1] == size - gap).all()  # stride size - gap, except into the last window
        assert (steps > 0).all() and (steps <= size - gap).all()  # no hole, no repeat
    assert len(wins) == len({lf for lf, _ in wins}) * len({tp for _, tp in wins})  # a full grid


def test_tile_windows_examples():
    assert tile_windows(1147, 1023, 1024, 200) == [(0, 0), (123, 0)]
    assert tile_windows(3000, 1024, 1024, 200) == [(0, 0), (824, 0), (1648, 0), (1976, 0)]
    assert tile_windows(500, 300, 1024, 200) == [(0, 0)]  # small image: one padded tile
    with pytest.raises(InputError):
        tile_windows(100, 100, 64, 64)


def test_crop_tile_pads_bottom_right():
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    t = crop_tile(img, 0, 0, 8)
    assert t.shape == (8, 8, 3) and (t[:5, :7] == img).all() and not t[5:].any() and not t[:, 7:].any()
    assert (crop_tile(img, 2, 1, 4) == img[1:5, 2:6]).all()


@settings(max_examples=60, deadline=None)
@given(
    name=st.text(st.sampled_from("Pab0_1-."), min_size=1, max_size=12).filter(lambda s: not s.endswith("_")),
    rate=st.sampled_from([0.5, 1.0, 1.5, 2.0, 0.25]),
    left=st.integers(0, 99999),
    top=st.integers(0, 99999),
)
def test_tile_name_round_trip(name, rate, left, top):
    assert parse_tile_name(tile_name(name, rate, left, top)) == (name, rate, left, top)


def test_parse_tile_name_forms():
    assert parse_tile_name("P1478__1__853___962") == ("P1478", 1.0, 853, 962)  # older devkit rate '1'
    assert parse_tile_name("P1478__1__853___962__1.0__0___24") == ("P1478__1__853___962", 1.0, 0, 24)
    assert parse_tile_name("/x/y/P0003__0.5__62___0.png") == ("P0003", 0.5, 62, 0)
    for bad in ("P0003", "P0003__1.0__12", "P0003__x__1___2"):
        with pytest.raises(InputError):
            parse_tile_name(bad)


# ----------------------------------------------------------------------------- clipping
def test_clip_hand_built():
    win = (0.0, 0.0, 100.0, 100.0)
    polys = np.array(
        [
            [10, 10, 30, 10, 30, 20, 10, 20],  # inside
            [80, 10, 180, 10, 180, 60, 80, 60],  # keeps 20/100 of its width
            [70, 10, 110, 10, 110, 60, 70, 60],  # keeps 30/40 = 0.75
            [150, 10, 180, 10, 180, 60, 150, 60],  # outside
            [50, 90, 110, 90, 110, 130, 50, 130],  # cut at a corner: keeps 50*10 / 60*40
        ],
        dtype=np.float64,
    )
    out, keep = clip_objects(polys, win)
    box = sg.box(*win)
    objs = [sg.Polygon(p.reshape(4, 2)) for p in polys]
    ref = [o.intersection(box).area / o.area for o in objs]
    np.testing.assert_allclose(keep, ref, atol=1e-12)
    np.testing.assert_allclose(keep, [1.0, 0.2, 0.75, 0.0, 500 / 2400])
    np.testing.assert_array_equal(out[0], polys[0])  # untouched
    np.testing.assert_allclose(out[1], [80, 10, 100, 10, 100, 60, 80, 60])  # same vertex order
    np.testing.assert_allclose(out[2], [70, 10, 100, 10, 100, 60, 70, 60])
    np.testing.assert_allclose(out[4], [50, 90, 100, 90, 100, 100, 50, 100])


def test_clip_pentagon_and_triangle_like_devkit():
    win = (0.0, 0.0, 100.0, 100.0)
    tri = np.array([[60, 60, 140, 60, 140, 140, 60, 140]], np.float64)  # corner (100,100): a square cut
    diamond = rect_quad(100, 50, 40, 40, np.pi / 4)[None]  # cut by x=100 through two vertices: triangle
    pent = rect_quad(90, 50, 40, 40, np.pi / 4)[None]  # cut off one corner: pentagon
    out, keep = clip_objects(np.concatenate([tri, diamond, pent]), win)
    np.testing.assert_allclose(out[0], [60, 60, 100, 60, 100, 100, 60, 100])
    np.testing.assert_allclose(keep[1], 0.5)
    q = sg.Polygon(out[1].reshape(4, 2))
    ref = sg.Polygon(diamond[0].reshape(4, 2)).intersection(sg.box(*win))
    assert abs(q.area - ref.area) < 1e-9 and q.symmetric_difference(ref).area < 1e-9  # exact triangle
    # pentagon (tip x=118.3 cut at x=100): the devkit replaces the ends of the shortest edge (one of
    # the two cut diamond edges, 10*sqrt2 long) by their midpoint
    r = 20 * np.sqrt(2)
    top, lft, bot = (90, 50 + r), (90 - r, 50), (90, 50 - r)
    cut_lo, cut_hi = (100, 50 - r + 10), (100, 50 + r - 10)
    options = [
        {top, lft, ((bot[0] + cut_lo[0]) / 2, (bot[1] + cut_lo[1]) / 2), cut_hi},
        {lft, bot, cut_lo, ((cut_hi[0] + top[0]) / 2, (cut_hi[1] + top[1]) / 2)},
    ]
    got = {tuple(np.round(v, 9)) for v in out[2].reshape(4, 2)}
    assert any(got == {tuple(np.round(v, 9)) for v in o} for o in options), got
    p5 = sg.Polygon(pent[0].reshape(4, 2)).intersection(sg.box(*win))
    assert np.isclose(keep[2], p5.area / 1600)


@settings(max_examples=80, deadline=None)
@given(
    cx=st.floats(-60, 160), cy=st.floats(-60, 160), w=st.floats(1, 150), h=st.floats(1, 80),
    t=st.floats(-np.pi, np.pi), win=st.tuples(st.floats(-20, 40), st.floats(-20, 40), st.floats(30, 150)),
)
def test_clip_matches_shapely(cx, cy, w, h, t, win):
    window = (win[0], win[1], win[0] + win[2], win[1] + win[2])
    quad = rect_quad(cx, cy, w, h, t)
    out, keep = clip_objects(quad[None], window)
    obj, box = sg.Polygon(quad.reshape(4, 2)), sg.box(*window)
    inter = obj.intersection(box)
    assert abs(keep[0] - inter.area / obj.area) < 1e-9
    if 0 < keep[0] < 1:
        q = sg.Polygon(out[0].reshape(4, 2))
        assert q.area > 0 and q.difference(inter).area < 1e-6 * obj.area  # inside the clipped part
        assert q.area >= 0.5 * inter.area - 1e-9  # and a fair part of it
        assert shoelace_signed(out[:1])[0] > 0  # oriented like the devkit (shapely orient sign=1)


# ----------------------------------------------------------------------------- dataset splitting
@pytest.fixture(scope="module")
def demo_split(shared_data, tmp_path_factory):
    dst = tmp_path_factory.mktemp("split512")
    summary = split_dataset(shared_data / "dota_demo", dst, size=512, gap=128, rates=(1.0,), workers=1,
                            progress=False)
    return shared_data / "dota_demo", dst, summary


def test_split_tiles_pixels_and_names(demo_split):
    src, dst, summary = demo_split
    assert summary["failed"] == [] and summary["tiles_skipped"] == 0
    n_tiles = 0
    for img_path in sorted((src / "images").glob("*.png")):
        img = cv2.imread(str(img_path))
        h, w = img.shape[:2]
        wins = tile_windows(w, h, 512, 128)
        n_tiles += len(wins)
        for left, top in wins[:: max(len(wins) // 3, 1)]:
            tile = cv2.imread(str(dst / "images" / f"{img_path.stem}__1.0__{left}___{top}.png"))
            assert tile.shape == (512, 512, 3)
            assert (tile == img[top : top + 512, left : left + 512]).all()
        lab = read_labeltxt(dst / "labelTxt" / f"{img_path.stem}__1.0__{wins[0][0]}___{wins[0][1]}.txt")
        assert lab.meta == read_labeltxt(src / "labelTxt" / f"{img_path.stem}.txt").meta  # header kept
    assert summary["tiles_written"] == n_tiles == len(list((dst / "images").iterdir()))
    assert len(list((dst / "labelTxt").iterdir())) == n_tiles


def test_every_object_is_in_some_tile(demo_split):
    src, dst, _ = demo_split
    copies: dict[str, list[np.ndarray]] = {}
    for f in (dst / "labelTxt").glob("*.txt"):
        image_id, rate, left, top = parse_tile_name(f.stem)
        lab = read_labeltxt(f)
        copies.setdefault(image_id, []).append((lab.polys + np.tile([left, top], 4)) / rate)
    n_whole = 0
    for gt_file in (src / "labelTxt").glob("*.txt"):
        gt = read_labeltxt(gt_file)
        allc = np.concatenate(copies[gt_file.stem])
        whole = (np.abs(gt.polys[:, None] - allc[None]).max(-1) < 1e-9).any(1)
        small = np.ptp(gt.polys[:, 0::2], 1).clip(min=np.ptp(gt.polys[:, 1::2], 1)) <= 128
        assert whole[small].all()  # anything no larger than the gap fits wholly in some tile
        n_whole += whole.sum()
        for p in gt.polys[~whole]:  # the rest is present clipped: some copy overlaps it
            obj = sg.Polygon(p.reshape(4, 2))
            assert any(obj.intersects(sg.Polygon(c.reshape(4, 2))) for c in allc)
    assert n_whole == 587  # every object of dota_demo is wholly inside some 512 tile


def _gt_as_detections(label_dir: Path) -> dict:
    """Tile labels as perfect detections: drop difficult=2 (too cut), score = area in the full image
    (so an untouched copy outranks a clipped copy of the same object in NMS)."""
    dets = {}
    for f in sorted(label_dir.glob("*.txt")):
        lab = read_labeltxt(f)
        m = lab.difficult != 2
        rate = parse_tile_name(f.stem)[1]
        dets[f.stem] = (lab.polys[m], shoelace(lab.polys[m]) / rate**2, np.array(lab.names, dtype=str)[m])
    return dets


@pytest.mark.parametrize("rates", [(1.0,), (0.5, 1.0)])
def test_split_then_merge_ground_truth_scores_map_1(shared_data, tmp_path, rates):
    src = shared_data / "dota_demo"
    summary = split_dataset(src, tmp_path / "split", size=1024, gap=200, rates=rates, workers=1,
                            progress=False)
    assert summary["failed"] == []
    # iou_thr 0.3, not the devkit's 0.1: two ground-truth cars in P1478 have min-area rectangles
    # overlapping 0.103 (their quads 0.025), and NMS works on rectangles. Copies of one object
    # overlap > 0.7 (less-kept copies are difficult=2 and dropped), so 0.3 still merges them.
    merged = merge_detections(_gt_as_detections(tmp_path / "split" / "labelTxt"), iou_thr=0.3,
                              task1_dir=tmp_path / "task1", out_dir=tmp_path / "per_image")
    for image_id, det in merged.items():
        gt = read_labeltxt(src / "labelTxt" / f"{image_id}.txt")
        want = gt.polys[gt.difficult != 2]
        assert len(det.polys) == len(want)
        np.testing.assert_allclose(np.unique(det.polys, axis=0), np.unique(want, axis=0), atol=1e-9)
    for metric in ("voc07", "voc12"):
        res = evaluate_dota(tmp_path / "task1", src / "labelTxt", metric=metric)
        assert res["mAP"] == pytest.approx(1.0, abs=1e-9), (metric, res["per_class"])
    back = read_tile_detections(tmp_path / "per_image")  # per-image files read back like tiles
    assert set(back) == set(merged)


def test_split_marks_cut_objects_difficult(tmp_path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    img = np.random.default_rng(0).integers(0, 255, (100, 150, 3), dtype=np.uint8)
    cv2.imwrite(str(src / "images" / "A.png"), img)
    polys = np.array([[50, 10, 80, 10, 80, 30, 50, 30], [10, 60, 40, 60, 40, 80, 10, 80]], np.float64)
    write_labeltxt(src / "labelTxt" / "A.txt", polys, ["ship", "plane"], [0, 1], meta={"gsd": "0.5"})
    s = split_dataset(src, tmp_path / "dst", size=64, gap=8, workers=1, progress=False)
    assert s["tiles_written"] == 6 and s["failed"] == []  # windows x: 0 56 86, y: 0 36
    lab = read_labeltxt(tmp_path / "dst" / "labelTxt" / "A__1.0__0___0.txt")
    assert lab.names == ["ship", "plane"] and lab.meta == {"gsd": "0.5"}
    # tile x 0..64: the ship keeps 14/30 <= 0.7 and the plane (y 60..80) 4/20 -> both difficult 2
    np.testing.assert_allclose(lab.polys, [[50, 10, 64, 10, 64, 30, 50, 30],
                                           [10, 60, 40, 60, 40, 64, 10, 64]])
    assert list(lab.difficult) == [2, 2]
    # tile x 56..120: the ship keeps 24/30 = 0.8 > 0.7 -> clipped, its own flag (0) kept
    lab = read_labeltxt(tmp_path / "dst" / "labelTxt" / "A__1.0__56___0.txt")
    np.testing.assert_allclose(lab.polys, [[0, 10, 24, 10, 24, 30, 0, 30]])
    assert lab.names == ["ship"] and list(lab.difficult) == [0]
    # tile y 36..100: the plane is whole (tile coordinates), flag 1 kept; the ship is outside
    lab = read_labeltxt(tmp_path / "dst" / "labelTxt" / "A__1.0__0___36.txt")
    np.testing.assert_allclose(lab.polys, [[10, 24, 40, 24, 40, 44, 10, 44]])
    assert lab.names == ["plane"] and list(lab.difficult) == [1]
    assert read_labeltxt(tmp_path / "dst" / "labelTxt" / "A__1.0__86___36.txt").names == []
    # keep_thr is inclusive: keeping exactly 0.8 with keep_thr=0.8 is difficult 2
    split_dataset(src, tmp_path / "dst08", size=64, gap=8, keep_thr=0.8, workers=1, progress=False)
    assert list(read_labeltxt(tmp_path / "dst08" / "labelTxt" / "A__1.0__56___0.txt").difficult) == [2]


def test_split_small_image_padded_and_rates(tmp_path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    img = np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    cv2.imwrite(str(src / "images" / "S.png"), img)
    write_labeltxt(src / "labelTxt" / "S.txt", np.array([[4, 4, 20, 4, 20, 10, 4, 10.0]]), ["car"], [0])
    s = split_dataset(src, tmp_path / "dst", size=64, gap=16, rates=(1, 0.5), workers=1, progress=False)
    assert s["tiles_written"] == 2
    t = cv2.imread(str(tmp_path / "dst" / "images" / "S__1.0__0___0.png"))
    assert t.shape == (64, 64, 3) and (t[:40, :60] == img).all() and not t[40:].any() and not t[:, 60:].any()
    half = cv2.imread(str(tmp_path / "dst" / "images" / "S__0.5__0___0.png"))
    assert (half[:20, :30] == cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)).all()
    np.testing.assert_allclose(read_labeltxt(tmp_path / "dst" / "labelTxt" / "S__0.5__0___0.txt").polys,
                               [[2, 2, 10, 2, 10, 5, 2, 5]])


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_split_resumes_and_reports_bad_images(shared_data, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(shared_data / "dota_demo", src)
    (src / "images" / "BAD.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + bytes(8) + b"junk")
    (src / "images" / "NOLABEL.jpg").write_bytes(b"not an image")
    dst = tmp_path / "dst"
    s1 = split_dataset(src, dst, size=768, gap=128, workers=2, progress=False)
    assert [Path(p).name for p, _ in s1["failed"]] == ["BAD.png", "NOLABEL.jpg"]
    assert all("cannot read image" in why or "label" in why for _, why in s1["failed"])
    before = _mtimes(dst)
    assert s1["tiles_written"] > 0 and len(before) == 2 * s1["tiles_written"]
    s2 = split_dataset(src, dst, size=768, gap=128, workers=1, progress=False)
    assert s2["tiles_written"] == 0 and s2["tiles_skipped"] == s1["tiles_written"]
    assert _mtimes(dst) == before
    victim = dst / "images" / "P0004__1.0__0___696.png"
    victim.unlink()
    s3 = split_dataset(src, dst, size=768, gap=128, workers=1, progress=False)
    assert s3["tiles_written"] == 1
    after = _mtimes(dst)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {"P0004__1.0__0___696.png", "P0004__1.0__0___696.txt"}


def test_split_images_only_and_errors(shared_data, tmp_path):
    src = tmp_path / "test"
    shutil.copytree(shared_data / "dota_demo" / "images", src / "images")
    s = split_dataset(src, tmp_path / "dst", size=1024, gap=200, images_only=True, workers=1, progress=False)
    assert s["failed"] == [] and s["tiles_written"] == 6 and not (tmp_path / "dst" / "labelTxt").exists()
    with pytest.raises(InputError, match="labelTxt"):
        split_dataset(src, tmp_path / "dst2", progress=False)
    with pytest.raises(InputError, match="not found"):
        split_dataset(tmp_path / "nope", tmp_path / "dst3", progress=False)
    with pytest.raises(ObbslimError, match="--gap 100 must be smaller than --size 100"):
        split_dataset(src, tmp_path / "dst4", size=100, gap=100, images_only=True, progress=False)


def test_cli_split(shared_data, tmp_path, capsys):
    rc = cli_main(["split", str(shared_data / "dota_demo"), str(tmp_path / "out"), "--size", "1024",
                   "--gap", "200", "--rates", "1.0", "--workers", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "6 tiles written" in out and "0 failed" in out
    assert (tmp_path / "out" / "labelTxt" / "P0004__1.0__0___440.txt").is_file()
    rc = cli_main(["split", str(tmp_path / "missing"), str(tmp_path / "out2")])
    err = capsys.readouterr().err
    assert rc == 2 and "missing" in err and "not found" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- merging
def test_merge_offsets_rates_nms_and_task1(tmp_path):
    box = np.array([[10.0, 20.0, 30.0, 10.0, 0.3]])  # rbox in the first tile
    tiles = {
        "A__1.0__0___0": (box, [0.9], [1]),
        "A__1.0__100___50": (box - [[100, 50, 0, 0, 0]] + [[0.5, 0, 0, 0, 0]], [0.8], [1]),  # same object
        "A__0.5__0___0": (box * [[0.5, 0.5, 0.5, 0.5, 1]], [0.7], [0]),  # other class, same place
        "B__1.0__24___0": (np.zeros((0, 5)), np.zeros(0), np.zeros(0, np.int64)),
    }
    merged = merge_detections(tiles, classes=["plane", "ship"], task1_dir=tmp_path / "t1",
                              out_dir=tmp_path / "o")
    assert set(merged) == {"A", "B"} and len(merged["B"].scores) == 0
    a = merged["A"]
    np.testing.assert_allclose(a.scores, [0.9, 0.7])
    np.testing.assert_array_equal(a.cls, [1, 0])
    np.testing.assert_allclose(a.rboxes[:, :4], [[10, 20, 30, 10], [10, 20, 30, 10]], atol=1e-9)
    ids, scores, polys = read_task1(tmp_path / "t1" / "Task1_ship.txt")
    assert ids == ["A"] and scores.tolist() == [0.9]
    np.testing.assert_allclose(polys, a.polys[:1])
    assert read_task1(tmp_path / "t1" / "Task1_plane.txt")[0] == ["A"]
    back = read_tile_detections(tmp_path / "o")
    np.testing.assert_allclose(back["A"][0], a.polys)
    assert back["A"][2].tolist() == ["ship", "plane"] and back["B"][0].shape == (0, 8)


def test_merge_max_det_is_the_best_of_the_full_merge():
    rng = np.random.default_rng(0)
    tiles = {}
    for left in (0, 80, 160):  # overlapping tiles seeing the same objects, shifted and rescored
        r = np.c_[rng.uniform(0, 100, (60, 2)) + [200 - left, 0], rng.uniform(8, 30, (60, 2)),
                  rng.uniform(-1.5, 1.5, 60)]  # fmt: skip
        tiles[f"A__1.0__{left}___0"] = (r, rng.uniform(0, 1, 60), rng.integers(0, 3, 60))
    full = merge_detections(tiles)["A"]
    top = merge_detections(tiles, max_det=25)["A"]
    assert len(full.scores) > 25 and len(top.scores) == 25
    np.testing.assert_array_equal(top.rboxes, full.rboxes[:25])
    np.testing.assert_array_equal(top.cls, full.cls[:25])


def test_merge_polys_by_name_and_task1_input(tmp_path):
    q = np.array([[0, 0, 20, 0, 20, 10, 0, 10.0], [300, 300, 320, 300, 320, 310, 300, 310]])
    tiles = {
        "I__1.0__10___10": (q, [0.5, 0.6], ["car", "car"]),
        "I__1.0__12___10": (q[:1] - [2, 0] * 4, [0.4], ["car"]),
    }
    merged = merge_detections(tiles)  # default iou 0.1: the copy at the same full-image place goes
    np.testing.assert_allclose(merged["I"].polys, q[::-1] + 10)
    assert merged["I"].cls.tolist() == ["car", "car"]
    # the devkit's layout: Task1 files whose image ids are tile names
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "Task1_car.txt").write_text("I__1.0__10___10 0.5 0 0 20 0 20 10 0 10\n"
                                                  "I__1__12___10 0.4 -2 0 18 0 18 10 -2 10\n")
    dets = read_tile_detections(tmp_path / "d")
    assert sorted(dets) == ["I__1.0__10___10", "I__1__12___10"]
    assert len(merge_detections(dets)["I"].scores) == 1
    with pytest.raises(InputError, match="classes"):
        merge_detections({"I__1.0__0___0": (q, [1, 1], [0, 0])}, task1_dir=tmp_path / "x")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "I__1.0__0___0.txt").write_text("1 2 3 4 5 6 7 8 car\n")
    with pytest.raises(InputError, match=r"I__1.0__0___0.txt:1"):
        read_tile_detections(tmp_path / "e")
