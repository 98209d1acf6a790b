"""YOLOv5 v6 building blocks with every width given explicitly, so a pruned model can be rebuilt.

Unlike ultralytics/yolov5, no block derives its inner widths from an expansion ratio: the caller
passes each convolution's output width. That is what lets `OBBModel.from_arch` rebuild a model
whose channels were removed in place by a pruner. Each block reads and writes its own record (see
``obbslim.model.registry``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from obbslim.model.registry import register, require

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def autopad(k: int, p: int | None = None) -> int:
    """'same' padding for odd kernels, as YOLOv5."""
    return k // 2 if p is None else p


def make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


def _cin(c: Conv) -> int:
    return int(c.conv.weight.shape[1])


def _cout(c: Conv) -> int:
    return int(c.conv.weight.shape[0])


class Block(nn.Module):
    """Defaults for the record protocol: one input, width and stride unchanged."""

    @staticmethod
    def out_width(rec: dict, in_w: list[int]) -> int:
        return in_w[0]

    @staticmethod
    def stride_factor(rec: dict) -> float:
        return 1.0

    def summary(self) -> str:
        return ""


@register
class Conv(Block):
    """conv2d (no bias) -> BatchNorm2d -> SiLU, three separate modules (BN gammas feed slimming).

    `fuse()` folds the BN into the conv for inference/export; a fused Conv has `bn = Identity`.
    """

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act: nn.Module = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @staticmethod
    def spec_record(f: Any, n: int, args: list, in_w: list[int], gw: float) -> dict:
        k = int(args[1]) if len(args) > 1 else 1
        s = int(args[2]) if len(args) > 2 else 1
        p = autopad(k, args[3] if len(args) > 3 else None)
        return {"type": "Conv", "from": f, "c1": in_w[0], "c2": make_divisible(args[0] * gw), "k": k, "s": s,
                "p": p}  # fmt: skip

    @staticmethod
    def out_width(rec: dict, in_w: list[int]) -> int:
        return rec["c2"]

    @staticmethod
    def stride_factor(rec: dict) -> float:
        return rec["s"]

    @classmethod
    def from_record(cls, r: dict, in_w: list[int], arch: dict) -> Conv:
        require(r["c1"] == in_w[0], f"Conv c1={r['c1']} but its input has {in_w[0]} channels")
        return cls(r["c1"], r["c2"], r["k"], r["s"], r["p"])

    def to_record(self) -> dict:
        w = self.conv.weight
        return {"c1": w.shape[1], "c2": w.shape[0], "k": w.shape[2], "s": self.conv.stride[0],
                "p": self.conv.padding[0]}  # fmt: skip

    def summary(self) -> str:
        w = self.conv.weight
        return f"{w.shape[1]}->{w.shape[0]} k{w.shape[2]} s{self.conv.stride[0]}"

    @property
    def fused(self) -> bool:
        return not isinstance(self.bn, nn.BatchNorm2d)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold BN into the conv weights and bias (inference only: BN stops learning)."""
        if self.fused:
            return
        conv, bn = self.conv, self.bn
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            groups=conv.groups,
            bias=True,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_(bn.bias + (b - bn.running_mean) * scale)
        fused.requires_grad_(False)
        self.conv = fused
        self.bn = nn.Identity()


class Bottleneck(nn.Module):
    """1x1 conv (c1 -> c_) then 3x3 conv (c_ -> c2), plus the input when `shortcut`."""

    def __init__(self, c1: int, c_: int, c2: int, shortcut: bool = True):
        super().__init__()
        if shortcut and c1 != c2:
            raise ValueError(f"Bottleneck with shortcut needs c1 == c2, got {c1} and {c2}")
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1)
        self.add = bool(shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


@register
class C3(Block):
    """CSP bottleneck with 3 convs: cv3(cat(m(cv1(x)), cv2(x))).

    `m` lists (hidden, out) widths of each Bottleneck; the first takes cv1's width, each next one
    the previous one's out. With `shortcut` every out must equal its input (residual add).
    """

    def __init__(
        self,
        c1: int,
        cv1: int,
        cv2: int,
        cv3: int,
        m: Sequence[Sequence[int]],
        shortcut: bool = True,
    ):
        super().__init__()
        self.cv1 = Conv(c1, cv1, 1, 1)
        self.cv2 = Conv(c1, cv2, 1, 1)
        blocks, c = [], cv1
        for hidden, out in m:
            blocks.append(Bottleneck(c, int(hidden), int(out), shortcut))
            c = int(out)
        self.m = nn.Sequential(*blocks)
        self.cv3 = Conv(c + cv2, cv3, 1, 1)
        self.shortcut = bool(shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))

    @staticmethod
    def spec_record(f: Any, n: int, args: list, in_w: list[int], gw: float) -> dict:
        c2 = make_divisible(args[0] * gw)
        shortcut = bool(args[1]) if len(args) > 1 else True
        c_ = int(c2 * 0.5)
        return {"type": "C3", "from": f, "c1": in_w[0], "cv1": c_, "cv2": c_, "cv3": c2,
                "m": [[c_, c_] for _ in range(n)], "shortcut": shortcut}  # fmt: skip

    @staticmethod
    def out_width(rec: dict, in_w: list[int]) -> int:
        return rec["cv3"]

    @classmethod
    def from_record(cls, r: dict, in_w: list[int], arch: dict) -> C3:
        require(r["c1"] == in_w[0], f"C3 c1={r['c1']} but its input has {in_w[0]} channels")
        if r["shortcut"]:
            c = r["cv1"]
            for _hidden, o in r["m"]:
                require(o == c, f"C3 with shortcut needs each bottleneck out == in, got {o} != {c}")
        return cls(r["c1"], r["cv1"], r["cv2"], r["cv3"], r["m"], r["shortcut"])

    def to_record(self) -> dict:
        m = [[_cout(b.cv1), _cout(b.cv2)] for b in self.m]
        return {"c1": _cin(self.cv1), "cv1": _cout(self.cv1), "cv2": _cout(self.cv2), "cv3": _cout(self.cv3),
                "m": m, "shortcut": bool(self.shortcut)}  # fmt: skip

    def summary(self) -> str:
        inner = ",".join(f"{_cout(b.cv1)}/{_cout(b.cv2)}" for b in self.m)
        tail = "" if self.shortcut else " no-shortcut"
        return f"{_cin(self.cv1)}->{_cout(self.cv1)}|{_cout(self.cv2)}->{_cout(self.cv3)} m=[{inner}]{tail}"


