"""The one-command pipeline: baseline -> sparsity training -> pruning -> distillation -> benchmark -> report
(`obbslim compress`), and the built-in synthetic demo (`obbslim demo`)."""

from __future__ import annotations

from obbslim.pipeline.compress import compress
from obbslim.pipeline.demo import demo

__all__ = ["compress", "demo"]
