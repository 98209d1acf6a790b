"""Export an OBB model to ONNX with the decode inside the graph (NMS stays outside, in our own ops).

Graph contract (format ``obbslim-onnx 1``):

- input ``images``: float32 (float16 with ``half``) ``[B, 3, H, W]``, RGB, values in 0..1, letterboxed.
  B is always dynamic; H and W are fixed to ``imgsz`` unless ``dynamic`` (then multiples of 32).
- output ``output``: ``[B, N, 6 + nc]``, N = sum over levels of 3 * H/s * W/s. Columns:
  ``0:5`` rbox (cx, cy, long, short, theta) in input pixels and radians (theta = the argmax CSL bin's
  angle, ``-pi/2 + bin * pi / 180``; w/h not yet normalised), ``5`` objectness probability,
  ``6:6 + nc`` class probabilities. These are the first ``6 + nc`` columns of the PyTorch model's
  eval output; the 180 theta probabilities are left out (only ``theta_refine`` needs them).
- ``metadata_props``: ``format``, ``names`` (JSON list), ``nc``, ``stride`` (JSON list), ``imgsz``
  (JSON [h, w]), ``dynamic``, ``half``, ``int8``, ``arch`` (JSON summary), ``output``, ``version``.
Conv and BatchNorm are fused before export.
"""

from __future__ import annotations

import copy
import io
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch
from torch import nn

from obbslim import __version__
from obbslim.deploy.quantize import quantize_int8
from obbslim.errors import ObbslimError
from obbslim.inference.onnx_metadata import FORMAT, OUTPUT_DOC, set_metadata
from obbslim.model import OBBModel, load
from obbslim.options import ExportConfig
from obbslim.utils.io import atomic_write_bytes
from obbslim.utils.threads import use_threads


class ExportModel(nn.Module):
    """The fused model with its own head decode (``Detect.decode``) minus the 180 theta probabilities."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.detect.decode(self.model.forward_raw(x), theta_probs=False)


def _as_model(weights: Any) -> tuple[nn.Module, Path | None]:
    if isinstance(weights, OBBModel):
        model = copy.deepcopy(weights).cpu().float().eval()
        return model, None
    path = Path(weights)
    if not path.is_file():
        raise ObbslimError(f"{path}: weights not found")
    return load(path, device="cpu"), path


def arch_summary(model: nn.Module) -> dict:
    """What the metadata records about the architecture (enough to tell models apart)."""
    arch = model.get_arch()
    return {
        "name": arch["name"],
        "nc": arch["nc"],
        "nbins": arch["nbins"],
        "theta_conf": arch.get("theta_conf", 0.0),  # baked into the graph's objectness
        "strides": arch["strides"],
        "anchors": arch["anchors"],
        "params": int(sum(p.numel() for p in model.parameters())),
        "widths": [r.get("c2", r.get("cv3", r.get("cv2"))) for r in arch["layers"] if r["type"] != "Detect"],
    }


def _simplify(model_bytes: bytes) -> tuple[bytes, str]:
    """onnxsim when installed; else ONNX Runtime's basic (provider-independent, standard-op) passes."""
    try:  # optional: not a dependency
        import onnxsim  # type: ignore[import-not-found]
    except ImportError:
        onnxsim = None
    if onnxsim is not None:
        m, ok = onnxsim.simplify(onnx.load_from_string(model_bytes))
        if ok:
            return m.SerializeToString(), "onnxsim"
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        data = Path(so.optimized_model_filepath).read_bytes()
    return data, "onnxsim not installed: used ONNX Runtime basic graph optimisations instead"


