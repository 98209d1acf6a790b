"""Knowledge distillation of a pruned student from its teacher (`obbslim distill`)."""

from __future__ import annotations

from obbslim.distill.distiller import Distiller, check_pair
from obbslim.distill.losses import bernoulli_kl, cwd_loss, mimic_loss, object_masks, output_losses, softmax_kl
from obbslim.distill.run import distill

__all__ = [
    "Distiller",
    "bernoulli_kl",
    "check_pair",
    "cwd_loss",
    "distill",
    "mimic_loss",
    "object_masks",
    "output_losses",
    "softmax_kl",
]
