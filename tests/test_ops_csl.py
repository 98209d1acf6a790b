from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from obbslim.ops import csl_bin, csl_decode, csl_encode, csl_refine

HALF_BIN = math.pi / 360


def wrapped_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| on orientations (period pi)."""
    return np.abs((np.asarray(a) - np.asarray(b) + math.pi / 2) % math.pi - math.pi / 2)


def test_round_trip_within_half_a_bin_dense_grid_and_ends():
    theta = np.concatenate(
        [
            np.linspace(-math.pi / 2, math.pi / 2, 20001),
            [-math.pi / 2, math.pi / 2 - 1e-12, math.pi / 2 - HALF_BIN, -math.pi / 2 + HALF_BIN],
        ]
    )
    for window in ("gaussian", "triangle"):  # "rect" is flat on top: argmax is not its centre
        out = csl_decode(csl_encode(theta, window=window))
        assert out.shape == theta.shape
        assert np.all((out >= -math.pi / 2) & (out < math.pi / 2))
        assert wrapped_diff(out, theta).max() <= HALF_BIN + 1e-12
    # just below +pi/2 is the same orientation as -pi/2: bin 0
    assert csl_bin(np.array([math.pi / 2 - 1e-6, -math.pi / 2, 0.0])).tolist() == [0, 0, 90]


def test_gaussian_window_values_hand_computed():
    r = 2.0
    y = csl_encode(np.array([0.0, -math.pi / 2]), bins=180, radius=r)
    assert y.shape == (2, 180)
    # theta 0 -> bin 90
    assert y[0, 90] == 1.0
    assert y[0, 92] == pytest.approx(math.exp(-4 / 8), abs=0)
    assert y[0, 87] == pytest.approx(math.exp(-9 / 8), abs=0)
    assert y[0, 0] == pytest.approx(math.exp(-(90**2) / 8), abs=0)
    # theta -pi/2 -> bin 0; the window wraps to bins 179, 178 (d = 1, 2)
    assert y[1, 0] == 1.0
    assert y[1, 179] == pytest.approx(math.exp(-1 / 8), abs=0)
    assert y[1, 178] == pytest.approx(math.exp(-4 / 8), abs=0)
    assert y[1, 2] == y[1, 178]


def test_triangle_and_rect_windows():
    t = csl_encode(np.array([-math.pi / 2]), bins=8, radius=2, window="triangle")[0]
    np.testing.assert_allclose(t, [1, 2 / 3, 1 / 3, 0, 0, 0, 1 / 3, 2 / 3])
    q = csl_encode(np.array([-math.pi / 2]), bins=8, radius=2, window="rect")[0]
    np.testing.assert_array_equal(q, [1, 1, 1, 0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="window"):
        csl_encode(np.array([0.0]), window="cosine")


def test_torch_types_and_device():
    theta = torch.tensor([0.1, -1.2], dtype=torch.float32)
    y = csl_encode(theta)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and y.shape == (2, 180)
    d = csl_decode(y)
    assert d.dtype == torch.float32
    assert wrapped_diff(d.numpy(), theta.numpy()).max() <= HALF_BIN + 1e-6


def test_refine_recovers_sub_bin_angles():
    # logits of a gaussian centred between bins: refinement lands between them, argmax cannot
    bins, r = 180, 2.0
    step = math.pi / bins
    for centre in (10.3, 90.5, 179.6, 0.25):  # includes the wrap between bin 179 and bin 0
        d = np.abs(np.arange(bins) - centre)
        d = np.minimum(d, bins - d)
        probs = np.exp(-(d**2) / (2 * r**2)).clip(1e-6, 1 - 1e-6)
        logits = np.log(probs / (1 - probs))[None]
        true = -math.pi / 2 + centre * step
        fine = csl_refine(logits)
        coarse = csl_decode(logits)
        assert -math.pi / 2 <= fine[0] < math.pi / 2
        assert wrapped_diff(fine, true)[0] < wrapped_diff(coarse, true)[0]
        assert wrapped_diff(fine, true)[0] < 0.35 * step
        np.testing.assert_allclose(csl_decode(logits, refine=True), fine)
    # a symmetric peak on a bin decodes to exactly that bin angle
    y = csl_encode(np.array([0.0, -math.pi / 2]))
    logits = np.log(y.clip(1e-6, 1 - 1e-6) / (1 - y.clip(1e-6, 1 - 1e-6)))
    np.testing.assert_allclose(wrapped_diff(csl_refine(logits), [0.0, -math.pi / 2]), 0, atol=1e-12)
    assert csl_refine(logits)[1] == pytest.approx(-math.pi / 2)
