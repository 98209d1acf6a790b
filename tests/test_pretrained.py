"""Transfer learning (--pretrained): YOLOv5 checkpoints read without the yolov5 code and without running
anything from the pickle, plain state dicts, obbslim checkpoints with other classes or widths, and training
from them end to end.

The YOLOv5 side is a reference copy of yolov5 v7.0's models/common.py and models/yolo.py (the parts a
detection model uses), registered under ``models.common`` / ``models.yolo`` only while a checkpoint is
written, with torch.save, exactly as yolov5's train.py and strip_optimizer write them. Its parameter counts
equal the ones yolov5 prints for yolov5n/s/m/l/x; benchmarks/check_yolov5_transfer.py runs the same check
against the real yolov5 code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pickle
import sys
import types
import zipfile
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import obbslim.pipeline.stages as stages
from obbslim.cli import build_parser
from obbslim.data.labels import load_data_yaml
from obbslim.data.synth import make_synthetic
from obbslim.distill import distill
from obbslim.engine import train as engine_train
from obbslim.engine.train import train
from obbslim.errors import ObbslimError
from obbslim.model import build, load_spec, read_checkpoint, save
from obbslim.model.head import Detect as OBBDetect
from obbslim.model.pretrained import Weights, load_pretrained, model_parts, plan_transfer, read_weights
from obbslim.model.safe_pickle import ALLOWED_NAMES
from obbslim.model.yolo import OBBModel, spec_to_arch
from obbslim.options import CompressConfig
from obbslim.pipeline import compress
from obbslim.prune.sparsity import sparse_train

# ----------------------------------------------------------------------------- reference YOLOv5 v7.0


def autopad(k, p=None):
    return k // 2 if p is None else p


class Conv(nn.Module):
    __module__ = "models.common"
    default_act = nn.SiLU()  # one instance shared by every Conv, as in yolov5

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = self.default_act if act is True else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    __module__ = "models.common"

    def __init__(self, c1, c2, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C3(nn.Module):
    __module__ = "models.common"

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    __module__ = "models.common"

    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    __module__ = "models.common"

    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


class Detect(nn.Module):
    __module__ = "models.yolo"
    stride = None

    def __init__(self, nc=80, anchors=(), ch=()):
        super().__init__()
        self.nc, self.no, self.nl, self.na = nc, nc + 5, len(anchors), len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)

    def forward(self, x):
        return [self.m[i](x[i]) for i in range(self.nl)]


class DetectionModel(nn.Module):
    __module__ = "models.yolo"

    def __init__(self, cfg: dict):
        super().__init__()
        self.yaml = deepcopy(cfg)
        self.model, self.save = parse_model(self.yaml, ch=[3])
        self.names = {i: f"class{i}" for i in range(self.yaml["nc"])}
        m = self.model[-1]
        m.stride = torch.tensor([8.0, 16.0, 32.0])
        m.anchors /= m.stride.view(-1, 1, 1)  # yolov5 stores anchors in grid units
        self.stride = m.stride
        for mod in self.modules():  # initialize_weights
            if isinstance(mod, nn.BatchNorm2d):
                mod.eps, mod.momentum = 1e-3, 0.03

    def forward(self, x):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x


def parse_model(d, ch):
    anchors, nc, gd, gw = d["anchors"], d["nc"], d["depth_multiple"], d["width_multiple"]
    layers, save, c2 = [], [], ch[-1]
    for i, (f, n, m, args) in enumerate(d["backbone"] + d["head"]):
        args = list(args)
        n = max(round(n * gd), 1) if n > 1 else n
        if m in ("Conv", "C3", "SPPF"):
            c1, c2 = ch[f], args[0]
            c2 = math.ceil(c2 * gw / 8) * 8
            args = [c1, c2, *args[1:]]
            if m == "C3":
                args.insert(2, n)
                n = 1
            module = {"Conv": Conv, "C3": C3, "SPPF": SPPF}[m](*args)
        elif m == "nn.Upsample":
            module = nn.Upsample(*args)
        elif m == "Concat":
            c2 = sum(ch[x] for x in f)
            module = Concat(*args)
        else:  # Detect
            module = Detect(nc, anchors, [ch[x] for x in f])
        module.i, module.f = i, f
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(module)
        if i == 0:
            ch = []
        ch.append(c2)
    return nn.Sequential(*layers), sorted(save)


YOLOV5_SCALES = {"n": (0.33, 0.25), "s": (0.33, 0.50), "m": (0.67, 0.75), "l": (1.0, 1.0), "x": (1.33, 1.25)}
# "YOLOv5n summary: 214 layers, 1872157 parameters" etc., printed by yolov5 v7.0 for models/yolov5?.yaml
YOLOV5_PARAMS = {"n": 1872157, "s": 7235389, "m": 21190557, "l": 46563709, "x": 86749405}


def yolov5_cfg(scale: str) -> dict:
    gd, gw = YOLOV5_SCALES[scale]
    backbone = [
        [-1, 1, "Conv", [64, 6, 2, 2]],
        [-1, 1, "Conv", [128, 3, 2]],
        [-1, 3, "C3", [128]],
        [-1, 1, "Conv", [256, 3, 2]],
        [-1, 6, "C3", [256]],
        [-1, 1, "Conv", [512, 3, 2]],
        [-1, 9, "C3", [512]],
        [-1, 1, "Conv", [1024, 3, 2]],
        [-1, 3, "C3", [1024]],
        [-1, 1, "SPPF", [1024, 5]],
    ]
    head = [
        [-1, 1, "Conv", [512, 1, 1]],
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 6], 1, "Concat", [1]],
        [-1, 3, "C3", [512, False]],
        [-1, 1, "Conv", [256, 1, 1]],
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 4], 1, "Concat", [1]],
        [-1, 3, "C3", [256, False]],
        [-1, 1, "Conv", [256, 3, 2]],
        [[-1, 14], 1, "Concat", [1]],
        [-1, 3, "C3", [512, False]],
        [-1, 1, "Conv", [512, 3, 2]],
        [[-1, 10], 1, "Concat", [1]],
        [-1, 3, "C3", [1024, False]],
        [[17, 20, 23], 1, "Detect", ["nc", "anchors"]],
    ]
    anchors = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
    return {
        "nc": 80,
        "depth_multiple": gd,
        "width_multiple": gw,
        "anchors": anchors,
        "backbone": backbone,
        "head": head,
    }


@contextlib.contextmanager
def yolov5_modules(*extra: type):
    """Make the reference classes importable as models.common / models.yolo while torch.save pickles them."""
    mods = {n: types.ModuleType(n) for n in ("models", "models.common", "models.yolo")}
    for cls in (Conv, Bottleneck, C3, SPPF, Concat, Detect, DetectionModel, *extra):
        setattr(mods[cls.__module__], cls.__name__, cls)
    before = {n: sys.modules.get(n) for n in mods}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for n, old in before.items():
            if old is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = old


def random_yolov5(scale: str = "n", seed: int = 0) -> DetectionModel:
    """A yolov5 model with random weights and BN statistics (identity BN would hide misplaced tensors)."""
    torch.manual_seed(seed)
    model = DetectionModel(yolov5_cfg(scale))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(77)
    return model.eval()


def save_yolov5(model: DetectionModel, path: Path, style: str) -> DetectionModel:
    """Write ``model`` as yolov5 does; returns the model yolov5 itself would load back from the file
    (``ckpt['ema'] or ckpt['model']``), in fp32."""
    ema = deepcopy(model)
    raw = deepcopy(model)
    with torch.no_grad():  # the raw weights differ from the EMA ones: the EMA must be the one read
        for p in raw.parameters():
            p.add_(1.0)
    opt = argparse.Namespace(weights="yolov5n.pt", epochs=1, imgsz=640, save_dir="runs/train/exp")
    if style == "train":  # train.py, "Save model"
        ckpt = {
            "epoch": 3,
            "best_fitness": np.array([0.4213]),
            "model": raw.half(),
            "ema": ema.half(),
            "updates": 120,
            "optimizer": torch.optim.SGD(raw.parameters(), lr=0.01, momentum=0.937).state_dict(),
            "opt": opt,  # an argparse.Namespace in older releases, vars(opt) in v7.0
            "git": {"remote": "https://github.com/ultralytics/yolov5", "branch": "master", "commit": "0"},
            "date": "2022-11-22T15:00:00",
        }
    else:  # strip_optimizer: how the release files (yolov5s.pt ...) were made
        ema.half()
        for p in ema.parameters():
            p.requires_grad = False
        ckpt = {
            "epoch": -1,
            "best_fitness": None,
            "model": ema,
            "ema": None,
            "updates": None,
            "optimizer": None,
            "opt": vars(opt),
            "git": {},
            "date": "2022-11-22T15:00:00",
        }
    with yolov5_modules():
        torch.save(ckpt, path)
    return deepcopy(ema).float().eval()


def layer_outputs(model: nn.Module, x: torch.Tensor, n: int = 24) -> list[torch.Tensor]:
    outs: dict[int, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, o, i=i: outs.__setitem__(i, o))
        for i, m in enumerate(model.model[:n])
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return [outs[i] for i in range(n)]


def spec(scale: str, nc: int = 15, nbins: int = 180, width: float | None = None) -> dict:
    s = load_spec(f"yolov5{scale}-obb")
    s["nbins"] = nbins
    if width is not None:
        s["width_multiple"] = width
    return spec_to_arch(s, nc=nc)


# ----------------------------------------------------------------------------- the layer map


@pytest.mark.parametrize("scale", list("nsmlx"))
def test_mapping_covers_every_yolov5_tensor(scale, monkeypatch):
    """With nc=80 and no angle bins, obbslim has exactly YOLOv5's parameters, and every yolov5 tensor
    (all 349+ of them, head included) finds its place; with the OBB head, all but the head's 7."""
    monkeypatch.setattr(OBBDetect, "initialize_biases", lambda self: None)  # reads values; meta has none
    with torch.device("meta"):  # shapes only: yolov5x in no time and no memory
        ref = DetectionModel(yolov5_cfg(scale))
        plain = OBBModel(spec(scale, nc=80, nbins=0))
        obb = OBBModel(spec(scale))
    n_ref = sum(p.numel() for p in ref.parameters())
    assert n_ref == YOLOV5_PARAMS[scale]  # the reference is yolov5
    assert sum(p.numel() for p in plain.parameters()) == n_ref
    sd = ref.state_dict()
    path = Path(f"yolov5{scale}_sd.pt")
    w = Weights(path, "YOLOv5 state dict", dict(sd), yolov5=True)
    t = plan_transfer(plain, w)
    assert set(t.loaded) == set(sd) and not t.skipped and t.unused == 0
    assert (
        t.summary() == f"pretrained: {len(sd)}/{len(sd)} tensors from {path.name} (backbone, neck and head)"
    )
    t = plan_transfer(obb, w)
    head = {k for k in sd if k.startswith("model.24.")}
    assert len(head) == 7 and set(t.loaded) == set(sd) - head and set(t.skipped) == head
    assert t.parts["backbone"] == (len([k for k in sd if int(k.split(".")[1]) < 10]),) * 2
    assert model_parts(obb)[:11] == ["backbone"] * 10 + ["neck"] and model_parts(obb)[-1] == "head"


