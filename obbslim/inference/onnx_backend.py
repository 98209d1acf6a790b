"""ONNX Runtime backend with the call contract of the PyTorch model's decoded output.

``OnnxModel(path)(imgs)`` returns what ``model(imgs)[0][..., :6 + nc]`` returns for the PyTorch model,
so ``obbslim.inference.postprocess.postprocess(decoded, nbins=0)`` (or ``nc=model.nc``) and everything
after it work unchanged. NMS is not in the graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch

from obbslim.errors import ObbslimError
from obbslim.inference.onnx_metadata import check_metadata


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always as the fallback."""
    avail = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]


class OnnxModel:
    """An exported obbslim model run by ONNX Runtime.

    Attributes: ``names``, ``nc``, ``stride`` (tensor [nl]), ``imgsz`` ([h, w] the graph was exported
    at; the only size accepted unless ``dynamic``), ``dynamic``, ``half`` (fp16 input/output),
    ``int8``, ``meta`` (all metadata), ``session``, ``path``.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ObbslimError(f"{self.path}: ONNX model not found")
        try:
            proto = onnx.load(str(self.path), load_external_data=False)
        except Exception as e:  # not a protobuf, truncated file
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ObbslimError(f"{self.path}: not a readable ONNX model ({first})") from None
        meta = check_metadata(proto, self.path)  # before the runtime allocates anything
        del proto
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(self.path), so, providers=list(providers) if providers else default_providers()
            )
        except Exception as e:
            hint = " (fp16 graphs need the CUDA provider)" if meta.get("half") else ""
            raise ObbslimError(f"{self.path}: ONNX Runtime cannot load it{hint}: {str(e)[:300]}") from None
        self.meta = meta
        self.names = list(meta["names"])
        self.nc = int(meta["nc"])
        self.stride = torch.tensor(meta["stride"], dtype=torch.float32)
        self.imgsz = [int(v) for v in meta["imgsz"]]
        self.dynamic = meta["dynamic"]
        self.half = meta["half"]
        self.int8 = meta["int8"]
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.providers = self.session.get_providers()

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, imgsz={self.imgsz}, dynamic={self.dynamic}, {self.providers})"

    def run_numpy(self, imgs: np.ndarray) -> np.ndarray:
        """float [B, 3, H, W] in 0..1 -> float32 decoded [B, N, 6 + nc] (numpy in, numpy out)."""
        if imgs.ndim != 4:
            raise ObbslimError(f"expected images [B, 3, H, W], got shape {tuple(imgs.shape)}")
        h, w = imgs.shape[2:]
        if not self.dynamic and [h, w] != self.imgsz:
            raise ObbslimError(
                f"{self.path.name} was exported for {self.imgsz[0]}x{self.imgsz[1]} input, got {h}x{w} "
                "(letterbox to that size, or export with --dynamic)"
            )
        smax = int(self.stride.max())
        if self.dynamic and (h % smax or w % smax):
            raise ObbslimError(f"input {h}x{w} must be a multiple of the max stride {smax}")
        x = np.ascontiguousarray(imgs, dtype=np.float16 if self.half else np.float32)
        y = self.session.run([self.output_name], {self.input_name: x})[0]
        if y.ndim != 3 or y.shape[-1] != 6 + self.nc:  # the graph disagrees with its own metadata
            want = f"[B, N, {6 + self.nc}]"
            raise ObbslimError(f"{self.path}: the output is {list(y.shape)}, the metadata says {want}")
        return y.astype(np.float32, copy=False)

    def __call__(self, imgs: Any) -> torch.Tensor:
        """float32 [B, 3, H, W] in 0..1 (torch or numpy) -> decoded [B, N, 6 + nc], float32 torch tensor
        on the input's device."""
        dev = imgs.device if isinstance(imgs, torch.Tensor) else torch.device("cpu")
        x = imgs.detach().float().cpu().numpy() if isinstance(imgs, torch.Tensor) else np.asarray(imgs)
        return torch.from_numpy(self.run_numpy(x)).to(dev)
