"""The oriented YOLOv5 model: blocks, YAML specs, the architecture record, build/save/load."""

from __future__ import annotations

from obbslim.model.anchors import DEFAULT_ANCHORS, anchor_metrics, check_anchors, kmean_anchors
from obbslim.model.head import Detect
from obbslim.model.io import build, ckpt_to_model, load, read_checkpoint, save
from obbslim.model.summary import model_info
from obbslim.model.yolo import OBBModel, available_specs, load_spec, spec_to_arch

__all__ = [
    "DEFAULT_ANCHORS",
    "Detect",
    "OBBModel",
    "anchor_metrics",
    "available_specs",
    "build",
    "check_anchors",
    "ckpt_to_model",
    "kmean_anchors",
    "load",
    "load_spec",
    "model_info",
    "read_checkpoint",
    "save",
    "spec_to_arch",
]