# ----------------------------------------------------------------------------- official YOLOv5 files


@pytest.mark.parametrize("style", ["train", "release"])
def test_yolov5_checkpoint_lands_tensor_for_tensor(tmp_path, style, monkeypatch):
    src = random_yolov5("n")
    path = tmp_path / ("yolov5n_last.pt" if style == "train" else "yolov5n.pt")
    ref = save_yolov5(src, path, style)
    assert "models" not in sys.modules and "models.common" not in sys.modules
    with pytest.raises(pickle.UnpicklingError):  # a real pickled-module file: torch's safe mode refuses it
        torch.load(path, weights_only=True)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))

    net = build("yolov5n-obb", 15)
    t = load_pretrained(net, path)
    assert all(k.get("weights_only") is True for k in calls)  # torch's full unpickler is never used
    assert "models" not in sys.modules  # nothing was imported for the file's classes
    assert (
        t.summary()
        == f"pretrained: 342/349 tensors from {path.name} (backbone and neck; head kept new: 7 tensors)"
    )
    assert "3 x 85 outputs (5 + 80 classes)" in t.report() and "5 + 15 classes + 180 angle bins" in t.report()

    # fp16 in the file, fp32 here, every value where it belongs
    sd, want = net.state_dict(), ref.state_dict()
    assert all(v.dtype == torch.float32 for k, v in sd.items() if "num_batches" not in k)
    for k in t.loaded:
        assert torch.equal(sd[k], want[k]), k
    full32 = src.state_dict()["model.0.conv.weight"]
    assert not torch.equal(sd["model.0.conv.weight"], full32)  # fp16-rounded, as stored
    assert torch.allclose(sd["model.0.conv.weight"], full32, atol=1e-3)

    # the feature maps of the backbone and neck are yolov5's
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    got, exp = layer_outputs(net, x), layer_outputs(ref, x)
    for i, (a, b) in enumerate(zip(got, exp)):
        assert a.shape == b.shape and float((a - b).abs().max()) < 1e-4, i
    fresh = layer_outputs(build("yolov5n-obb", 15), x)  # the check can fail: a random start differs
    assert float((fresh[9] - exp[9]).abs().max()) > 1e-2


