"""The oriented Detect head: YOLOv5 boxes plus 180 circular-smooth-label angle bins per anchor."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from obbslim.model.registry import register, require
from obbslim.ops.csl import csl_bin_angle

NBINS = 180


def _tracing(ref: torch.Tensor) -> bool:
    """True under jit.trace / ONNX export / torch.compile or export: their grids must not be cached."""
    if type(ref) is not torch.Tensor or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return True  # FakeTensor and other subclasses come from compile/export
    compiler = getattr(torch, "compiler", None)
    return any(bool(getattr(compiler, f, lambda: False)()) for f in ("is_compiling", "is_exporting"))


@register
class Detect(nn.Module):
    """One 1x1 conv per level with na * (5 + nc + nbins) outputs.

    Training mode returns the raw logits, a list of `nl` tensors [B, na, H, W, 5 + nc + nbins] with
    channels (x, y, w, h, obj, cls..., theta bins...).

    Eval mode returns `(decoded, raw)`; `decoded` is [B, N, 6 + nc + nbins], N = sum(na * H * W):
      - `decoded[..., :5]`: rbox (cx, cy, w, h, theta) in input pixels and radians;
        xy = (2 sigmoid - 0.5 + grid) * stride, wh = (2 sigmoid)^2 * anchor (pixels, (long, short)),
        theta = -pi/2 + argmax(theta logits) * pi / nbins (the bins of ops.csl). w/h are the
        (long, short) predictions but need not satisfy w >= h: postprocess normalises.
      - `decoded[..., 5]`: objectness probability (sigmoid), times the angle's confidence to the power
        `theta_conf` when it is above 0: the peak of the softmax over the theta bins (hyp theta_conf: a box
        whose bins spread over two angles, the same object seen at another angle, scores lower);
      - `decoded[..., 6:6 + nc]`: class probabilities (sigmoid);
      - `decoded[..., 6 + nc:]`: the nbins theta probabilities (sigmoid).
    The decode is plain tensor ops (no Python on values) so it exports to ONNX: the ONNX export runs
    this same `decode`, without the theta probabilities.
    """

    def __init__(
        self,
        nc: int,
        anchors: Sequence[Sequence[Sequence[float]]] | torch.Tensor,
        ch: Sequence[int],
        strides: Sequence[float],
        nbins: int = NBINS,
        theta_conf: float = 0.0,
    ):
        super().__init__()
        anchors = torch.as_tensor(anchors, dtype=torch.float32)
        if anchors.ndim != 3 or anchors.shape[-1] != 2 or not anchors.shape[0] == len(ch) == len(strides):
            raise ValueError(
                f"anchors must be [nl, na, 2] with nl == len(ch) == len(strides), got {tuple(anchors.shape)}"
            )
        self.nc = int(nc)
        self.nbins = int(nbins)
        self.no = 5 + self.nc + self.nbins
        self.nl = int(anchors.shape[0])
        self.na = int(anchors.shape[1])
        self.theta_conf = float(theta_conf)  # the arch record stores it, not the state dict
        self.register_buffer("anchors", anchors)  # pixels, (long, short)
        self.register_buffer("stride", torch.as_tensor(strides, dtype=torch.float32))
        self.m = nn.ModuleList(nn.Conv2d(int(c), self.na * self.no, 1) for c in ch)
        self._grids: dict[tuple, torch.Tensor] = {}
        self.keep_inputs = False  # the loss sets it to read the detached inputs (hyp theta_square_grad: head)
        self.inputs: list[torch.Tensor] | None = None
        self.initialize_biases()

    @torch.no_grad()
    def initialize_biases(self, cf: torch.Tensor | None = None) -> None:
        """YOLOv5 priors: ~8 objects per 640 image per level, 0.6 / nc class prob, uniform angle."""
        if self.stride.is_meta:  # a shape-only probe (model.io checks a checkpoint before allocating)
            return
        for conv, s in zip(self.m, self.stride.tolist()):
            b = conv.bias.view(self.na, -1)
            b[:, 4] += math.log(8 / (640 / s) ** 2)
            if cf is None:
                b[:, 5 : 5 + self.nc] += math.log(0.6 / (self.nc - 0.99))
            else:
                b[:, 5 : 5 + self.nc] += torch.log(cf / cf.sum()).to(b)
            if self.nbins:
                b[:, 5 + self.nc :] += math.log(1 / self.nbins)

    # ---- the record protocol (obbslim.model.registry)
    @staticmethod
    def spec_record(f: Any, n: int, args: list, in_w: list[int], gw: float) -> dict:
        return {"type": "Detect", "from": list(f if isinstance(f, list) else [f]), "ch": in_w}

    @staticmethod
    def out_width(rec: dict, in_w: list[int]) -> int:
        return 0

    @staticmethod
    def stride_factor(rec: dict) -> float:
        return 1.0

    @classmethod
    def from_record(cls, r: dict, in_w: list[int], arch: dict) -> Detect:
        require(list(r["ch"]) == in_w, f"Detect ch={r['ch']} but its inputs have {in_w} channels")
        nbins, conf = arch.get("nbins", NBINS), arch.get("theta_conf", 0.0)  # 0: a checkpoint from before it
        return cls(arch["nc"], arch["anchors"], r["ch"], arch["strides"], nbins, conf)

    def to_record(self) -> dict:
        return {"ch": [int(c.weight.shape[1]) for c in self.m]}

    def summary(self) -> str:
        return f"{[int(c.weight.shape[1]) for c in self.m]} -> {self.na}x(5+{self.nc}+{self.nbins})"

    # ---- forward
    def raw(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The level logits [B, na, H, W, no] whatever the mode."""
        raw = []
        for i in range(self.nl):
            x = self.m[i](xs[i])
            bs, _, ny, nx = x.shape
            raw.append(x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        return raw

    def forward(self, xs: list[torch.Tensor]):
        if self.keep_inputs:  # no attribute is written otherwise (tracing, export, compile)
            self.inputs = [x.detach() for x in xs] if self.training else None
        raw = self.raw(xs)
        if self.training:
            return raw
        return self.decode(raw), raw

    def _grid(self, nx: int, ny: int, ref: torch.Tensor) -> torch.Tensor:
        """Cell offsets minus 0.5, [1, 1, ny, nx, 2] as (x, y); cached per size, device and dtype."""
        key = (nx, ny, ref.device, ref.dtype)
        g = self._grids.get(key)
        if g is None:
            yv, xv = torch.meshgrid(
                torch.arange(ny, device=ref.device, dtype=ref.dtype),
                torch.arange(nx, device=ref.device, dtype=ref.dtype),
                indexing="ij",
            )
            g = (torch.stack((xv, yv), 2) - 0.5).view(1, 1, ny, nx, 2)
            if not _tracing(ref):
                self._grids[key] = g
        return g

    def decode(self, raw: list[torch.Tensor], theta_probs: bool = True) -> torch.Tensor:
        """Raw level tensors [B, na, H, W, no] -> [B, N, 6 + nc + nbins] (layout in the class doc);
        without ``theta_probs`` [B, N, 6 + nc] (the ONNX export's output: the sigmoid of the 180 bins
        would cost more than the rest of the decode, for columns only ``theta_refine`` reads)."""
        out = []
        nc = self.nc
        width = 6 + nc + (self.nbins if theta_probs else 0)
        for i, p in enumerate(raw):
            bs, na, ny, nx, _ = p.shape
            grid = self._grid(nx, ny, p)
            xy = (p[..., 0:2].sigmoid() * 2 + grid) * self.stride[i].to(p.dtype)
            wh = (p[..., 2:4].sigmoid() * 2) ** 2 * self.anchors[i].to(p.dtype).view(1, na, 1, 1, 2)
            th_logits = p[..., 5 + nc :]
            obj, cls = p[..., 4:5].sigmoid(), p[..., 5 : 5 + nc].sigmoid()
            if self.nbins:
                peak, k = th_logits.max(-1, keepdim=True)
                theta = csl_bin_angle(k.to(p.dtype), self.nbins)
                if self.theta_conf > 0:  # softmax peak ** a = exp(a * (max - logsumexp))
                    obj = obj * torch.exp(self.theta_conf * (peak - th_logits.logsumexp(-1, keepdim=True)))
            else:  # an angle-free head (nbins=0, a plain YOLOv5 head): theta 0
                theta = torch.zeros_like(p[..., :1])
            parts = [xy, wh, theta, obj, cls] + ([th_logits.sigmoid()] if theta_probs else [])
            out.append(torch.cat(parts, -1).view(bs, -1, width))
        return torch.cat(out, 1)

    def _apply(self, fn, *args, **kwargs):
        self._grids = {}  # device/dtype moves invalidate the cache
        return super()._apply(fn, *args, **kwargs)
