"""The metadata an obbslim ONNX export carries (``metadata_props``): written by ``deploy.export`` and
``deploy.quantize``, read by the ONNX Runtime backend. Values are JSON strings.

Keys: ``format`` (:data:`FORMAT`), ``version``, ``names``, ``nc``, ``stride``, ``imgsz`` ([h, w]),
``dynamic``, ``half``, ``int8``, ``arch`` (a summary of the architecture record), ``output``
(:data:`OUTPUT_DOC`), and ``calib_images`` after INT8 quantisation.

An export may come from a stranger: :func:`check_metadata` checks every field against its type, its
range and the graph before the runtime loads anything (a ``names`` that is not JSON, fewer names than
output classes, a zero stride or an ``imgsz`` of 100000 each end in one line naming the field).
"""

from __future__ import annotations

import json
from typing import Any

import onnx

from obbslim.data.classes import class_index
from obbslim.errors import ObbslimError
from obbslim.utils.names import MAX_CLASSES, check_name

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


# ------------------------------------------------------------------------------ checking a stranger's file

MAX_IMGSZ = 16384  # network input side; 16384^2 x 3 float32 is already 3 GB
_BOOL_KEYS = ("dynamic", "half", "int8")


def _bad(where: Any, field: str, why: str) -> ObbslimError:
    return ObbslimError(f"{where}: invalid ONNX metadata '{field}': {why}"[:400])


def _json(raw: dict[str, str], key: str, where: Any, required: bool = True) -> Any:
    if key not in raw:
        if required:
            raise _bad(where, key, "missing")
        return None
    try:
        return json.loads(raw[key])
    except ValueError:
        shown = raw[key] if len(raw[key]) <= 60 else raw[key][:57] + "..."
        raise _bad(where, key, f"not valid JSON: {shown!r}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _dims(value_info: Any) -> list[int | None]:
    """A graph input's or output's dims: an int where fixed, None where symbolic or unknown."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def check_metadata(onnx_model: Any, where: Any) -> dict[str, Any]:
    """The metadata of an obbslim export, every field checked against its type, its range and the graph
    (``len(names) == nc == the output's class columns``, strides positive and dividing ``imgsz``,
    ``imgsz`` the graph's input size unless ``dynamic``) before any session or buffer exists. Returns
    the decoded values; a bad field raises ``ObbslimError`` naming it, in one line."""
    raw = {p.key: p.value for p in onnx_model.metadata_props}
    if raw.get("format") != FORMAT:
        raise ObbslimError(f"{where}: not an obbslim ONNX export (no '{FORMAT}' metadata)")
    names = _json(raw, "names", where)
    if not isinstance(names, list) or not 1 <= len(names) <= MAX_CLASSES:
        n = len(names) if isinstance(names, list) else type(names).__name__
        raise _bad(where, "names", f"expected a JSON list of 1 to {MAX_CLASSES} class names, got {n}")
    for n in names:
        try:
            check_name(n, "class name")
        except ObbslimError as e:
            raise _bad(where, "names", getattr(e, "reason", str(e))) from None
    try:
        class_index(names)
    except ValueError as e:
        raise _bad(where, "names", str(e)) from None
    nc = _json(raw, "nc", where)
    if not _is_int(nc) or nc != len(names):
        raise _bad(where, "nc", f"expected the number of names ({len(names)}), got {nc!r}")
    stride = _json(raw, "stride", where)
    if not (isinstance(stride, list) and 1 <= len(stride) <= 8 and all(_is_int(s) and s >= 1 for s in stride)
            and max(stride) <= 1024):  # fmt: skip
        raise _bad(where, "stride", f"expected a list of 1 to 8 integers in [1, 1024], got {stride!r}")
    flags = {}
    for key in _BOOL_KEYS:
        v = _json(raw, key, where, required=key == "dynamic")
        if v is not None and not isinstance(v, bool):
            raise _bad(where, key, f"expected true or false, got {v!r}")
        flags[key] = bool(v)
    imgsz = _json(raw, "imgsz", where)
    smax = max(stride)
    if not (isinstance(imgsz, list) and len(imgsz) == 2 and all(_is_int(v) and v >= 1 for v in imgsz)
            and max(imgsz) <= MAX_IMGSZ):  # fmt: skip
        raise _bad(where, "imgsz", f"expected [h, w], integers in [1, {MAX_IMGSZ}], got {imgsz!r}")
    if imgsz[0] % smax or imgsz[1] % smax:
        raise _bad(where, "imgsz", f"{imgsz} is not a multiple of the largest stride {smax}")

    graph = onnx_model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or not graph.output:
        raise ObbslimError(f"{where}: expected a graph with one image input and an output")
    din, dout = _dims(inputs[0]), _dims(graph.output[0])
    if len(din) != 4 or din[1] not in (None, 3):
        raise ObbslimError(f"{where}: the graph's input is {din}, expected [batch, 3, height, width]")
    if not flags["dynamic"] and din[2:] != imgsz:
        raise _bad(where, "imgsz", f"{imgsz}, but the graph's input is {din[2]}x{din[3]} (dynamic is false)")
    if len(dout) != 3 or (dout[2] is not None and dout[2] != 6 + nc):
        cols = dout[-1] if dout else "?"
        raise _bad(where, "nc", f"{nc} classes, but the graph's output {dout} has {cols} columns "
                   f"(6 + nc = {6 + nc} expected)")  # fmt: skip
    return {**read_metadata(onnx_model), "names": [str(n) for n in names], "nc": nc, "stride": stride,
            "imgsz": imgsz, **flags}  # fmt: skip
