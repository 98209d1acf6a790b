"""Polygon augmentations: every transform keeps each object's pixels inside its transformed polygon
(checked with pixel masks of uniquely coloured objects), keeps the angle convention and drops the
objects it should."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obbslim.cfg import load_hyp
from obbslim.data.augment import (
    affine_matrix,
    augment_hsv,
    filter_polys,
    flip_diag,
    flip_lr,
    flip_ud,
    letterbox,
    letterbox_polys,
    mixup,
    mosaic4,
    random_affine,
    to_rboxes,
    warp_affine,
)
from obbslim.errors import InputError
from obbslim.ops import poly2rbox, poly_area, rbox2poly

# ----------------------------------------------------------------------------------------- helpers


def hue_bgr(hue: float) -> tuple[int, int, int]:
    """Fully saturated BGR colour of an OpenCV hue (0..180)."""
    px = np.array([[[hue, 255, 255]]], np.uint8)
    return tuple(int(v) for v in cv2.cvtColor(px, cv2.COLOR_HSV2BGR)[0, 0])


def poly_mask(poly: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside the polygon (corner coordinates: pixel i spans [i, i+1))."""
    m = np.zeros(shape[:2], np.uint8)
    pts = np.round((np.asarray(poly, np.float64).reshape(4, 2) - 0.5) * 16).astype(np.int32)
    cv2.fillPoly(m, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return m.astype(bool)


def scene(h: int, w: int, rboxes: np.ndarray, hues: list[float], seed: int = 0):
    """A grey textured image (saturation 0) with one filled rotated rectangle per hue."""
    rng = np.random.default_rng(seed)
    g = cv2.GaussianBlur(rng.integers(40, 220, (h, w)).astype(np.uint8), (0, 0), 2)
    img = np.repeat(g[:, :, None], 3, 2)
    polys = rbox2poly(np.asarray(rboxes, np.float64)).astype(np.float32)
    for p, hue in zip(polys, hues):
        img[poly_mask(p, (h, w))] = hue_bgr(hue)
    return img, polys


def hue_mask(img: np.ndarray, hue: float, tol: float = 6.0) -> np.ndarray:
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(np.float64)
    d = np.abs(hsv[:, :, 0] - hue)
    d = np.minimum(d, 180 - d)
    return (hsv[:, :, 1] > 40) & (d <= tol)  # hsv_s may scale S by 0.3


def check_covered(img, poly, hue, min_cover=0.95, min_iou=0.8, tol=6.0, obj=None):
    """>= min_cover of the object's pixels inside the polygon (1 px tolerance), mask IoU > min_iou."""
    obj = hue_mask(img, hue, tol) if obj is None else obj
    pm = poly_mask(poly, img.shape)
    assert obj.sum() > 0, "object not visible"
    grown = cv2.dilate(pm.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    cover = (obj & grown).sum() / obj.sum()
    assert cover >= min_cover, f"only {cover:.3f} of the object lies inside its polygon"
    if obj.sum() > 300:
        iou = (obj & pm).sum() / (obj | pm).sum()
        assert iou > min_iou, f"polygon/object mask IoU {iou:.3f}"


HUES = [0.0, 30.0, 60.0, 90.0, 120.0, 150.0]
# three objects well inside a 160x224 (h, w) image, any rotation about the centre keeps them inside
RB = np.array([[112, 80, 50, 20, 0.3], [62, 62, 34, 20, -1.1], [158, 104, 36, 26, 1.4]], np.float64)


@pytest.fixture(scope="module")
def img3():
    return scene(160, 224, RB, HUES[:3])


def angle_diff(a, b):
    """a - b wrapped to [-pi/2, pi/2) (theta is defined modulo pi)."""
    return (np.asarray(a) - np.asarray(b) + math.pi / 2) % math.pi - math.pi / 2


def assert_convention(r: np.ndarray) -> None:
    assert (r[:, 2] >= r[:, 3] - 1e-4).all()
    assert (r[:, 4] >= -math.pi / 2).all() and (r[:, 4] < math.pi / 2).all()


# ---------------------------------------------------------------------------------------- letterbox


@pytest.mark.parametrize(
    "new_shape,auto,scaleup",
    [(256, False, True), ((160, 288), False, True), (256, True, True), (512, False, False)],
)
def test_letterbox_covers_objects(img3, new_shape, auto, scaleup):
    img, polys = img3
    out, ratio, pad = letterbox(img, new_shape, auto=auto, scaleup=scaleup)
    p = letterbox_polys(polys, ratio, pad)
    h, w = out.shape[:2]
    if auto:
        # the smallest stride-multiple rectangle around the resized image
        assert h % 32 == 0 and w % 32 == 0
        assert 0 <= h - round(160 * ratio[1]) < 32 and 0 <= w - round(224 * ratio[0]) < 32
    else:
        assert (h, w) == ((new_shape, new_shape) if isinstance(new_shape, int) else new_shape)
    if not scaleup:
        assert ratio == (1.0, 1.0)
    assert all(isinstance(v, int) for v in pad)
    # the image sits at pad with the size given by ratio: padding is grey 114 around it
    assert (out[: pad[1]] == 114).all() and (out[:, : pad[0]] == 114).all()
    for k in range(3):
        check_covered(out, p[k], HUES[k])


def test_letterbox_ratio_and_pad_values():
    img = np.zeros((100, 200, 3), np.uint8)
    out, ratio, pad = letterbox(img, 256)
    assert out.shape == (256, 256, 3)
    assert ratio == (1.28, 1.28) and pad == (0, 64)
    p = letterbox_polys(np.array([[0, 0, 200, 0, 200, 100, 0, 100]], np.float32), ratio, pad)
    np.testing.assert_allclose(p, [[0, 64, 256, 64, 256, 192, 0, 192]])


# ------------------------------------------------------------------------------------ affine, flips


@pytest.mark.parametrize("angle", [0, 90, 180, -90, 33.3, -127.0, 61.7, 270])
@pytest.mark.parametrize("scale", [1.0, 0.8, 1.2])
def test_rotation_scale_covers_objects(img3, angle, scale):
    img, polys = img3
    M, out_size = affine_matrix(img.shape[:2], angle, scale)
    out, p = warp_affine(img, polys, M, out_size)
    assert out.shape[:2] == img.shape[:2]
    for k in range(3):
        check_covered(out, p[k], HUES[k])


def test_translate_and_border_covers_objects(img3):
    img, polys = img3
    M, out_size = affine_matrix(img.shape[:2], 20.0, 1.1, translate=(0.56, 0.42), border=(-20, -30))
    assert out_size == (120, 164)
    out, p = warp_affine(img, polys, M, out_size)
    assert out.shape[:2] == (120, 164)
    keep = filter_polys(p, out.shape)
    assert keep.any()
    for k in np.flatnonzero(keep):
        check_covered(out, p[k], HUES[k])


@pytest.mark.parametrize("seed", range(6))
def test_random_affine_covers_kept_objects(img3, seed):
    img, polys = img3
    rng = np.random.default_rng(seed)
    out, p, s = random_affine(img, polys, rng, degrees=180, translate=0.1, scale=0.25)
    assert 0.75 <= s <= 1.25
    keep = filter_polys(p, out.shape, area_before=poly_area(polys), scale=s)
    for k in np.flatnonzero(keep):
        check_covered(out, p[k], HUES[k])


@pytest.mark.parametrize("flip", [flip_lr, flip_ud])
def test_flips_cover_objects(img3, flip):
    img, polys = img3
    out, p = flip(img, polys)
    for k in range(3):
        check_covered(out, p[k], HUES[k])
    back, p2 = flip(out, p)
    np.testing.assert_array_equal(back, img)
    np.testing.assert_allclose(p2, polys, atol=1e-4)


def test_flip_diag_covers_objects_and_is_its_own_inverse():
    img, polys = scene(224, 224, RB, HUES[:3])
    out, p = flip_diag(img, polys)
    assert out.shape == img.shape and out[10, 200].tolist() == img[200, 10].tolist()  # pixel (x, y) -> (y, x)
    for k in range(3):
        check_covered(out, p[k], HUES[k])
    back, p2 = flip_diag(out, p)
    np.testing.assert_array_equal(back, img)
    np.testing.assert_allclose(p2, polys, atol=1e-4)
    with pytest.raises(ValueError, match="square"):
        flip_diag(np.zeros((160, 224, 3), np.uint8), polys)


def test_hsv_changes_colours_not_geometry(img3):
    img, polys = img3
    assert augment_hsv(img, np.random.default_rng(0), 0, 0, 0) is img
    out = augment_hsv(img, np.random.default_rng(1), 0.015, 0.7, 0.4)
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)
    for k in range(3):  # hue moves by at most 0.015 * 180 = 2.7
        check_covered(out, polys[k], HUES[k], tol=6)
    a = augment_hsv(img, np.random.default_rng(5), 0.015, 0.7, 0.4)
    b = augment_hsv(img, np.random.default_rng(5), 0.015, 0.7, 0.4)
    np.testing.assert_array_equal(a, b)


# -------------------------------------------------------------------------------------------- mosaic

HUES8 = [k * 22.5 for k in range(8)]


def test_mosaic_covers_kept_objects_and_drops_off_canvas():
    size = 128
    imgs = []
    for j in range(4):
        h, w = [(128, 128), (96, 128), (128, 80), (64, 128)][j]
        rb = np.array([[w * 0.35, h * 0.4, 30, 14, 0.4 * j], [w * 0.7, h * 0.7, 24, 16, -0.7 + j]])
        img, polys = scene(h, w, rb, HUES8[2 * j : 2 * j + 2], seed=j)
        imgs.append((img, polys, np.array([2 * j, 2 * j + 1])))
    kept_any = False
    for seed in range(8):
        rng = np.random.default_rng(seed)
        canvas, p, c = mosaic4(lambda i: imgs[i], [0, 1, 2, 3], size, rng)
        assert canvas.shape == (2 * size, 2 * size, 3)
        cx, cy = p[:, 0::2].mean(1), p[:, 1::2].mean(1)
        assert ((cx >= 0) & (cx < 2 * size) & (cy >= 0) & (cy < 2 * size)).all()
        for k in range(len(p)):
            check_covered(canvas, p[k], HUES8[c[k]], tol=5)
            kept_any = True
        # every object visible on the canvas with its centre on it was kept
        for cls_id in set(range(8)) - set(c.tolist()):
            m = hue_mask(canvas, HUES8[cls_id], tol=5)
            if m.sum() > 0.6 * 30 * 14:
                pytest.fail(f"object {cls_id} mostly visible but dropped (seed {seed})")
    assert kept_any


# ------------------------------------------------------------------------------------ angle convention

rbox_st = st.tuples(
    st.floats(40, 200),
    st.floats(40, 150),
    st.floats(12, 40),
    st.floats(0.2, 0.65),
    st.floats(-1.5707, 1.5707),
)


@settings(max_examples=60, deadline=None)
@given(rbox_st)
def test_flip_lr_negates_theta(rb):
    cx, cy, w, ratio, t = rb
    r = np.array([[cx, cy, w, w * ratio, t]])
    img = np.zeros((160, 256, 3), np.uint8)
    _, p = flip_lr(img, rbox2poly(r).astype(np.float32))
    r2 = to_rboxes(p)
    assert_convention(r2)
    np.testing.assert_allclose(r2[0, :4], [256 - cx, cy, w, w * ratio], atol=1e-2)
    assert abs(angle_diff(r2[0, 4], -t)) < 1e-3


@settings(max_examples=60, deadline=None)
@given(rbox_st)
def test_flip_ud_negates_theta(rb):
    cx, cy, w, ratio, t = rb
    r = np.array([[cx, cy, w, w * ratio, t]])
    img = np.zeros((160, 256, 3), np.uint8)
    _, p = flip_ud(img, rbox2poly(r).astype(np.float32))
    r2 = to_rboxes(p)
    assert_convention(r2)
    np.testing.assert_allclose(r2[0, :4], [cx, 160 - cy, w, w * ratio], atol=1e-2)
    assert abs(angle_diff(r2[0, 4], -t)) < 1e-3


@settings(max_examples=60, deadline=None)
@given(rbox_st)
def test_flip_diag_mirrors_theta_about_the_diagonal(rb):
    """(x, y) -> (y, x) turns a direction at angle t into pi/2 - t."""
    cx, cy, w, ratio, t = rb
    r = np.array([[cx, cy, w, w * ratio, t]])
    _, p = flip_diag(np.zeros((256, 256, 3), np.uint8), rbox2poly(r).astype(np.float32))
    r2 = to_rboxes(p)
    assert_convention(r2)
    np.testing.assert_allclose(r2[0, :4], [cy, cx, w, w * ratio], atol=1e-2)
    assert abs(angle_diff(r2[0, 4], math.pi / 2 - t)) < 1e-3


@settings(max_examples=60, deadline=None)
@given(rbox_st, st.floats(-360, 360))
def test_rotation_turns_theta(rb, angle):
    """cv2's positive angle turns the image counter-clockwise on screen; theta is clockwise-positive."""
    cx, cy, w, ratio, t = rb
    r = np.array([[cx, cy, w, w * ratio, t]])
    M, size = affine_matrix((160, 256), angle, 1.0)
    _, p = warp_affine(np.zeros((160, 256, 3), np.uint8), rbox2poly(r).astype(np.float32), M, size)
    r2 = to_rboxes(p)
    assert_convention(r2)
    np.testing.assert_allclose(r2[0, 2:4], [w, w * ratio], rtol=1e-3)
    assert abs(angle_diff(r2[0, 4], t - math.radians(angle))) < 1e-3


@pytest.mark.parametrize("angle", [30.0, -50.0, 90.0])
def test_rotation_sign_matches_pixels(angle):
    """The object's orientation measured from the warped pixels (image moments, y down) equals the theta
    of its warped polygon, so the polygon turns the same way as the picture."""
    img, polys = scene(160, 224, np.array([[112, 80, 80, 16, 0.0]]), [60.0])
    M, size = affine_matrix(img.shape[:2], angle, 1.0)
    out, p = warp_affine(img, polys, M, size)
    mom = cv2.moments(hue_mask(out, 60.0).astype(np.uint8), binaryImage=True)
    measured = 0.5 * math.atan2(2 * mom["mu11"], mom["mu20"] - mom["mu02"])
    theta = to_rboxes(p)[0, 4]
    assert abs(angle_diff(measured, theta)) < math.radians(2)
    assert abs(angle_diff(theta, -math.radians(angle))) < 1e-3


# ------------------------------------------------------------------------------------------- filter


def test_filter_drops_centre_outside_tiny_and_thin():
    r = np.array(
        [
            [50, 50, 20, 10, 0.3],  # keep
            [-1, 50, 30, 10, 0.0],  # centre left of the image
            [100, 50, 30, 10, 0.0],  # centre at x == w: outside
            [99.5, 79.5, 30, 10, 1.0],  # centre just inside: keep (extends past the border)
            [50, 50, 20, 1.5, 0.2],  # short side below 2 px
            [50, 50, 250, 2.2, 0.2],  # aspect ratio > 100
            [50, 50, 20, 2.5, -0.2],  # thin but above min_size: keep
        ]
    )
    keep = filter_polys(rbox2poly(r).astype(np.float32), (80, 100))
    assert keep.tolist() == [True, False, False, True, False, False, True]
    assert filter_polys(np.zeros((0, 8), np.float32), (80, 100)).shape == (0,)


def test_filter_area_ratio():
    p = rbox2poly(np.array([[50, 40, 20, 10, 0.0], [50, 40, 20, 10, 0.0]])).astype(np.float32)
    before = np.array([200.0, 200.0 / 0.05])  # the second shrank to 5% of its expected area
    assert filter_polys(p, (80, 100), area_before=before).tolist() == [True, False]
    assert filter_polys(p, (80, 100), area_before=np.array([800.0, 800.0]), scale=0.5).tolist() == [
        True,
        True,
    ]


def test_affine_drops_objects_pushed_out(img3):
    img, polys = img3
    M, size = affine_matrix(img.shape[:2], 0.0, 1.0, translate=(0.9, 0.5))  # shift right by 0.4 * w
    out, p = warp_affine(img, polys, M, size)
    keep = filter_polys(p, out.shape)
    cx = p[:, 0::2].mean(1)
    assert keep.tolist() == (cx < 224).tolist() and not keep.all() and keep.any()


# ------------------------------------------------------------------------------------------ rboxes, hyp


def test_to_rboxes_matches_poly2rbox_and_empty():
    p = rbox2poly(RB).astype(np.float32)
    r = to_rboxes(p)
    assert r.dtype == np.float32 and r.shape == (3, 5)
    np.testing.assert_allclose(r, poly2rbox(p.astype(np.float64)), atol=1e-4)
    np.testing.assert_allclose(r, RB, atol=1e-3)
    assert to_rboxes(np.zeros((0, 8), np.float32)).shape == (0, 5)


def test_hyp_defaults_and_overrides(tmp_path):
    hyp = load_hyp()
    for k, v in dict(
        hsv_h=0.015,
        hsv_s=0.7,
        hsv_v=0.4,
        degrees=180.0,
        translate=0.1,
        scale=0.25,
        shear=0.0,
        flipud=0.5,
        fliplr=0.5,
        flipdiag=0.0,
        mosaic=1.0,
        mixup=0.0,
        lr0=0.01,
        momentum=0.937,
        theta=0.01,
        theta_loss="ce",
        optimizer="auto",
        nbs=16,
        theta_iou=0.1,
        obj_target="box",
    ).items():
        assert hyp[k] == v, k
    f = tmp_path / "h.yaml"
    f.write_text("degrees: 90\n")
    assert load_hyp(f)["degrees"] == 90 and load_hyp(f)["mosaic"] == hyp["mosaic"]
    assert load_hyp({"mosaic": 0.0})["mosaic"] == 0.0 and load_hyp({"mosaic": 0.0})["degrees"] == 180.0
    f.write_text("- a\n")
    with pytest.raises(InputError, match="h.yaml"):
        load_hyp(f)
    f.write_text("a: [1,\n")
    with pytest.raises(InputError, match=r"h.yaml:\d+"):
        load_hyp(f)


def test_mixup_blends_images_and_keeps_both_label_sets():
    a, pa = scene(64, 64, np.array([[20, 20, 16, 8, 0.0]]), [0.0])
    b, pb = scene(64, 64, np.array([[44, 44, 16, 8, 1.0]]), [90.0], seed=1)
    out, p, c = mixup(a, pa, np.array([0]), b, pb, np.array([1]), np.random.default_rng(0))
    assert p.shape == (2, 8) and c.tolist() == [0, 1]
    np.testing.assert_allclose(p, np.concatenate([pa, pb]))
    # every pixel lies between the two sources (a convex blend, ratio near 0.5)
    lo, hi = np.minimum(a, b).astype(int), np.maximum(a, b).astype(int)
    assert ((out >= lo - 1) & (out <= hi + 1)).all()
    r = (out.astype(float) - b) / np.where(a != b, a.astype(float) - b, np.nan)
    assert 0.3 < np.nanmedian(r) < 0.7
