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
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from obbslim.errors import ObbslimError
from obbslim.model.common import C3, SPPF, Concat, Conv, autopad
from obbslim.model.head import NBINS, Detect

SPECS_DIR = Path(__file__).resolve().parent / "specs"


def make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


def available_specs() -> list[str]:
    return sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))


def load_spec(spec_or_name: str | Path | dict) -> dict:
    """A spec dict from a dict, a shipped name ('yolov5s-obb' or 'yolov5s-obb.yaml') or a YAML path."""
    import yaml

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
        mod = str(mod).replace("nn.", "")
        n = max(round(n * gd), 1) if n > 1 else n
        srcs = f if isinstance(f, list) else [f]
        in_w = [ch_in if (j == -1 and i == 0) else widths[j] for j in srcs]
        in_s = [1.0 if (j == -1 and i == 0) else strides[j] for j in srcs]
        c1, s_in = in_w[0], in_s[0]
        if mod == "Conv":
            c2 = make_divisible(args[0] * gw)
            k = int(args[1]) if len(args) > 1 else 1
            s = int(args[2]) if len(args) > 2 else 1
            p = autopad(k, args[3] if len(args) > 3 else None)
            rec = {"type": "Conv", "from": f, "c1": c1, "c2": c2, "k": k, "s": s, "p": p}
            out_w, out_s = c2, s_in * s
        elif mod == "C3":
            c2 = make_divisible(args[0] * gw)
            shortcut = bool(args[1]) if len(args) > 1 else True
            c_ = int(c2 * 0.5)
            rec = {"type": "C3", "from": f, "c1": c1, "cv1": c_, "cv2": c_, "cv3": c2,
                   "m": [[c_, c_] for _ in range(n)], "shortcut": shortcut}  # fmt: skip
            out_w, out_s = c2, s_in
        elif mod == "SPPF":
            c2 = make_divisible(args[0] * gw)
            k = int(args[1]) if len(args) > 1 else 5
            rec = {"type": "SPPF", "from": f, "c1": c1, "cv1": c1 // 2, "cv2": c2, "k": k}
            out_w, out_s = c2, s_in
        elif mod == "Upsample":
            scale = args[1] if len(args) > 1 else 2
            mode = args[2] if len(args) > 2 else "nearest"
            rec = {"type": "Upsample", "from": f, "scale": int(scale), "mode": str(mode)}
            out_w, out_s = c1, s_in / scale
        elif mod == "Concat":
            rec = {"type": "Concat", "from": list(srcs), "dim": int(args[0]) if args else 1}
            out_w, out_s = sum(in_w), s_in
        elif mod == "Detect":
            rec = {"type": "Detect", "from": list(srcs), "ch": in_w}
            out_w, out_s = 0, s_in
            det_strides = in_s
        else:
            raise ObbslimError(f"model spec layer {i}: unsupported module {mod!r}")
        layers.append(rec)
        widths.append(out_w)
        strides.append(out_s)
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


def _check(cond: bool, i: int, msg: str) -> None:
    if not cond:
        raise ObbslimError(f"architecture record, layer {i}: {msg}")


class OBBModel(nn.Module):
    """Oriented YOLOv5: `self.model` is the layer list (YOLOv5 routing by each layer's `f`)."""

    def __init__(self, arch: dict, names: Sequence[str] | None = None):
        super().__init__()
        layers, widths = [], []
        recs = arch["layers"]
        for i, r in enumerate(recs):
            t, f = r.get("type"), r.get("from", -1)
            srcs = f if isinstance(f, list) else [f]
            in_w = []
            for j in srcs:
                _check(isinstance(j, int) and -i <= j < i or (i == 0 and j == -1), i, f"bad 'from' {f!r}")
                in_w.append(int(arch.get("ch", 3)) if (i == 0 and j == -1) else widths[j])
            if t in ("Conv", "C3", "SPPF"):
                _check(r["c1"] == in_w[0], i, f"{t} c1={r['c1']} but its input has {in_w[0]} channels")
            if t == "Conv":
                m: nn.Module = Conv(r["c1"], r["c2"], r["k"], r["s"], r["p"])
                out = r["c2"]
            elif t == "C3":
                if r["shortcut"]:
                    c = r["cv1"]
                    for _hidden, o in r["m"]:
                        _check(o == c, i, f"C3 with shortcut needs each bottleneck out == in, got {o} != {c}")
                m = C3(r["c1"], r["cv1"], r["cv2"], r["cv3"], r["m"], r["shortcut"])
                out = r["cv3"]
            elif t == "SPPF":
                m = SPPF(r["c1"], r["cv1"], r["cv2"], r.get("k", 5))
                out = r["cv2"]
            elif t == "Upsample":
                m = nn.Upsample(scale_factor=r.get("scale", 2), mode=r.get("mode", "nearest"))
                out = in_w[0]
            elif t == "Concat":
                m = Concat(r.get("dim", 1))
                out = sum(in_w)
            elif t == "Detect":
                _check(i == len(recs) - 1, i, "Detect must be the last layer")
                _check(list(r["ch"]) == in_w, i, f"Detect ch={r['ch']} but its inputs have {in_w} channels")
                m = Detect(arch["nc"], arch["anchors"], r["ch"], arch["strides"], arch.get("nbins", NBINS))
                out = 0
            else:
                raise ObbslimError(f"architecture record, layer {i}: unknown type {t!r}")
            m.i, m.f, m.type = i, f, t
            layers.append(m)
            widths.append(out)
        _check(bool(layers) and isinstance(layers[-1], Detect), len(recs) - 1, "the last layer is not Detect")
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

    def forward(self, x: torch.Tensor):
        y: list[Any] = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def get_arch(self) -> dict:
        """The record re-derived from the current module shapes (right after in-place pruning too)."""
        det = self.detect
        layers = []
        for m in self.model:
            t, f = m.type, (list(m.f) if isinstance(m.f, list) else m.f)
            if t == "Conv":
                w = m.conv.weight
                rec = {"type": t, "from": f, "c1": w.shape[1], "c2": w.shape[0], "k": w.shape[2],
                       "s": m.conv.stride[0], "p": m.conv.padding[0]}  # fmt: skip
            elif t == "C3":
                rec = {"type": t, "from": f, "c1": _cin(m.cv1), "cv1": _cout(m.cv1), "cv2": _cout(m.cv2),
                       "cv3": _cout(m.cv3), "m": [[_cout(b.cv1), _cout(b.cv2)] for b in m.m],
                       "shortcut": bool(m.shortcut)}  # fmt: skip
            elif t == "SPPF":
                k = m.m.kernel_size
                rec = {"type": t, "from": f, "c1": _cin(m.cv1), "cv1": _cout(m.cv1), "cv2": _cout(m.cv2),
                       "k": int(k if isinstance(k, int) else k[0])}  # fmt: skip
            elif t == "Upsample":
                s = float(m.scale_factor)
                rec = {"type": t, "from": f, "scale": int(s) if s.is_integer() else s, "mode": m.mode}
            elif t == "Concat":
                rec = {"type": t, "from": f, "dim": int(m.d)}
            else:  # Detect
                rec = {"type": t, "from": f, "ch": [int(c.weight.shape[1]) for c in m.m]}
            layers.append({k: (int(v) if isinstance(v, int) else v) for k, v in rec.items()})
        strides = [int(s) if float(s).is_integer() else float(s) for s in det.stride.tolist()]
        return {
            "name": self.name,
            "nc": det.nc,
            "nbins": det.nbins,
            "ch": self.in_ch,
            "anchors": [[[float(v) for v in a] for a in lvl] for lvl in det.anchors.tolist()],
            "strides": strides,
            "layers": layers,
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
        from obbslim.model.summary import model_info

        return model_info(self, imgsz=imgsz, verbose=verbose)


def _cin(c: Conv) -> int:
    return int(c.conv.weight.shape[1])


def _cout(c: Conv) -> int:
    return int(c.conv.weight.shape[0])
