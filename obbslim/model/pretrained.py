"""Start a model from pretrained weights (transfer learning): every tensor whose name and shape match.

The weights may come from
1. an official Ultralytics YOLOv5 checkpoint (v6.0 and later, e.g. the COCO ``yolov5s.pt``): pickled yolov5
   modules, read by :mod:`obbslim.model.safe_pickle` without the yolov5 code and without running anything
   from the file; the EMA model when there is one, as yolov5 itself loads them;
2. a plain state dict with yolov5's (or obbslim's) key names, e.g. ``ckpt["model"].float().state_dict()``;
3. any obbslim checkpoint (its EMA weights when present), including one trained on other classes or a
   pruned one: tensors whose shapes differ are skipped, and the report says which and why.

fp16 tensors become fp32. YOLOv5 layers map onto obbslim's by :mod:`obbslim.model.yolov5_layout`. The Detect
head transfers whole or not at all: its convolutions only mean something together, with their anchors
(converted from YOLOv5's grid units to pixels). A file that matches nothing, or less than half of the
model's backbone, is an error rather than a silent random start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from obbslim.errors import ObbslimError
from obbslim.model import yolov5_layout
from obbslim.model.safe_pickle import Placeholder, load_restricted

PARTS = ("backbone", "neck", "head")


@dataclass
class Weights:
    """Tensors read from a pretrained file, under obbslim's key names."""

    path: Path
    kind: str  # "YOLOv5 checkpoint", "YOLOv5 state dict", "obbslim checkpoint", "state dict"
    tensors: dict[str, torch.Tensor]
    yolov5: bool = False  # YOLOv5 head conventions: anchors (w, h) in grid units, no angle bins
    layer_types: dict[int, str] = field(default_factory=dict)  # obbslim layer -> the file's class name
    head: tuple[int, int] | None = None  # (nc, nbins) of the file's head, when known
    unplaced: int = 0  # tensors of the file with no obbslim name (outside the mapped layers)


