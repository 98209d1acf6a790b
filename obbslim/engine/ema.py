"""Exponential moving average of the weights (YOLOv5 ModelEMA): the EMA copy is what gets validated.

The decay ramps up from 0 as ``decay * (1 - exp(-updates / tau))`` so the early, fast-changing weights
do not dominate. ``updates`` is saved in the checkpoint so a resumed run continues the same ramp.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from obbslim.utils.device import de_parallel


class ModelEMA:
    """Keep a moving average of everything in the model's state_dict (BN buffers included)."""

    def __init__(self, model: nn.Module, decay: float, tau: float, updates: int = 0):
        self.ema = copy.deepcopy(de_parallel(model)).eval()
        self.updates = updates
        self.decay_max = decay
        self.tau = tau
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def decay(self) -> float:
        return self.decay_max * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay()
        msd = de_parallel(model).state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
