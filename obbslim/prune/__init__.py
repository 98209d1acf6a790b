"""Network slimming: sparsity training on the BN scales (sparsity: the training callback and
``sparse_train``, behind ``obbslim train --sparsity``), channel pruning (slim), folding (fold), the
``obbslim prune`` command (checkpoint) and its report (report)."""

from __future__ import annotations

from obbslim.prune.checkpoint import prune_checkpoint
from obbslim.prune.slim import prune

__all__ = ["prune", "prune_checkpoint"]
