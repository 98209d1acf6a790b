"""Polygon areas (obbslim.ops.poly_area, quad_area) against shapely."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon

from obbslim.ops import poly_area, quad_area


def test_poly_area_matches_shapely_numpy_and_torch():
    rng = np.random.default_rng(0)
    polys = rng.uniform(0, 100, (50, 8))
    ref = [Polygon(p.reshape(4, 2)).area if Polygon(p.reshape(4, 2)).is_valid else None for p in polys]
    got = poly_area(polys)
    for g, r in zip(got, ref):
        if r is not None:  # shoelace = polygon area for simple polygons
            assert g == pytest.approx(r, rel=1e-12)
    assert torch.equal(poly_area(torch.from_numpy(polys)), torch.from_numpy(got))
    assert poly_area(np.zeros((0, 8))).shape == (0,)
    assert poly_area(np.array([0, 0, 4, 0, 4, 3, 0, 3.0])) == pytest.approx([12.0])  # one polygon, flat
    hexagon = np.array([[2, 0, 4, 0, 6, 2, 4, 4, 2, 4, 0, 2.0]])  # any vertex count
    assert poly_area(hexagon)[0] == pytest.approx(Polygon(hexagon.reshape(6, 2)).area)


def test_quad_area_is_vertex_order_free_and_nan_aware():
    q = np.array([[0, 0, 4, 0, 4, 3, 0, 3.0]])
    bowtie = q[:, [0, 1, 2, 3, 6, 7, 4, 5]]  # the same corners in a crossing order
    assert quad_area(q)[0] == quad_area(bowtie)[0] == pytest.approx(12.0)
    assert poly_area(bowtie)[0] < 12.0
    assert np.isnan(quad_area(np.array([[0, 0, np.nan, 0, 4, 3, 0, 3.0]]))[0])
