"""Geometry ops: pure functions, numpy or torch in -> same type out (torch keeps device and dtype).

The box convention lives in :mod:`obbslim.ops.boxes`.
"""

from __future__ import annotations

from obbslim.ops.boxes import flip_rboxes, norm_rbox, poly2rbox, rbox2poly
from obbslim.ops.csl import csl_bin, csl_bin_angle, csl_decode, csl_encode, csl_refine
from obbslim.ops.geometry import poly_area, quad_area
from obbslim.ops.iou import poly_iou, rbox_iou
from obbslim.ops.merge import merge_rotated
from obbslim.ops.nms import batched_nms_rotated, nms_rotated

__all__ = [
    "poly2rbox",
    "rbox2poly",
    "norm_rbox",
    "flip_rboxes",
    "rbox_iou",
    "poly_iou",
    "nms_rotated",
    "batched_nms_rotated",
    "merge_rotated",
    "csl_encode",
    "csl_decode",
    "csl_refine",
    "csl_bin",
    "csl_bin_angle",
    "poly_area",
    "quad_area",
]
