"""INT8 static post-training quantisation of an exported model with ONNX Runtime.

QDQ format, per-channel int8 weights and uint8 activations (U8S8: the pair ONNX Runtime's x86 CPU
kernels fuse into QLinearConv; int8 activations stay as DequantizeLinear + float Conv there and run
slower than fp32), calibrated (min/max) on training images letterboxed to the export size. The
Detect convolutions and the decode after them are excluded, so the head's logits (180 theta bins
compared by argmax, objectness, classes) and the decoded outputs stay float; everything before the
head runs in int8 where ONNX Runtime has int8 kernels.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import onnx

from obbslim.data.augment import letterbox
from obbslim.data.labels import load_split
from obbslim.errors import ObbslimError
from obbslim.inference.onnx_metadata import check_metadata, set_metadata
from obbslim.options import ExportConfig
from obbslim.utils.io import atomic_write_bytes

QUANT_OPS = ["Conv", "Mul", "Sigmoid", "Add", "Concat", "MaxPool", "Resize"]


def load_letterboxed(path: str | Path, imgsz: tuple[int, int]) -> np.ndarray:
    """One image file -> float32 [1, 3, h, w] RGB in 0..1, letterboxed as the validation loader does."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ObbslimError(f"{path}: cannot read image")
    img, _, _ = letterbox(img, imgsz, auto=False)
    return np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))[None].astype(np.float32) / 255


def calibration_images(data: Any, n: int, split: str = "train") -> list[str]:
    """The first `n` image files of a split (data YAML path, data dict or a list of image paths)."""
    if isinstance(data, (list, tuple)):
        files = [str(f) for f in data]
    else:
        samples, _ = load_split(data, split)
        files = [str(s.im_file) for s in samples]
    if not files:
        raise ObbslimError(f"no {split} images to calibrate INT8 quantisation with")
    step = max(1, len(files) // max(n, 1))  # spread over the split, not the first folder only
    return files[::step][:n]


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over image files."""

    def __init__(self, files: list[str], input_name: str, imgsz: tuple[int, int]):
        self.files, self.input_name, self.imgsz = files, input_name, imgsz
        self._it: Iterator[str] = iter(files)

    def get_next(self) -> dict[str, np.ndarray] | None:
        f = next(self._it, None)
        return None if f is None else {self.input_name: load_letterboxed(f, self.imgsz)}

    def rewind(self) -> None:
        self._it = iter(self.files)


def head_nodes(model: Any) -> list[str]:
    """Names of the Detect convolutions and every node downstream of them (the decode tail)."""

    meta = {p.key: p.value for p in model.metadata_props}
    arch = json.loads(meta["arch"])
    na = len(arch["anchors"][0])
    n_out = na * (5 + arch["nc"] + arch["nbins"])
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    heads = [
        nd for nd in model.graph.node
        if nd.op_type == "Conv" and len(nd.input) > 1 and inits.get(nd.input[1], (0,))[0] == n_out
    ]  # fmt: skip
    tainted = {o for nd in heads for o in nd.output}
    names = [nd.name for nd in heads]
    for nd in model.graph.node:  # nodes are topologically sorted
        if nd not in heads and any(i in tainted for i in nd.input):
            tainted.update(nd.output)
            names.append(nd.name)
    if not heads:
        raise ObbslimError("cannot find the Detect convolutions in the ONNX graph")
    return names


def quantize_int8(
    onnx_path: str | Path,
    data: Any,
    calib: int = ExportConfig.calib,
    out: str | Path | None = None,
    verbose: bool = True,
) -> Path:
    """Quantise an fp32 obbslim ONNX export to INT8 (QDQ); returns the path (default: <name>_int8.onnx).

    `data` is a dataset YAML / dict (its train split is read) or a list of image files; `calib` images
    are used. The export's metadata is kept, with ``int8`` set true.
    """
    # imported here: onnxruntime.quantization takes ~0.3 s and only INT8 needs it
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path = Path(onnx_path)
    out = Path(out) if out is not None else onnx_path.with_name(onnx_path.stem + "_int8.onnx")
    meta = check_metadata(onnx.load(str(onnx_path), load_external_data=False), onnx_path)
    if meta.get("half"):
        raise ObbslimError(f"{onnx_path}: INT8 quantisation needs an fp32 export, not --half")
    if meta.get("int8"):
        raise ObbslimError(f"{onnx_path}: already quantised")
    model = onnx.load(str(onnx_path))
    exclude = head_nodes(model)
    files = calibration_images(data, calib)
    h, w = meta["imgsz"]
    reader = _Reader(files, model.graph.input[0].name, (int(h), int(w)))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "pre.onnx"
        try:  # shape inference + standard optimisations, as ORT recommends before quantising
            quant_pre_process(str(onnx_path), str(src), skip_symbolic_shape=True)
        except Exception:
            src = onnx_path
        dst = Path(tmp) / "int8.onnx"
        quantize_static(
            str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=QUANT_OPS,
            nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )  # fmt: skip
        q = onnx.load(str(dst))
    set_metadata(q, {**meta, "int8": True, "calib_images": len(files)})
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, q.SerializeToString())
    if verbose:
        mb = out.stat().st_size / 1e6
        print(f"INT8 (QDQ, per-channel, {len(files)} calibration images): {out} ({mb:.1f} MB)")
    return out
