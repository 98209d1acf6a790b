"""Where each layer of an Ultralytics YOLOv5 model (v6.0 and later) lands in obbslim: written once here.

The shipped specs (specs/yolov5{n,s,m,l,x}-obb.yaml) copy yolov5{n,s,m,l,x}.yaml layer for layer: the
6x6 stem, Conv/C3 stages and SPPF (backbone, layers 0-9), the PANet neck (10-23), Detect on 17, 20, 23
(24). obbslim's blocks keep YOLOv5's attribute names (conv, bn, cv1, cv2, cv3, m.K), so inside a layer
the tensor names agree and yolov5's ``model.I.REST`` is obbslim's ``model.LAYERS[I].REST``. With nc=80
and no angle bins the two models have exactly the same parameters (tests/test_pretrained.py checks all
five scales), which is what proves the map covers every tensor.

Only the head differs in meaning: obbslim's Detect adds the angle bins to each anchor's outputs, and its
anchors are (long, short) pixels where YOLOv5 stores (w, h) in grid units (pixels / stride).
"""

from __future__ import annotations

import re

BACKBONE = tuple(range(0, 10))
NECK = tuple(range(10, 24))
DETECT = 24
# yolov5 layer index -> obbslim layer index
LAYERS: dict[int, int] = {**{i: i for i in BACKBONE + NECK}, DETECT: DETECT}
# yolov5 class of each layer (the pickled module's class name) -> obbslim layer type
TYPES = {"Conv": "Conv", "C3": "C3", "SPPF": "SPPF", "Upsample": "Upsample", "Concat": "Concat",
         "Detect": "Detect"}  # fmt: skip

_KEY = re.compile(r"model\.(\d+)\.(.+)")


def obbslim_key(yolov5_key: str) -> str | None:
    """A yolov5 state-dict key ('model.4.m.1.cv2.conv.weight') as obbslim's, or None if it has no place."""
    m = _KEY.fullmatch(yolov5_key)
    if m is None or int(m.group(1)) not in LAYERS:
        return None
    return f"model.{LAYERS[int(m.group(1))]}.{m.group(2)}"


def obbslim_layer(yolov5_index: int) -> int | None:
    return LAYERS.get(yolov5_index)