def test_yolov5_state_dict(tmp_path):
    """torch.save(ckpt['model'].float().state_dict(), ...) is read by torch's weights_only loader."""
    ref = random_yolov5("n", seed=3)
    path = tmp_path / "yolov5n_sd.pt"
    torch.save(deepcopy(ref).half().float().state_dict(), path)
    w = read_weights(path)
    assert w.kind == "YOLOv5 state dict" and w.yolov5
    net = build("yolov5n-obb", 4)
    t = load_pretrained(net, path)
    assert t.summary().startswith("pretrained: 342/349 tensors from yolov5n_sd.pt (backbone and neck;")
    x = torch.rand(1, 3, 64, 64)
    assert (
        float((layer_outputs(net, x)[23] - layer_outputs(deepcopy(ref).half().float(), x)[23]).abs().max())
        < 1e-4
    )


def test_plain_yolov5_head_keeps_its_meaning(tmp_path):
    """nc=80, no angle bins: the whole head transfers, anchors converted from grid units to pixels."""
    ref = random_yolov5("n", seed=4)
    path = tmp_path / "yolov5n.pt"
    save_yolov5(ref, path, "release")
    net = OBBModel(spec("n", nc=80, nbins=0))
    t = load_pretrained(net, path)
    assert t.summary() == "pretrained: 349/349 tensors from yolov5n.pt (backbone, neck and head)"
    want = torch.tensor([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]])
    assert torch.allclose(net.detect.anchors, want.float().view(3, 3, 2))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        raw = net.eval()(x)[1]
        exp = deepcopy(ref).half().float().eval()(x)
    for a, b in zip(raw, exp):  # same numbers, yolov5's [B, na*no, H, W] vs obbslim's [B, na, H, W, no]
        b = b.view(a.shape[0], 3, 85, *a.shape[2:4]).permute(0, 1, 3, 4, 2)
        assert float((a - b).abs().max()) < 1e-4


