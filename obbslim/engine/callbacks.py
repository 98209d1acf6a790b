"""Callbacks: how later stages change a training run without touching the loop (detectron2's hooks).

The loop calls, for every callback in the order given:

- ``before_train(state)`` once the model, EMA, optimizer and loss exist (and a resumed run's state is
  restored), before SyncBatchNorm and DDP wrap the model: ``de_parallel(state.model)`` is the plain
  model. Network slimming finds its BatchNorms here; distillation hooks the student's neck.
- ``extra_loss(raw, imgs, targets) -> (loss, {name: value})`` or None, inside autocast, added to the
  detection loss (YOLOv5-scaled, i.e. times the batch size: return terms on that scale); each named
  term becomes a results.csv column.
- ``after_backward(state, epoch_frac)`` once per optimizer step, after the gradients are final
  (accumulated and, with AMP, unscaled) and before clipping: slimming adds its L1 sub-gradient here.
- ``after_epoch(state, epoch) -> {column: value}`` on rank 0, for results.csv.

A callback that is also an ``nn.Module`` is trainable (at most one per run): it moves to the device,
its parameters get their own optimizer group (no weight decay; gradients averaged over DDP ranks),
it is put in train mode every epoch, and its ``state_dict`` is saved in the checkpoints as
``extra_state`` and restored on resume. A callback with a ``name`` that is ``recorded()`` (it changed
the run) is listed in the checkpoints; a resumed run must be given a callback of every listed name
again (the command that started the run rebuilds them from its stored options).
"""

from __future__ import annotations

from typing import Any

import torch

TrainState = Any  # obbslim.engine.train.TrainState (which imports this module)


class Callback:
    """Base class: override the hooks you need (see the module doc)."""

    name: str = ""

    def recorded(self) -> bool:
        """Whether checkpoints list this callback (a resumed run then needs it again)."""
        return bool(self.name)

    def before_train(self, state: TrainState) -> None:
        pass

    def extra_loss(
        self, raw: list[torch.Tensor], imgs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]] | None:
        return None

    def after_backward(self, state: TrainState, epoch_frac: float) -> None:
        pass

    def after_epoch(self, state: TrainState, epoch: int) -> dict[str, Any]:
        return {}
