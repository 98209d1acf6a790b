"""The metadata an obbslim ONNX export carries (``metadata_props``): written by ``deploy.export`` and
``deploy.quantize``, read by the ONNX Runtime backend. Values are JSON strings.

Keys: ``format`` (:data:`FORMAT`), ``version``, ``names``, ``nc``, ``stride``, ``imgsz`` ([h, w]),
``dynamic``, ``half``, ``int8``, ``arch`` (a summary of the architecture record), ``output``
(:data:`OUTPUT_DOC`), and ``calib_images`` after INT8 quantisation.
"""

from __future__ import annotations

import json
from typing import Any

import onnx

FORMAT = "obbslim-onnx 1"
OUTPUT_DOC = "output [B, N, 6 + nc]: cx, cy, w, h, theta (rad), obj, class probs (input pixels)"


def set_metadata(onnx_model: Any, meta: dict[str, Any]) -> None:
    """Replace metadata_props entries by `meta` (values JSON-encoded unless already str)."""
    keep = [p for p in onnx_model.metadata_props if p.key not in meta]
    del onnx_model.metadata_props[:]
    onnx_model.metadata_props.extend(keep)
    for k, v in meta.items():
        p = onnx_model.metadata_props.add()
        p.key, p.value = k, v if isinstance(v, str) else json.dumps(v)


def read_metadata(onnx_model_or_path: Any) -> dict[str, Any]:
    """metadata_props as a dict with JSON values decoded (plain strings stay strings)."""

    m = onnx_model_or_path
    if not hasattr(m, "metadata_props"):
        m = onnx.load(str(m), load_external_data=False)
    out = {}
    for p in m.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except ValueError:
            out[p.key] = p.value
    return out
