"""YOLOv5 v6 building blocks with every width given explicitly, so a pruned model can be rebuilt.

Unlike ultralytics/yolov5, no block derives its inner widths from an expansion ratio: the caller
passes each convolution's output width. That is what lets `OBBModel.from_arch` rebuild a model
whose channels were removed in place by a pruner.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def autopad(k: int, p: int | None = None) -> int:
    """'same' padding for odd kernels, as YOLOv5."""
    return k // 2 if p is None else p


class Conv(nn.Module):
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


class C3(nn.Module):
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


class SPPF(nn.Module):
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


class Concat(nn.Module):
    """Concatenate a list of tensors along `dim` (channels)."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.d = dim

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)