def _load(path: Path):
    """torch's weights_only reader for plain data; the restricted one for pickled modules."""
    if not path.is_file():
        raise ObbslimError(f"{path}: pretrained weights not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # pickled modules (an official YOLOv5 file), or not a checkpoint at all
        return load_restricted(path)


def _float32(sd: dict, path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise ObbslimError(f"{path}: the state dict holds a {type(v).__name__} under {k!r}, not a tensor")
        out[k] = v.detach().float() if v.is_floating_point() else v.detach()
    return out


def _module_tensors(root: Placeholder, path: Path) -> dict[str, torch.Tensor]:
    """A pickled module's state dict (parameters and persistent buffers), from the placeholders' state."""
    out: dict[str, torch.Tensor] = {}
    stack: list[tuple[str, Placeholder, frozenset]] = [("", root, frozenset())]
    while stack:  # modules may be shared (yolov5's Conv shares one SiLU), but not contain themselves
        prefix, mod, above = stack.pop()
        st = mod.state
        if id(mod) in above or not isinstance(st, dict) or len(above) > 32:
            raise ObbslimError(f"{path}: a malformed module tree ({mod.qualname} at {prefix or 'the root'})")
        above = above | {id(mod)}
        hidden = st.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for name, t in (st.get(group) or {}).items():
                if t is None or (group == "_buffers" and name in hidden):
                    continue
                if not isinstance(t, torch.Tensor):
                    raise ObbslimError(f"{path}: {prefix}{name} is a {type(t).__name__}, not a tensor")
                out[f"{prefix}{name}"] = t
        for name, child in (st.get("_modules") or {}).items():
            if child is None:
                continue
            if not isinstance(child, Placeholder):
                raise ObbslimError(f"{path}: {prefix}{name} is a {type(child).__name__}, not a module")
            stack.append((f"{prefix}{name}.", child, above))
    return out


def _yolov5_weights(root: Placeholder, path: Path) -> Weights:
    cls = root.qualname.rsplit(".", 1)[-1]
    if cls not in ("DetectionModel", "Model"):
        raise ObbslimError(f"{path}: holds a {root.qualname}, not a YOLOv5 detection model")
    raw = _float32(_module_tensors(root, path), path)
    _check_layout({k for k in raw if k.endswith(".anchors")}, path)
    tensors = {}
    for k, v in raw.items():
        new = yolov5_layout.obbslim_key(k)
        if new is not None:
            tensors[new] = v
    layers = (root.state.get("_modules") or {}).get("model")
    types = {}
    if isinstance(layers, Placeholder) and isinstance(layers.state, dict):
        for i, m in (layers.state.get("_modules") or {}).items():
            j = yolov5_layout.obbslim_layer(int(i)) if str(i).isdigit() else None
            if j is not None and isinstance(m, Placeholder):
                types[j] = m.qualname.rsplit(".", 1)[-1]
    w = Weights(path, "YOLOv5 checkpoint", tensors, yolov5=True, layer_types=types)
    w.unplaced = len(raw) - len(tensors)
    return w


def _check_layout(anchor_keys: set[str], path: Path) -> None:
    """The layer map is for YOLOv5's P5 models (Detect at layer 24); a P6 model (yolov5s6.pt, Detect at
    33) numbers its layers differently, and its tensors would land in the wrong places."""
    want = f"model.{yolov5_layout.DETECT}.anchors"
    if anchor_keys and anchor_keys != {want}:
        found = ", ".join(sorted(k[: -len(".anchors")] for k in anchor_keys))
        raise ObbslimError(
            f"{path}: a YOLOv5 model whose Detect layer is {found}, not model.{yolov5_layout.DETECT}: "
            "obbslim's specs follow the P5 models (yolov5n/s/m/l/x.pt, not the P6 *6.pt ones)"
        )


def read_weights(path: str | Path) -> Weights:
    """Read a pretrained file of any of the three kinds (module doc) into fp32 tensors."""
    path = Path(path)
    obj = _load(path)
    if isinstance(obj, dict) and isinstance(obj.get("arch"), dict) and isinstance(obj.get("model"), dict):
        sd = obj["ema"] if isinstance(obj.get("ema"), dict) else obj["model"]
        arch = obj["arch"]
        head = (int(arch.get("nc", -1)), int(arch.get("nbins", 0)))
        return Weights(path, "obbslim checkpoint", _float32(sd, path), head=head)
    if isinstance(obj, dict) and isinstance(obj.get("ema") or obj.get("model"), Placeholder):
        return _yolov5_weights(obj.get("ema") or obj["model"], path)  # yolov5 loads 'ema' when present
    if isinstance(obj, Placeholder):  # torch.save(model) of a bare yolov5 model
        return _yolov5_weights(obj, path)
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = _float32(obj, path)
        if all(k.startswith("module.") for k in sd):  # saved from a DDP wrapper
            sd = {k[len("module.") :]: v for k, v in sd.items()}
        detects = {k[: -len("anchors")] for k in sd if k.endswith(".anchors")}
        if detects and not any(f"{d}stride" in sd for d in detects):  # YOLOv5's Detect has no stride buffer
            _check_layout({f"{d}anchors" for d in detects}, path)
            tensors = {yolov5_layout.obbslim_key(k): v for k, v in sd.items()}
            placed = {k: v for k, v in tensors.items() if k is not None}
            return Weights(path, "YOLOv5 state dict", placed, yolov5=True, unplaced=len(sd) - len(placed))
        return Weights(path, "state dict", sd)
    what = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else type(obj).__name__
    raise ObbslimError(f"{path}: neither a YOLOv5 or obbslim checkpoint nor a state dict ({what})")


def model_parts(model: nn.Module) -> list[str]:
    """'backbone', 'neck' or 'head' per layer: the backbone ends with the first SPPF (YOLOv5 v6 layout),
    or before the first Upsample's input layer when there is none; Detect is the head."""
    types = [m.type for m in model.model]
    if "SPPF" in types:
        end = types.index("SPPF")
    elif "Upsample" in types:
        end = types.index("Upsample") - 2
    else:
        end = len(types) - 2
    return ["head" if t == "Detect" else "backbone" if i <= end else "neck" for i, t in enumerate(types)]


def _describe_head(no: int, na: int, nc: int | None, nbins: int | None) -> str:
    if nc is None:
        return f"{na} x {no} outputs"
    bins = f" + {nbins} angle bins" if nbins else ""
    return f"{na} x {no} outputs (5 + {nc} classes{bins})"


@dataclass
class Transfer:
    """What load_pretrained did: the tensors copied, the ones kept new (and why), per part."""

    source: Weights
    model_name: str
    loaded: dict[str, torch.Tensor]
    skipped: dict[str, str]
    parts: dict[str, tuple[int, int]]  # part -> (loaded, total)
    head_reason: str | None = None
    unused: int = 0  # tensors of the file with no tensor of that name here

    @property
    def total(self) -> int:
        return len(self.loaded) + len(self.skipped)

    def summary(self) -> str:
        """'pretrained: 342/349 tensors from yolov5s.pt (backbone and neck; head kept new: 7 tensors)'."""
        got = [p if a == b else f"{p} {a}/{b}" for p in PARTS for a, b in [self.parts[p]] if a]
        done = " and ".join([", ".join(got[:-1]), got[-1]] if len(got) > 1 else got)
        new = [f"{p} kept new: {b} tensors" for p in PARTS for a, b in [self.parts[p]] if b and not a]
        return (
            f"pretrained: {len(self.loaded)}/{self.total} tensors from {self.source.path.name} "
            f"({'; '.join(([done] if done else []) + new)})"
        )

    def report(self, limit: int = 8) -> str:
        """The summary, then why each tensor kept its fresh initialisation (the first ``limit``)."""
        lines = [self.summary()]
        if self.head_reason:
            lines.append(f"  head kept new: {self.head_reason}")
        rest = [(k, why) for k, why in self.skipped.items() if why != self.head_reason]
        for k, why in rest[:limit]:
            lines.append(f"  kept new {k}: {why}")
        if len(rest) > limit:
            lines.append(f"  ... and {len(rest) - limit} more kept new")
        unused = self.unused + self.source.unplaced
        if unused:
            lines.append(f"  {unused} tensors of the file have no counterpart in {self.model_name}")
        return "\n".join(lines)

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        sd = model.state_dict()
        for k, v in self.loaded.items():
            sd[k].copy_(v)


def _mismatch(key: str, target: torch.Tensor, w: Weights, layer_type: str, layer: int) -> str | None:
    file_type = w.layer_types.get(layer)
    if file_type is not None and yolov5_layout.TYPES.get(file_type) != layer_type:
        return f"layer {layer} is a {file_type} in the file, a {layer_type} here"
    src = w.tensors.get(key)
    if src is None:
        return "not in the file"
    if tuple(src.shape) != tuple(target.shape):
        return f"shape {list(src.shape)} in the file, {list(target.shape)} here"
    if src.is_floating_point() != target.is_floating_point():
        return f"dtype {src.dtype} in the file, {target.dtype} here"
    return None


def plan_transfer(model: nn.Module, w: Weights) -> Transfer:
    """Match the file's tensors to ``model``'s by name and shape; raise if too little matches.

    Works on shapes only (a model on the meta device is fine); ``Transfer.apply`` copies."""
    sd = model.state_dict()
    parts_of = model_parts(model)
    det = len(model.model) - 1
    head = f"model.{det}."
    keys = [k for k in sd if k != f"{head}stride"]  # the strides are the architecture's, not weights
    loaded: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    for k in keys:
        if k.startswith(head):
            continue
        layer = int(k.split(".")[1])
        why = _mismatch(k, sd[k], w, model.model[layer].type, layer)
        if why is None:
            loaded[k] = w.tensors[k]
        else:
            skipped[k] = why

    head_keys = [k for k in keys if k.startswith(head)]
    convs = [k for k in head_keys if not k.endswith("anchors")]
    bad = [(k, why) for k in convs if (why := _mismatch(k, sd[k], w, "Detect", det))]
    head_reason = None
    if not bad:
        for k in convs:
            loaded[k] = w.tensors[k]
        a, ta = w.tensors.get(f"{head}anchors"), sd[f"{head}anchors"]
        if a is not None and tuple(a.shape) == tuple(ta.shape):
            loaded[f"{head}anchors"] = a * model.detect.stride.view(-1, 1, 1).to(a) if w.yolov5 else a
        else:
            skipped[f"{head}anchors"] = "not in the file" if a is None else f"shape {list(a.shape)} there"
    else:
        d = model.detect
        src = w.tensors.get(f"{head}m.0.weight")
        if src is None or not convs:
            head_reason = f"the file has no Detect head at layer {det}"
        elif src.shape[1:] != sd[f"{head}m.0.weight"].shape[1:]:
            head_reason = f"its input widths differ ({bad[0][0]}: {bad[0][1]})"
        else:
            no = src.shape[0] // d.na
            nc, nbins = (no - 5, 0) if w.yolov5 else w.head or (None, None)
            head_reason = (
                f"the file's head predicts {_describe_head(no, d.na, nc, nbins)} per cell, "
                f"this one {_describe_head(d.no, d.na, d.nc, d.nbins)}"
            )
        for k in head_keys:
            skipped[k] = head_reason

    parts = {p: (0, 0) for p in PARTS}
    for k in keys:
        p = parts_of[int(k.split(".")[1])]
        a, b = parts[p]
        parts[p] = (a + (k in loaded), b + 1)
    t = Transfer(w, getattr(model, "name", "the model"), loaded, skipped, parts, head_reason)
    t.unused = sum(1 for k in w.tensors if k not in sd)
    _check_enough(t)
    return t


def _check_enough(t: Transfer) -> None:
    path, name = t.source.path, t.model_name
    first = next(iter(t.skipped.items()), ("", ""))
    if not t.loaded:
        raise ObbslimError(
            f"{path}: no tensor of the file matches {name} ({t.source.kind}; e.g. {first[0]}: {first[1]})"
        )
    got, total = t.parts["backbone"]
    if total and got < math.ceil(total / 2):
        miss = next(((k, why) for k, why in t.skipped.items() if k not in t.loaded), first)
        raise ObbslimError(
            f"{path}: only {got}/{total} backbone tensors of {name} match the file ({t.source.kind}; e.g. "
            f"{miss[0]}: {miss[1]}). {_hint(t.source)}"
        )


def _hint(w: Weights) -> str:
    if w.yolov5:
        return "Another scale? yolov5n/s/m/l/x.pt go with yolov5n/s/m/l/x-obb.yaml"
    if w.kind == "obbslim checkpoint":
        return (
            "A pruned model or another scale? To keep the checkpoint's own architecture, give it as the "
            "model too (--model FILE --pretrained FILE)"
        )
    return "Another architecture?"


def load_pretrained(model: nn.Module, path: str | Path) -> Transfer:
    """Copy every matching tensor of ``path`` into ``model`` (in place); returns what was done.

    ``print(load_pretrained(model, "yolov5s.pt").report())`` says it in a line or a few."""
    t = plan_transfer(model, read_weights(path))
    t.apply(model)
    return t
