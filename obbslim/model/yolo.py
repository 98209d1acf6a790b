"""The architecture record (plain JSON-able dict) <-> OBBModel (nn.Module).

The record lists every layer with explicit widths, so a model whose channels were pruned in place can
be re-described from its current module shapes (`model.arch`) and rebuilt from that record alone
(`OBBModel.from_arch`). YAML specs (the ultralytics/yolov5 v6 layout) are only a way to write the
record for the stock scales; the record is what checkpoints store.

Record layout::

    {"name": "yolov5s-obb", "nc": 15, "nbins": 180, "ch": 3,
     "anchors": [[[long, short] x na] x nl] (pixels), "strides": [8, 16, 32],
     "layers": [
       {"type": "Conv", "from": -1, "c1": 3, "c2": 32, "k": 6, "s": 2, "p": 2},
       {"type": "C3", "from": -1, "c1": 64, "cv1": 32, "cv2": 32, "cv3": 64,
        "m": [[32, 32]], "shortcut": true},            # m: (hidden, out) per Bottleneck
       {"type": "SPPF", "from": -1, "c1": 512, "cv1": 256, "cv2": 512, "k": 5},
       {"type": "Upsample", "from": -1, "scale": 2, "mode": "nearest"},
       {"type": "Concat", "from": [-1, 6], "dim": 1},
       {"type": "Detect", "from": [17, 20, 23], "ch": [128, 256, 512]}]}
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml
from torch import nn

from obbslim.errors import ObbslimError
from obbslim.model.common import Conv
from obbslim.model.head import NBINS, Detect
from obbslim.model.registry import RecordError, block, require
from obbslim.model.summary import model_info

SPECS_DIR = Path(__file__).resolve().parent / "specs"


def available_specs() -> list[str]:
    return sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))


def load_spec(spec_or_name: str | Path | dict) -> dict:
    """A spec dict from a dict, a shipped name ('yolov5s-obb' or 'yolov5s-obb.yaml') or a YAML path."""
    if isinstance(spec_or_name, dict):
        spec = copy.deepcopy(spec_or_name)
        spec.setdefault("name", "custom")
        return spec
    s = str(spec_or_name)
    path = Path(s)
    if not path.is_file():
        stem = Path(s).name
        stem = stem[: -len(Path(stem).suffix)] if Path(stem).suffix in (".yaml", ".yml") else stem
        path = SPECS_DIR / f"{stem}.yaml"
        if not path.is_file():
            known = ", ".join(available_specs())
            raise ObbslimError(f"unknown model spec {s!r}: not a file, nor one of {known}")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ObbslimError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(spec, dict) or "backbone" not in spec or "head" not in spec:
        raise ObbslimError(f"{path}: a model spec needs 'backbone' and 'head' lists")
    spec.setdefault("name", path.stem)
    return spec


def _anchor_levels(anchors: Sequence) -> list[list[list[float]]]:
    """YOLOv5 flat rows [l, s, l, s, ...] (or already paired) -> [[[l, s], ...], ...]."""
    out = []
    for row in anchors:
        if isinstance(row[0], (list, tuple)):
            row = [v for pair in row for v in pair]
        flat = [float(v) for v in row]
        out.append([[flat[j], flat[j + 1]] for j in range(0, len(flat), 2)])
    return out


def spec_to_arch(spec: dict, nc: int | None = None) -> dict:
    """Expand a YOLOv5-style spec with depth/width multiples into an explicit record (as parse_model)."""
    nc = int(spec.get("nc", 80) if nc is None else nc)
    gd, gw = float(spec.get("depth_multiple", 1.0)), float(spec.get("width_multiple", 1.0))
    ch_in = int(spec.get("ch", 3))
    widths: list[int] = []
    strides: list[float] = []
    layers: list[dict] = []
    det_strides: list[float] = []
    for i, (f, n, mod, args) in enumerate(list(spec["backbone"]) + list(spec["head"])):
        try:
            cls = block(mod)
        except RecordError:
            raise ObbslimError(f"model spec layer {i}: unsupported module {mod!r}") from None
        n = max(round(n * gd), 1) if n > 1 else n
        srcs = f if isinstance(f, list) else [f]
        in_w = [ch_in if (j == -1 and i == 0) else widths[j] for j in srcs]
        in_s = [1.0 if (j == -1 and i == 0) else strides[j] for j in srcs]
        rec = cls.spec_record(f, n, list(args), in_w, gw)
        layers.append(rec)
        widths.append(cls.out_width(rec, in_w))
        strides.append(in_s[0] * cls.stride_factor(rec))
        if rec["type"] == "Detect":
            det_strides = in_s
    if not layers or layers[-1]["type"] != "Detect":
        raise ObbslimError("model spec: the last layer must be Detect")
    anchors = _anchor_levels(spec["anchors"])
    return {
        "name": str(spec.get("name", "custom")),
        "nc": nc,
        "nbins": int(spec.get("nbins", NBINS)),
        "ch": ch_in,
        "anchors": anchors,
        "strides": [int(s) if float(s).is_integer() else float(s) for s in det_strides],
        "layers": layers,
    }


class OBBModel(nn.Module):
    """Oriented YOLOv5: `self.model` is the layer list (YOLOv5 routing by each layer's `f`)."""

    def __init__(self, arch: dict, names: Sequence[str] | None = None):
        super().__init__()
        layers, widths = [], []
        recs = arch["layers"]
        for i, r in enumerate(recs):
            f = r.get("from", -1)
            try:
                in_w = _input_widths(f, i, widths, int(arch.get("ch", 3)))
                cls = block(r.get("type"))
                require(cls is not Detect or i == len(recs) - 1, "Detect must be the last layer")
                m = cls.from_record(r, in_w, arch)
            except RecordError as e:
                raise ObbslimError(f"architecture record, layer {i}: {e}") from None
            m.i, m.f, m.type = i, f, r["type"]
            layers.append(m)
            widths.append(cls.out_width(r, in_w))
        if not (layers and isinstance(layers[-1], Detect)):
            raise ObbslimError(f"architecture record, layer {len(recs) - 1}: the last layer is not Detect")
        self.model = nn.Sequential(*layers)
        keep = set()  # outputs that a later layer reads by index
        for i, m in enumerate(layers):
            keep.update(j % i for j in (m.f if isinstance(m.f, list) else [m.f]) if j != -1)
        self.save = sorted(keep)
        self.name = str(arch.get("name", "custom"))
        self.in_ch = int(arch.get("ch", 3))
        nc = self.detect.nc
        self.names = list(names) if names is not None else [str(k) for k in range(nc)]
        if len(self.names) != nc:
            raise ObbslimError(f"{len(self.names)} class names given for a model with nc={nc}")

    @classmethod
    def from_arch(cls, arch: dict, names: Sequence[str] | None = None) -> OBBModel:
        """Build a (possibly pruned) model from a record; weights are freshly initialised."""
        return cls(arch, names)

    @property
    def detect(self) -> Detect:
        return self.model[-1]

    @property
    def stride(self) -> torch.Tensor:
        return self.detect.stride

    @property
    def nc(self) -> int:
        return self.detect.nc

    def _route(self, x: torch.Tensor, head: Callable[[nn.Module, Any], Any]) -> Any:
        y: list[Any] = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = head(m, x) if m is self.model[-1] else m(x)
            y.append(x if m.i in self.save else None)
        return x

    def forward(self, x: torch.Tensor):
        return self._route(x, lambda det, xs: det(xs))

    def forward_raw(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The head's raw level logits in any mode (the ONNX export decodes them itself)."""
        return self._route(x, lambda det, xs: det.raw(xs))

    def get_arch(self) -> dict:
        """The record re-derived from the current module shapes (right after in-place pruning too)."""
        det = self.detect
        layers = []
        for m in self.model:
            rec = {"type": m.type, "from": list(m.f) if isinstance(m.f, list) else m.f, **m.to_record()}
            layers.append({k: (int(v) if isinstance(v, int) else v) for k, v in rec.items()})
        strides = [int(s) if float(s).is_integer() else float(s) for s in det.stride.tolist()]
        conf = {"theta_conf": float(det.theta_conf)} if det.theta_conf else {}  # absent: 0, as before it
        return {
            "name": self.name,
            "nc": det.nc,
            "nbins": det.nbins,
            "ch": self.in_ch,
            "anchors": [[[float(v) for v in a] for a in lvl] for lvl in det.anchors.tolist()],
            "strides": strides,
            "layers": layers,
            **conf,
        }

    @property
    def arch(self) -> dict:
        return self.get_arch()

    @property
    def fused(self) -> bool:
        return any(isinstance(m, Conv) and m.fused for m in self.modules())

    def fuse(self) -> OBBModel:
        """Fold every BatchNorm into its conv (inference/export only; do not train or save after)."""
        for m in self.modules():
            if isinstance(m, Conv):
                m.fuse()
        return self

    def info(self, imgsz: int = 640, verbose: bool = False) -> dict:
        return model_info(self, imgsz=imgsz, verbose=verbose)



def _input_widths(f: Any, i: int, widths: list[int], ch: int) -> list[int]:
    srcs = f if isinstance(f, list) else [f]
    out = []
    for j in srcs:
        require(isinstance(j, int) and -i <= j < i or (i == 0 and j == -1), f"bad 'from' {f!r}")
        out.append(ch if (i == 0 and j == -1) else widths[j])
    return out
