"""Network slimming: sparsity training on BN scales (sparsity), pruning (slim), folding (fold),
reports (report)."""

from __future__ import annotations

from obbslim.prune.slim import prune

__all__ = ["prune", "prune_checkpoint"]


def prune_checkpoint(*args, **kwargs):
    """See obbslim.prune.report.prune_checkpoint (imported lazily: it pulls in the data pipeline)."""
    from obbslim.prune.report import prune_checkpoint as _pc

    return _pc(*args, **kwargs)
