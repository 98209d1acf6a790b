"""Deployment: ONNX export, the ONNX Runtime backend, INT8 quantisation and the benchmark table.

``standalone.py`` is the torch-free runner (numpy + OpenCV + onnxruntime) meant to be copied out.
"""

from __future__ import annotations

from obbslim.deploy.benchmark import benchmark, strip_checkpoint, validate_onnx
from obbslim.deploy.export import export, export_onnx
from obbslim.deploy.quantize import quantize_int8
from obbslim.inference.onnx_backend import OnnxModel  # the runtime side lives with inference
from obbslim.inference.onnx_metadata import read_metadata

__all__ = [
    "OnnxModel",
    "benchmark",
    "export",
    "export_onnx",
    "quantize_int8",
    "read_metadata",
    "strip_checkpoint",
    "validate_onnx",
]