# ----------------------------------------------------------------------------- refusing code


class RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Evaluates:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


class GhostConv(nn.Module):  # a real yolov5 class, but not one of the detection layers allowed
    __module__ = "models.common"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)


@pytest.mark.parametrize("kind", ["os.system", "eval", "unknown module class"])
def test_a_pickle_naming_anything_else_is_refused(tmp_path, kind):
    marker = tmp_path / "ran"
    model = random_yolov5("n").half()
    if kind == "os.system":
        ckpt, name = {"model": model, "ema": None, "opt": RunsACommand(marker)}, "posix.system"
    elif kind == "eval":
        ckpt, name = {"model": model, "ema": None, "date": Evaluates(marker)}, "builtins.eval"
    else:
        model.model[0].extra = GhostConv()
        ckpt, name = {"model": model, "ema": None}, "models.common.GhostConv"
    path = tmp_path / "evil.pt"
    with yolov5_modules(GhostConv):
        torch.save(ckpt, path)
    with pytest.raises(ObbslimError) as e:
        load_pretrained(build("yolov5n-obb", 15), path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: refused") and name in msg and "nothing from the file was run" in msg
    assert not marker.exists()


def raw_pickle_file(path: Path, body: bytes) -> Path:
    """A torch-format zip around hand-written pickle opcodes (protocol 2)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", b"\x80\x02" + body + b".")
        z.writestr("evil/byteorder", "little")
    return path


def _str(s: str) -> bytes:
    return b"X" + len(s).to_bytes(4, "little") + s.encode()


@pytest.mark.parametrize(
    "target, attr",
    [
        (b"ctorch\nHalfStorage\n", "dtype"),  # would make every later fp16 tensor another dtype
        (b"ctorch._utils\n_rebuild_tensor_v2\n", "fn"),
        (b"cmodels.common\nConv\n", "__setstate__"),
    ],
)
def test_the_pickle_cannot_change_what_it_is_allowed_to_name(tmp_path, target, attr):
    """BUILD (state, {name: value}) would setattr on the allowed object itself; it fails (a placeholder
    class's BUILD reaches its unbound __setstate__ and fails too), and the next file reads normally."""
    body = target + b"N}" + _str(attr) + b"Ns\x86b"  # GLOBAL, (None, {attr: None}), BUILD
    path = raw_pickle_file(tmp_path / "build.pt", body)
    with pytest.raises(ObbslimError) as e:
        read_weights(path)
    msg = str(e.value)
    assert f"build.pt: refused: the pickle tries to set '{attr}'" in msg or "__setstate__() missing" in msg
    ok = tmp_path / "yolov5n.pt"
    save_yolov5(random_yolov5("n"), ok, "release")
    assert read_weights(ok).tensors["model.0.conv.weight"].dtype == torch.float32


def test_allow_list_is_the_documented_one():
    assert {
        "models.yolo.DetectionModel",
        "models.common.C3",
        "torch._utils._rebuild_tensor_v2",
    } <= ALLOWED_NAMES
    for name in (
        "builtins.eval",
        "builtins.exec",
        "builtins.getattr",
        "os.system",
        "posix.system",
        "subprocess.Popen",
        "torch.load",
        "copyreg._reconstructor",
        "torch._utils._rebuild_tensor",
    ):
        assert name not in ALLOWED_NAMES


# ----------------------------------------------------------------------------- files that do not fit


def test_files_that_do_not_fit_are_errors(tmp_path):
    net = build("yolov5s-obb", 15)
    with pytest.raises(ObbslimError, match="not found"):
        load_pretrained(net, tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ObbslimError, match=r"junk.pt: not a torch checkpoint"):
        load_pretrained(net, junk)
    other = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10)}, other)
    with pytest.raises(ObbslimError, match=r"other.pt: no tensor of the file matches yolov5s-obb"):
        load_pretrained(net, other)
    n = tmp_path / "yolov5n.pt"  # another scale: the widths differ almost everywhere
    save_yolov5(random_yolov5("n"), n, "release")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ObbslimError) as e:
        load_pretrained(net, n)
    assert "only 33/198 backbone tensors of yolov5s-obb match" in str(e.value)
    assert "yolov5n/s/m/l/x.pt go with yolov5n/s/m/l/x-obb.yaml" in str(e.value)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # an error changes nothing

    p6 = tmp_path / "yolov5s6_sd.pt"  # a P6 model numbers its layers differently: refused, not misplaced
    sd = dict(random_yolov5("n").state_dict())
    sd["model.33.anchors"] = sd.pop("model.24.anchors")
    torch.save(sd, p6)
    with pytest.raises(
        ObbslimError, match=r"Detect layer is model.33, not model.24: .* not the P6 \*6.pt ones"
    ):
        load_pretrained(net, p6)