@register
class SPPF(Block):
    """Spatial pyramid pooling, fast: three chained k x k max-pools, concatenated (YOLOv5 v6)."""

    def __init__(self, c1: int, c_: int, c2: int, k: int = 5):
        super().__init__()
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))

    @staticmethod
    def spec_record(f: Any, n: int, args: list, in_w: list[int], gw: float) -> dict:
        k = int(args[1]) if len(args) > 1 else 5
        c1, c2 = in_w[0], make_divisible(args[0] * gw)
        return {"type": "SPPF", "from": f, "c1": c1, "cv1": c1 // 2, "cv2": c2, "k": k}

    @staticmethod
    def out_width(rec: dict, in_w: list[int]) -> int:
        return rec["cv2"]

    @classmethod
    def from_record(cls, r: dict, in_w: list[int], arch: dict) -> SPPF:
        require(r["c1"] == in_w[0], f"SPPF c1={r['c1']} but its input has {in_w[0]} channels")
        return cls(r["c1"], r["cv1"], r["cv2"], r.get("k", 5))

    def to_record(self) -> dict:
        k = self.m.kernel_size
        return {"c1": _cin(self.cv1), "cv1": _cout(self.cv1), "cv2": _cout(self.cv2),
                "k": int(k if isinstance(k, int) else k[0])}  # fmt: skip

    def summary(self) -> str:
        return f"{_cin(self.cv1)}->{_cout(self.cv1)}->{_cout(self.cv2)}"


@register
class Upsample(nn.Upsample):
    """nn.Upsample that reads and writes its record (``scale``, ``mode``)."""

    @staticmethod
    def spec_record(f: Any, n: int, args: list, in_w: list[int], gw: float) -> dict:
        scale = args[1] if len(args) > 1 else 2
        mode = args[2] if len(args) > 2 else "nearest"
        return {"type": "Upsample", "from": f, "scale": int(scale), "mode": str(mode)}

    @staticmethod
    def out_width(rec: dict, in_w: list[int]) -> int:
        return in_w[0]

    @staticmethod
    def stride_factor(rec: dict) -> float:
        return 1 / rec["scale"]

    @classmethod
    def from_record(cls, r: dict, in_w: list[int], arch: dict) -> Upsample:
        return cls(scale_factor=r.get("scale", 2), mode=r.get("mode", "nearest"))

    def to_record(self) -> dict:
        s = float(self.scale_factor)
        return {"scale": int(s) if s.is_integer() else s, "mode": self.mode}

    def summary(self) -> str:
        return f"x{self.scale_factor:g} {self.mode}"


@register
class Concat(Block):
    """Concatenate a list of tensors along `dim` (channels)."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.d = dim

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)

    @staticmethod
    def spec_record(f: Any, n: int, args: list, in_w: list[int], gw: float) -> dict:
        return {"type": "Concat", "from": list(f if isinstance(f, list) else [f]),
                "dim": int(args[0]) if args else 1}  # fmt: skip

    @staticmethod
    def out_width(rec: dict, in_w: list[int]) -> int:
        return sum(in_w)

    @classmethod
    def from_record(cls, r: dict, in_w: list[int], arch: dict) -> Concat:
        return cls(r.get("dim", 1))

    def to_record(self) -> dict:
        return {"dim": int(self.d)}
