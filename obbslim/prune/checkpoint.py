"""`obbslim prune` end to end: load a checkpoint, slim it, save it, and report what changed
(prune_report.md and widths.png beside the output, see :mod:`obbslim.prune.report`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from obbslim.data.dataset import build_dataloader
from obbslim.errors import ObbslimError
from obbslim.eval.metrics import validate
from obbslim.model import ckpt_to_model, read_checkpoint, save
from obbslim.options import PruneConfig
from obbslim.prune.report import format_report, plot_widths, summarize
from obbslim.prune.slim import prune
from obbslim.utils.device import select_device
from obbslim.utils.io import atomic_write_text


def _map50(model: nn.Module, data: Any, imgsz: int, batch: int, device: str) -> float:
    loader = build_dataloader(data, "val", imgsz, batch, augment=False, workers=0)
    return float(validate(model.to(select_device(device)), loader, progress=False)["mAP50"])


def prune_checkpoint(*args: Any, **options: Any) -> dict[str, Any]:
    """``prune_checkpoint(weights, out, **options)`` with the options of :class:`~obbslim.options.PruneConfig`
    (or a ``PruneConfig``): prune a checkpoint (its EMA weights when present) and write ``out`` (a
    regular obbslim checkpoint: the pruned architecture record plus weights), prune_report.md and
    widths.png beside it. With ``data``, mAP50 on the val split before, after pruning with folding and
    without."""
    cfg = PruneConfig.of(*args, **options)
    weights, out, fold, data = Path(cfg.weights), Path(cfg.out), cfg.fold, cfg.data
    imgsz, batch, device = cfg.imgsz, cfg.batch, cfg.device
    ckpt = read_checkpoint(weights)
    model = ckpt_to_model(ckpt, ema=True, source=weights).eval()
    if out.resolve() == weights.resolve():
        raise ObbslimError(f"--out {out} would overwrite the input checkpoint")
    before = copy.deepcopy(model)
    opts = cfg.kwargs("ratio", "threshold", "target_flops", "target_params", "round_to", "min_channels")
    opts["imgsz"] = imgsz
    maps: dict[str, float | None] = {}
    if data is not None:
        maps["before"] = _map50(before, data, imgsz, batch, device)
        other = prune(copy.deepcopy(before), **opts, fold=not fold)
        maps["pruned_no_fold" if fold else "pruned_folded"] = _map50(other, data, imgsz, batch, device)
    pruned = prune(model, **opts, fold=fold)
    if data is not None:
        maps["pruned_folded" if fold else "pruned_no_fold"] = _map50(pruned, data, imgsz, batch, device)
    pruned = pruned.cpu()
    stats = dict(pruned.prune_stats)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"source": str(weights), "fold": bool(fold), **{k: v for k, v in stats.items() if v is not None}}
    save(pruned, out, epoch=-1, hyp=ckpt.get("hyp"), metrics=None, pruned=record)
    rep = summarize(before.cpu(), pruned, imgsz)
    rep.update(weights=str(weights), out=str(out), stats=stats, mAP50=maps or None,
               file_bytes=[weights.stat().st_size, out.stat().st_size])  # fmt: skip
    text = format_report(rep)
    atomic_write_text(out.parent / "prune_report.md", text)
    plot_widths(rep["widths"], out.parent / "widths.png")
    rep["report"] = str(out.parent / "prune_report.md")
    rep["plot"] = str(out.parent / "widths.png")
    if cfg.verbose:
        print(text)
    return rep
