"""The torch Dataset and loaders: item format, letterboxed targets, rect validation batches,
reproducibility for a seed (any number of workers), the full augmentation pipeline checked with pixel
masks, unreadable images, and a real dota8 batch."""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np
import pytest
import torch

from obbslim.data.dataset import OBBDataset, build_dataloader, collate_fn, set_epoch
from obbslim.data.labels import Sample
from obbslim.errors import InputError
from obbslim.ops import poly2rbox, rbox2poly

SIZES = [(128, 192), (192, 128), (160, 160), (96, 200), (200, 120), (144, 176)]
HUES = [k * 15.0 for k in range(12)]  # object k of image j has hue HUES[2 j + k] and class 2 j + k
IMGSZ = 256


def hue_bgr(hue: float) -> tuple[int, int, int]:
    px = np.array([[[hue, 255, 255]]], np.uint8)
    return tuple(int(v) for v in cv2.cvtColor(px, cv2.COLOR_HSV2BGR)[0, 0])


def poly_mask(poly, shape) -> np.ndarray:
    """Pixels whose centre lies inside the polygon (corner coordinates)."""
    m = np.zeros(shape[:2], np.uint8)
    pts = np.round((np.asarray(poly, np.float64).reshape(4, 2) - 0.5) * 16).astype(np.int32)
    cv2.fillPoly(m, [pts], 1, shift=4)
    return m.astype(bool)


def hue_mask(img: np.ndarray, hue: float, tol: float = 5.0) -> np.ndarray:
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(np.float64)
    d = np.abs(hsv[:, :, 0] - hue)
    return (hsv[:, :, 1] > 40) & (np.minimum(d, 180 - d) <= tol)  # hsv_s may scale S by 0.3


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[Sample]:
    root = tmp_path_factory.mktemp("synth")
    out = []
    for j, (h, w) in enumerate(SIZES):
        rng = np.random.default_rng(j)
        g = cv2.GaussianBlur(rng.integers(40, 220, (h, w)).astype(np.uint8), (0, 0), 2)
        img = np.repeat(g[:, :, None], 3, 2)
        m = min(h, w)
        rb = np.array(
            [
                [0.33 * w, 0.35 * h, 0.36 * m, 0.14 * m, 0.5 * j - 1.2],
                [0.68 * w, 0.68 * h, 0.26 * m, 0.16 * m, 1.3 - 0.45 * j],
            ]
        )
        polys = rbox2poly(rb).astype(np.float32)
        for k in range(2):
            img[poly_mask(polys[k], (h, w))] = hue_bgr(HUES[2 * j + k])
        f = root / f"im{j}.png"
        cv2.imwrite(str(f), img)
        out.append(
            Sample(str(f), (h, w), polys, np.array([2 * j, 2 * j + 1], np.int64), np.array([0, j % 2]))
        )
    return out