# ----------------------------------------------------------------------------- obbslim checkpoints


def tiny(nc: int, width: float = 0.125) -> OBBModel:
    return OBBModel(spec("n", nc=nc, width=width))


def scrambled(model: OBBModel, seed: int) -> OBBModel:
    torch.manual_seed(seed)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point() and not k.endswith("stride"):  # the strides are the architecture
                v.copy_(torch.rand_like(v) + 0.5)
    return model


def test_obbslim_checkpoint_with_other_classes(tmp_path):
    src = scrambled(tiny(5), 0)
    ema = scrambled(tiny(5), 1)
    path = tmp_path / "dota.pt"
    save(src, path, ema=ema)
    net = tiny(3)
    t = load_pretrained(net, path)
    assert (
        t.summary()
        == "pretrained: 342/349 tensors from dota.pt (backbone and neck; head kept new: 7 tensors)"
    )
    assert (
        "head kept new: the file's head predicts 3 x 190 outputs (5 + 5 classes + 180 angle bins) per cell, "
        "this one 3 x 188 outputs (5 + 3 classes + 180 angle bins)"
    ) in t.report()
    got, want = net.state_dict(), ema.state_dict()  # the EMA weights, as for inference
    assert all(torch.equal(got[k], want[k]) for k in t.loaded)
    same = tiny(5)
    t = load_pretrained(same, path)
    assert t.summary() == "pretrained: 349/349 tensors from dota.pt (backbone, neck and head)"
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(same.eval()(x)[0], ema.eval()(x)[0])