def export_onnx(
    weights: Any,
    imgsz: int | tuple[int, int] = ExportConfig.imgsz,
    dynamic: bool = ExportConfig.dynamic,
    half: bool = ExportConfig.half,
    simplify: bool = ExportConfig.simplify,
    opset: int = ExportConfig.opset,
    out: str | Path | None = ExportConfig.out,
    verbose: bool = ExportConfig.verbose,
) -> Path:
    """Export a checkpoint (or an OBBModel) to ONNX; returns the written path.

    `out` defaults to the checkpoint path with suffix .onnx. `half` exports an fp16 graph, meant for
    CUDA (ONNX Runtime's CPU provider lacks fp16 kernels for most ops); it needs CUDA in PyTorch too.
    """
    if opset < 17:
        raise ObbslimError(f"--opset {opset} is too old: use 17 or later")
    model, path = _as_model(weights)
    if out is None:
        if path is None:
            raise ObbslimError("export_onnx: give `out` when exporting a model object")
        out = path.with_suffix(".onnx")
    out = Path(out)
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
    smax = int(model.stride.max())
    if h % smax or w % smax:
        raise ObbslimError(f"--imgsz {h}x{w} must be a multiple of the model's largest stride, {smax}")
    device = torch.device("cpu")
    if half:
        if not torch.cuda.is_available():
            raise ObbslimError("--half export needs CUDA (fp16 is for GPU deployment); export fp32 on CPU")
        device = torch.device("cuda")
    model.fuse()
    net = ExportModel(model).to(device)
    if half:
        net = net.half()
    x = torch.zeros(1, model.in_ch, h, w, device=device, dtype=torch.float16 if half else torch.float32)
    axes = {"images": {0: "batch"}, "output": {0: "batch"}}
    if dynamic:
        axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 1: "anchors"}}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings and the TorchScript-exporter deprecation note
        torch.onnx.export(
            net, (x,), buf, opset_version=int(opset), input_names=["images"], output_names=["output"],
            dynamic_axes=axes, do_constant_folding=True, dynamo=False,
        )  # fmt: skip
    data = buf.getvalue()
    note = ""
    if simplify:
        data, note = _simplify(data)
    m = onnx.load_from_string(data)
    cols = m.graph.output[0].type.tensor_type.shape.dim[2]  # declared, so a reader can check nc against it
    cols.ClearField("dim_param")
    cols.dim_value = 6 + int(model.nc)
    onnx.checker.check_model(m)
    m.producer_name = "obbslim"
    set_metadata(m, {
        "format": FORMAT,
        "version": __version__,
        "names": list(model.names),
        "nc": int(model.nc),
        "stride": [int(s) for s in model.stride.tolist()],
        "imgsz": [h, w],
        "dynamic": bool(dynamic),
        "half": bool(half),
        "int8": False,
        "arch": arch_summary(model),
        "output": OUTPUT_DOC,
    })  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, m.SerializeToString())
    if verbose:
        extra = f" ({note})" if note else ""
        print(f"ONNX export: {out} ({out.stat().st_size / 1e6:.1f} MB, opset {opset}, {h}x{w}"
              f"{', dynamic' if dynamic else ''}{', fp16' if half else ''}){extra}")  # fmt: skip
    return out


def export(*args: Any, **options: Any) -> list[Path]:
    """``obbslim export``: ``export(weights, **options)`` with the options of
    :class:`~obbslim.options.ExportConfig`: :func:`export_onnx`, then :func:`quantize_int8` of the fp32
    export when ``int8``. Returns the written paths."""
    cfg = ExportConfig.of(*args, **options)
    if cfg.int8 and cfg.data is None:
        raise ObbslimError("--int8 needs --data (a dataset YAML whose train images calibrate the ranges)")
    if cfg.int8 and (cfg.half or cfg.dynamic):
        raise ObbslimError("--int8 needs a fixed-size fp32 export: drop --half / --dynamic")
    keys = ("weights", "imgsz", "dynamic", "half", "simplify", "opset", "out", "verbose")
    with use_threads(cfg.threads):
        path = export_onnx(**cfg.kwargs(*keys))
        paths = [path]
        if cfg.int8:
            paths.append(quantize_int8(path, cfg.data, calib=cfg.calib, verbose=cfg.verbose))
    return paths
