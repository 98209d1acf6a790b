"""`obbslim prune` end to end: load a checkpoint, slim it, save it, and report what changed
(``<out stem>_report.md`` and ``<out stem>_widths.png`` beside the output, see
:mod:`obbslim.prune.report`; named after the output, so two prunes into one folder keep both reports)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

from torch import nn

from obbslim.data.dataset import build_dataloader
from obbslim.data.labels import load_data_yaml, load_split
from obbslim.errors import InputError, ObbslimError
from obbslim.eval.metrics import validate
from obbslim.eval.val import check_model_classes, check_scan
from obbslim.model import ckpt_to_model, read_checkpoint, save
from obbslim.options import PruneConfig
from obbslim.prune.report import format_report, plot_widths, summarize, unmet_request
from obbslim.prune.slim import prune
from obbslim.utils.device import select_device
from obbslim.utils.io import atomic_write_text
from obbslim.utils.threads import use_threads


def _map50(model: nn.Module, samples: list, imgsz: int, batch: int, device: str) -> float:
    loader = build_dataloader(samples, "val", imgsz, batch, augment=False, workers=0)
    return float(validate(model.to(select_device(device)), loader, progress=False)["mAP50"])


def report_paths(out: str | Path) -> tuple[Path, Path]:
    """The report and the widths plot of a pruned checkpoint ``out``: ``<stem>_report.md``,
    ``<stem>_widths.png`` beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}_report.md"), out.with_name(f"{out.stem}_widths.png")


def prune_checkpoint(*args: Any, **options: Any) -> dict[str, Any]:
    """``prune_checkpoint(weights, out, **options)`` with the options of :class:`~obbslim.options.PruneConfig`
    (or a ``PruneConfig``): prune a checkpoint (its EMA weights when present) and write ``out`` (a
    regular obbslim checkpoint: the pruned architecture record plus weights), ``<stem>_report.md`` and
    ``<stem>_widths.png`` beside it. With ``data``, mAP50 on the val split before, after pruning with
    folding and without (the split is scanned once and its report printed). A request the
    constraints cannot meet (``ratio`` 0.99 with min_channels 8) prunes as far as they allow and says so
    (``rep['unmet']``, a warning, and the report)."""
    cfg = PruneConfig.of(*args, **options)
    with use_threads(cfg.threads):
        return _prune_checkpoint(cfg)


def _prune_checkpoint(cfg: PruneConfig) -> dict[str, Any]:
    weights, out, fold, data = Path(cfg.weights), Path(cfg.out), cfg.fold, cfg.data
    imgsz, batch, device = cfg.imgsz, cfg.batch, cfg.device
    ckpt = read_checkpoint(weights)
    model = ckpt_to_model(ckpt, ema=True, source=weights).eval()
    if out.resolve() == weights.resolve():
        raise ObbslimError(f"--out {out} would overwrite the input checkpoint")
    samples: list = []
    if data is not None:
        d = load_data_yaml(data)
        check_model_classes(model, d["names"], weights, d.get("yaml_file"), verbose=False)
        samples, scan = load_split(d, "val", verbose=False)
        check_scan(scan, d.get("yaml_file"))
        if cfg.verbose:
            print(scan.summary(), file=sys.stderr)
            check_model_classes(model, d["names"], weights, d.get("yaml_file"), verbose=True)
        if not samples:
            raise InputError("the val split has no usable images to measure mAP50 on", d.get("yaml_file"))
    before = copy.deepcopy(model)
    opts = cfg.kwargs("ratio", "threshold", "target_flops", "target_params", "round_to", "min_channels")
    opts["imgsz"] = imgsz
    maps: dict[str, float | None] = {}
    if data is not None:
        maps["before"] = _map50(before, samples, imgsz, batch, device)
        other = prune(copy.deepcopy(before), **opts, fold=not fold)
        maps["pruned_no_fold" if fold else "pruned_folded"] = _map50(other, samples, imgsz, batch, device)
    pruned = prune(model, **opts, fold=fold)
    if data is not None:
        maps["pruned_folded" if fold else "pruned_no_fold"] = _map50(pruned, samples, imgsz, batch, device)
    pruned = pruned.cpu()
    stats = dict(pruned.prune_stats)
    unmet = unmet_request(stats)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"source": str(weights), "fold": bool(fold), **{k: v for k, v in stats.items() if v is not None}}
    save(pruned, out, epoch=-1, hyp=ckpt.get("hyp"), metrics=None, pruned=record)
    rep = summarize(before.cpu(), pruned, imgsz)
    rep.update(weights=str(weights), out=str(out), stats=stats, mAP50=maps or None, unmet=unmet,
               file_bytes=[weights.stat().st_size, out.stat().st_size])  # fmt: skip
    report, plot = report_paths(out)
    atomic_write_text(report, format_report(rep))
    plot_widths(rep["widths"], plot)
    rep["report"], rep["plot"] = str(report), str(plot)
    if cfg.verbose:
        print(format_report(rep, widths=False), end="")
        if unmet:
            print(f"prune: warning: {unmet}", file=sys.stderr)
        print(f"Pruned model saved to {out}; report {report}, per-layer widths {plot}")
    return rep
