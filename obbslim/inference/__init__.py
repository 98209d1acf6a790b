"""Inference: from a model (a checkpoint, an ONNX export or a module) and images of any size to rotated
detections. ``postprocess`` (score, NMS), the ``Detector`` (tiling, batching, merging), ``detect`` (the
``obbslim detect`` command), the ONNX Runtime backend and the ONNX metadata."""

from __future__ import annotations

from obbslim.inference.detect import detect
from obbslim.inference.detector import Detections, Detector
from obbslim.inference.onnx_backend import OnnxModel
from obbslim.inference.postprocess import postprocess, scale_rboxes

__all__ = ["Detections", "Detector", "OnnxModel", "detect", "postprocess", "scale_rboxes"]