def to_bgr(img: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(img.numpy().transpose(1, 2, 0)[:, :, ::-1])


def expected_targets(s: Sample, ratio_pad) -> np.ndarray:
    (rw, rh), (pw, ph) = ratio_pad
    p = s.polys.astype(np.float64).copy()
    p[:, 0::2] = p[:, 0::2] * rw + pw
    p[:, 1::2] = p[:, 1::2] * rh + ph
    return poly2rbox(p)


def check_objects(img: np.ndarray, targets: np.ndarray) -> int:
    """Each target's polygon covers the object of its colour (the connected pieces it touches)."""
    polys = rbox2poly(targets[:, 2:7].astype(np.float64))
    for t, poly in zip(targets, polys):
        pm = poly_mask(poly, img.shape)
        n, lab = cv2.connectedComponents(hue_mask(img, HUES[int(t[1])]).astype(np.uint8), connectivity=8)
        ids = np.unique(lab[pm])
        ids = ids[ids > 0]
        assert len(ids), f"no object of class {int(t[1])} under its box"
        obj = np.isin(lab, ids)
        grown = cv2.dilate(pm.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        cover = (obj & grown).sum() / obj.sum()
        assert cover >= 0.95, f"class {int(t[1])}: only {cover:.3f} of the object inside its box"
        if obj.sum() > 300:
            iou = (obj & pm).sum() / (obj | pm).sum()
            assert iou > 0.8, f"class {int(t[1])}: mask IoU {iou:.3f}"
    r = targets[:, 2:7]
    assert (r[:, 2] >= r[:, 3] - 1e-3).all()
    assert ((r[:, 4] >= -math.pi / 2) & (r[:, 4] < math.pi / 2)).all()
    return len(targets)


# --------------------------------------------------------------------------------------------- items


def test_item_format_and_letterboxed_targets(samples):
    ds = OBBDataset(samples, IMGSZ, augment=False)
    for i, s in enumerate(samples):
        img, t, f, hw0, ratio_pad = ds[i]
        assert img.dtype == torch.uint8 and img.shape == (3, IMGSZ, IMGSZ)
        assert t.dtype == torch.float32 and t.shape == (2, 7)
        assert f == s.im_file and hw0 == s.shape
        (rw, rh), pad = ratio_pad
        r = IMGSZ / max(s.shape)
        assert abs(rw - r) < 0.01 * r and abs(rh - r) < 0.01 * r
        assert t[:, 0].eq(0).all() and t[:, 1].tolist() == s.cls.tolist()
        np.testing.assert_allclose(t[:, 2:].numpy(), expected_targets(s, ratio_pad), atol=1e-3)
        check_objects(to_bgr(img), t.numpy())
    # RGB order: the first object of image 0 is pure red (hue 0) in BGR, so channel 0 is its red
    img, t, *_ = ds[0]
    cx, cy = (int(v) for v in t[0, 2:4])
    assert img[0, cy, cx] == 255 and img[2, cy, cx] == 0


def test_collate_sets_image_index(samples):
    ds = OBBDataset(samples, IMGSZ, augment=False)
    imgs, t, files, shapes, rps = collate_fn([ds[0], ds[1], ds[2]])
    assert imgs.shape == (3, 3, IMGSZ, IMGSZ)
    assert t[:, 0].tolist() == [0, 0, 1, 1, 2, 2]
    assert len(files) == len(shapes) == len(rps) == 3


def test_val_loader_rect_batches(samples):
    loader = build_dataloader(samples, "val", IMGSZ, batch_size=2, augment=False, workers=0)
    ds = loader.dataset
    ar = [s.shape[0] / s.shape[1] for s in ds.samples]
    assert ar == sorted(ar)
    n_targets, shapes = 0, set()
    for b, (imgs, t, files, _, rps) in enumerate(loader):
        H, W = imgs.shape[2:]
        shapes.add((H, W))
        assert H % 32 == 0 and W % 32 == 0
        resized = [[round(v * IMGSZ / max(s.shape)) for v in s.shape] for s in ds.samples[2 * b : 2 * b + 2]]
        h1, w1 = np.max(resized, 0)
        assert h1 <= H < h1 + 64 and w1 <= W < w1 + 64  # the smallest stride multiple (+ pad 0.5 stride)
        for k in range(len(imgs)):
            s = ds.samples[2 * b + k]
            assert files[k] == s.im_file
            tk = t[t[:, 0] == k]
            np.testing.assert_allclose(tk[:, 2:].numpy(), expected_targets(s, rps[k]), atol=1e-3)
            check_objects(to_bgr(imgs[k]), tk.numpy())
        n_targets += len(t)
    assert n_targets == sum(len(s.cls) for s in samples)
    assert len(shapes) > 1 and any(h != w for h, w in shapes)  # rectangular, not all square
    # no augmentation: the seed does not matter
    other = build_dataloader(samples, "val", IMGSZ, batch_size=2, augment=False, seed=9)
    a, b = next(iter(loader)), next(iter(other))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def batches(loader, n=2):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_same_seed_same_batches_any_workers(samples):
    kw = dict(imgsz=128, batch_size=3, augment=True, shuffle=True)
    a = batches(build_dataloader(samples, "train", workers=0, seed=3, **kw))
    b = batches(build_dataloader(samples, "train", workers=0, seed=3, **kw))
    c = batches(build_dataloader(samples, "train", workers=2, seed=3, **kw))
    d = batches(build_dataloader(samples, "train", workers=0, seed=4, **kw))
    for x, y in ((a, b), (a, c)):
        for bx, by in zip(x, y):
            assert torch.equal(bx[0], by[0]) and torch.equal(bx[1], by[1]) and bx[2] == by[2]
    assert not torch.equal(a[0][0], d[0][0])


def test_epochs_differ_and_set_epoch_repeats(samples):
    loader = build_dataloader(samples, "train", 128, 3, augment=True, workers=0, seed=1)
    e0 = next(iter(loader))
    e1 = next(iter(loader))
    assert not torch.equal(e0[0], e1[0])
    set_epoch(loader, 0)
    again = next(iter(loader))
    assert torch.equal(e0[0], again[0]) and torch.equal(e0[1], again[1])


def test_distributed_ranks_share_the_data(samples):
    seen = []
    for rank in (0, 1):
        loader = build_dataloader(samples, "train", 128, 2, augment=True, seed=0, rank=rank, world_size=2)
        seen += [i for _, i in loader.sampler]
    assert sorted(seen) == list(range(len(samples)))
    files = []
    for rank in (0, 1):  # rect validation: whole batches per rank
        loader = build_dataloader(samples, "val", 128, 2, augment=False, rank=rank, world_size=2)
        for _imgs, _t, f, *_ in loader:
            files += f
    assert sorted(files) == sorted(s.im_file for s in samples)


# ------------------------------------------------------------------------------- full augmentation


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mosaic", [1.0, 0.0])
def test_full_pipeline_keeps_objects_covered(samples, seed, mosaic):
    ds = OBBDataset(samples, IMGSZ, augment=True, hyp={"mosaic": mosaic}, seed=seed)
    total = 0
    for i in range(len(samples)):
        img, t, f, hw0, rp = ds[i]
        assert img.shape == (3, IMGSZ, IMGSZ) and t.shape[1] == 7
        assert (rp is None) == (mosaic == 1.0)
        total += check_objects(to_bgr(img), t.numpy())
    assert total > 0


def test_flipdiag_transposes_image_and_targets(samples):
    still = {"mosaic": 0.0, "degrees": 0.0, "translate": 0.0, "scale": 0.0, "hsv_h": 0.0, "hsv_s": 0.0,
             "hsv_v": 0.0, "flipud": 0.0, "fliplr": 0.0}  # fmt: skip
    a_img, a_t, *_ = OBBDataset(samples, IMGSZ, augment=True, hyp=still, seed=0)[2]
    b_img, b_t, *_ = OBBDataset(samples, IMGSZ, augment=True, hyp={**still, "flipdiag": 1.0}, seed=0)[2]
    assert len(a_t) > 0 and torch.equal(b_img, a_img.transpose(1, 2))
    torch.testing.assert_close(b_t[:, [3, 2, 4, 5]], a_t[:, 2:6], atol=1e-3, rtol=0)  # cx <-> cy, same sides
    turn = (b_t[:, 6] - (math.pi / 2 - a_t[:, 6]) + math.pi / 2) % math.pi - math.pi / 2
    assert turn.abs().max() < 1e-3  # theta -> pi/2 - theta (mod pi)
    assert check_objects(to_bgr(b_img), b_t.numpy()) > 0


def test_cached_images_give_the_same_items(samples):
    plain = OBBDataset(samples, 128, augment=True, seed=5)
    cached = OBBDataset(samples, 128, augment=True, seed=5, cache_images=True)
    assert cached._cache is not None and all(c is not None for c in cached._cache)
    for i in range(len(samples)):
        a, b = plain[i], cached[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2:] == b[2:]


@pytest.mark.parametrize("augment,hyp", [(True, {"mosaic": 1.0, "mixup": 0.5}),
                                         (True, {"mosaic": 0.0, "flipud": 0.5, "fliplr": 0.5}),
                                         (False, None)])  # fmt: skip
def test_cached_images_stay_untouched_by_augmentation(samples, augment, hyp):
    """Every epoch reads the same cached arrays: an in-place augmentation would change later epochs."""
    plain = OBBDataset(samples, 128, augment=augment, hyp=hyp, seed=3)
    cached = OBBDataset(samples, 128, augment=augment, hyp=hyp, seed=3, cache_images=True)
    assert cached.cache_bytes == sum(c[0].nbytes for c in cached._cache) > 0
    for epoch in (0, 1, 0):
        for i in range(len(samples)):
            a, b = plain[epoch, i], cached[epoch, i]
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_mixup_pipeline_runs(samples):
    ds = OBBDataset(samples, 128, augment=True, hyp={"mixup": 1.0}, seed=0)
    img, t, *_ = ds[0]
    assert img.shape == (3, 128, 128) and t.shape[1] == 7


def test_augmentation_actually_moves_objects(samples):
    plain = OBBDataset(samples, IMGSZ, augment=False)[2][1]
    aug = OBBDataset(samples, IMGSZ, augment=True, hyp={"mosaic": 0.0}, seed=0)[2][1]
    assert aug.shape != plain.shape or not torch.allclose(aug, plain, atol=1)


def test_background_image_has_no_targets(samples, tmp_path):
    f = tmp_path / "bg.png"
    cv2.imwrite(str(f), np.full((64, 96, 3), 90, np.uint8))
    bg = Sample(str(f), (64, 96), np.zeros((0, 8), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))
    for augment in (False, True):
        img, t, *_ = OBBDataset([bg], 64, augment=augment)[0]
        assert img.shape == (3, 64, 64) and t.shape == (0, 7)


def test_unreadable_image_is_replaced_and_counted(samples, tmp_path, caplog):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    s = list(samples[:2]) + [
        Sample(str(bad), (64, 64), samples[0].polys, samples[0].cls, samples[0].difficult)
    ]
    ds = OBBDataset(s, 128, augment=False)
    with caplog.at_level(logging.WARNING, logger="obbslim"):
        img, t, f, *_ = ds[2]
        ds[2]
    assert f == samples[0].im_file and ds.n_replaced == 2
    assert sum("bad.png" in r.getMessage() for r in caplog.records) == 1  # warned once
    with pytest.raises(InputError, match="bad.png"):
        OBBDataset([s[2]], 128)[0]
    with pytest.raises(InputError):
        OBBDataset([], 128)


# -------------------------------------------------------------------------------------- real dota8


def test_dota8_batches_load(shared_data):
    from obbslim.data.labels import load_data_yaml, load_split

    yaml_file = shared_data / "dota8" / "dota8.yaml"
    if not yaml_file.is_file():
        pytest.skip(f"{yaml_file} not found")
    d = load_data_yaml(yaml_file)
    for split in ("train", "val"):
        samples, _ = load_split(d, split, cache=False, verbose=False)
        assert len(samples) == 4
        loader = build_dataloader(samples, split, 256, 4, augment=False)
        imgs, t, files, shapes, _ = next(iter(loader))
        assert imgs.shape[:2] == (4, 3) and imgs.shape[2] % 32 == 0
        assert len(t) == sum(len(s.cls) for s in samples)
        assert set(t[:, 1].long().tolist()) <= set(range(len(d["names"])))
        assert all(hw == (1024, 1024) for hw in shapes)
    samples, _ = load_split(d, "train", cache=False, verbose=False)
    imgs, t, *_ = next(iter(build_dataloader(samples, "train", 256, 4, augment=True, seed=0)))
    assert imgs.shape == (4, 3, 256, 256) and t.shape[1] == 7 and len(t) > 0
    assert set(t[:, 0].long().tolist()) <= {0, 1, 2, 3}