def test_other_widths_transfer_what_matches_and_say_why(tmp_path):
    """A pruned-like model (SPPF's inner width cut): everything else lands, the 6 changed tensors are
    named with both shapes; a model pruned everywhere is refused."""
    arch = spec("n", nc=5, width=0.125)
    arch["layers"][9]["cv1"] = 32  # was 64
    src = scrambled(OBBModel(arch), 0)
    path = tmp_path / "pruned.pt"
    save(src, path)
    net = tiny(5)
    t = load_pretrained(net, path)
    changed = {
        f"model.9.cv1.{n}"
        for n in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")
    } | {"model.9.cv2.conv.weight"}
    assert set(t.skipped) == changed
    bb = t.parts["backbone"][1]
    assert (
        t.summary() == f"pretrained: 343/349 tensors from pruned.pt (backbone {bb - 6}/{bb}, neck and head)"
    )
    rep = t.report()
    assert "kept new model.9.cv1.conv.weight: shape [32, 128, 1, 1] in the file, [64, 128, 1, 1] here" in rep
    assert "kept new model.9.cv2.conv.weight: shape [128, 128, 1, 1] in the file, [128, 256, 1, 1] here" in (
        rep
    )

    narrow = tmp_path / "narrow.pt"
    save(scrambled(tiny(5, width=0.0625), 2), narrow)
    with pytest.raises(
        ObbslimError, match=r"only \d+/\d+ backbone tensors .* \(--model FILE --pretrained FILE\)"
    ):
        load_pretrained(tiny(5), narrow)


# ----------------------------------------------------------------------------- training from it

FAST_HYP = {"warmup_epochs": 0.0, "nbs": 2, "mosaic": 0.0, "degrees": 0.0, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return Path(make_synthetic(tmp_path_factory.mktemp("synth") / "ds", n_images=4, size=64, seed=0))


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory) -> Path:
    s = load_spec("yolov5n-obb")
    s["width_multiple"] = 0.125
    path = tmp_path_factory.mktemp("spec") / "tiny-obb.yaml"
    path.write_text(yaml.safe_dump(s))
    return path


def train_tiny(tmp_path, data, model, name, epochs=1, fn=train, **kw):
    """``fn``: the engine's train, or sparse_train (what `obbslim train` calls)."""
    opts = dict(
        imgsz=64,
        batch=2,
        device="cpu",
        workers=0,
        hyp=FAST_HYP,
        project=tmp_path / "runs",
        name=name,
        noplots=True,
        noautoanchor=True,
        verbose=True,
    )
    return fn(data, str(model), epochs, **{**opts, **kw})


def test_fine_tune_on_other_classes_end_to_end(synth, tiny_spec, tmp_path, capsys, monkeypatch):
    d = load_data_yaml(synth)
    dota = {"path": d["path"], "train": d["train"], "names": d["names"]}  # no val split: faster
    mine = {**dota, "names": [*d["names"], "helicopter", "roundabout"]}
    first = train_tiny(tmp_path, dota, tiny_spec, "dota")
    capsys.readouterr()

    res = train_tiny(tmp_path, mine, tiny_spec, "mine", epochs=2, stop_after=1, pretrained=first["last"])
    out = capsys.readouterr().out
    assert "pretrained: 342/349 tensors from last.pt (backbone and neck; head kept new: 7 tensors)" in out
    ck = read_checkpoint(res["last"])
    assert ck["arch"]["nc"] == 7 and ck["names"][-1] == "roundabout"
    assert str(ck["train_args"]["pretrained"]) == str(first["last"])

    # resuming continues the run's own weights: the pretrained file is not read again
    def no_transfer(*a, **k):
        raise AssertionError("a resumed run loaded the pretrained weights again")

    monkeypatch.setattr(engine_train, "load_pretrained", no_transfer)
    assert train(resume=res["last"], verbose=False)["epochs_done"] == 2
    monkeypatch.undo()

    # a checkpoint as the model: its architecture, with a new head when the classes differ
    with pytest.raises(ObbslimError, match=r"predicts 5 classes but the dataset has 7 .*--pretrained"):
        train_tiny(tmp_path, mine, first["last"], "refused")
    capsys.readouterr()
    res = train_tiny(tmp_path, mine, first["last"], "arch", fn=sparse_train, pretrained=first["last"])
    assert "pretrained: 342/349 tensors from last.pt" in capsys.readouterr().out
    assert read_checkpoint(res["last"])["arch"]["nc"] == 7


def test_cli_options():
    p = build_parser()
    a = p.parse_args(["train", "--data", "d.yaml", "--pretrained", "yolov5s.pt"])
    assert a.pretrained == "yolov5s.pt"
    a = p.parse_args(["compress", "--data", "d.yaml", "--prune-ratio", "0.5", "--pretrained", "yolov5s.pt"])
    assert a.pretrained == "yolov5s.pt"
    assert p.parse_args(["train", "--data", "d.yaml"]).pretrained is None
    with pytest.raises(SystemExit):  # distill fine-tunes a given student: no --pretrained there
        p.parse_args(["distill", "--pretrained", "x.pt"])
    with pytest.raises(ObbslimError, match="distill fine-tunes the student as it is"):
        distill("student.pt", "teacher.pt", "d.yaml", pretrained="x.pt")


def test_compress_starts_its_baseline_from_pretrained(synth, tmp_path, monkeypatch):
    weights = tmp_path / "yolov5n.pt"
    save_yolov5(random_yolov5("n"), weights, "release")
    base = dict(
        data=synth, model="yolov5n-obb.yaml", prune_ratio=0.5, project=tmp_path, name="c", verbose=False
    )
    with pytest.raises(ObbslimError, match="--pretrained initialises the baseline training, which --teacher"):
        compress(**base, pretrained=weights, teacher=weights)
    with pytest.raises(ObbslimError, match="--pretrained nope.pt: file not found"):
        compress(**base, pretrained="nope.pt")

    calls = []

    class Stop(Exception):
        pass

    def spy(**kw):
        calls.append(kw)
        raise Stop

    monkeypatch.setattr(stages, "sparse_train", spy)
    with pytest.raises(Stop):
        compress(**base, pretrained=weights)
    assert calls[0]["pretrained"] == str(weights.resolve()) and calls[0]["name"] == "1_baseline"
    assert not any("pretrained" in c for c in calls[1:])
    run = tmp_path / "c"
    stored = json.loads((run / "compress.json").read_text())
    assert stored["pretrained"] == str(weights.resolve())
    key = json.loads((run / "1_baseline" / "stage.json").read_text())["key"]
    assert str(weights.resolve()) in key["pretrained"]
    stage = stages.baseline(stages.Context(CompressConfig.from_record(stored), run, {}))
    assert stage.key == key and "--pretrained " + str(weights.resolve()) in stage.command_line

    # the same file rewritten: the baseline's key changes, so a rerun trains it again
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert stages.baseline(stages.Context(CompressConfig.from_record(stored), run, {})).key != key
    weights.unlink()
    with pytest.raises(ObbslimError, match=r"--pretrained .*yolov5n.pt: file not found"):
        compress(resume=run, verbose=False)
