"""What pruning changed, as text and a plot: the report (``<out stem>_report.md``) holds params,
GFLOPs, checkpoint size and fp16 weight size before and after with % change, mAP before / right
after pruning (with and without folding) when a dataset is given, and the per-layer widths;
``<out stem>_widths.png`` draws those widths as a before/after bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from obbslim.model import model_info
from obbslim.utils.io import atomic_savefig


def conv_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv outside the Detect head, by module name ('model.4.cv1')."""
    head = f"model.{len(model.model) - 1}."
    return {
        name.removesuffix(".conv"): int(m.out_channels)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and not name.startswith(head)
    }


def fp16_bytes(model: nn.Module) -> int:
    """Size of the weights stored as fp16 (parameters and float buffers), the deployed figure."""
    n = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    return 2 * n


def _pct(after: float, before: float) -> str:
    return f"{100.0 * (after - before) / before:+.1f}%" if before else "n/a"


def summarize(before: nn.Module, after: nn.Module, imgsz: int) -> dict[str, Any]:
    b = model_info(before, imgsz=imgsz, print_fn=None)
    a = model_info(after, imgsz=imgsz, print_fn=None)
    return {
        "imgsz": imgsz,
        "params": [int(b["params"]), int(a["params"])],
        "gflops": [float(b["gflops"]), float(a["gflops"])],
        "fp16_bytes": [fp16_bytes(before), fp16_bytes(after)],
        "widths": {k: [v, conv_widths(after).get(k, 0)] for k, v in conv_widths(before).items()},
    }


def unmet_request(stats: dict[str, Any]) -> str | None:
    """Why the result differs from what was asked, or None: a ``ratio`` that min_channels / round_to
    do not allow (e.g. 0.99: every layer keeps at least 8 channels), or a criterion that removed
    nothing."""
    crit, value = stats.get("criterion"), stats.get("value")
    frac = float(stats.get("channels_removed_fraction") or 0.0)
    flag = "--" + str(crit).replace("_", "-")
    if crit == "ratio" and frac < value - 1e-9:
        return (
            f"{flag} {value:g} could not be met: every layer keeps at least --min-channels (rounded up to "
            f"--round-to) channels, so {100 * frac:.1f}% of the prunable BN channels were removed instead"
        )
    if not stats.get("channels_removed") and not (crit == "ratio" and value == 0):
        return f"{flag} {value:g} removed no channel: the model is unchanged"
    return None


def format_report(rep: dict[str, Any], widths: bool = True) -> str:
    """The report as markdown (``widths``: with the per-layer table, as the file has it)."""
    lines = ["# Pruning report", ""]
    if rep.get("weights"):
        lines += [f"- source: `{rep['weights']}`", f"- output: `{rep.get('out', '')}`"]
    if rep.get("unmet"):
        lines.append(f"- **note: {rep['unmet']}**")
    st = rep.get("stats", {})
    if st:
        crit = f"{st['criterion']} {st['value']:g}"
        lines.append(
            f"- criterion: {crit}; global |gamma| threshold {st['threshold']:.4g}"
            f" ({100 * st['gamma_below_threshold']:.1f}% of prunable BN scales at or below it)"
        )
        lines.append(
            f"- {st['channels_removed']} channels removed in {st['groups_pruned']} of {st['groups']} coupled "
            f"groups ({100 * st.get('channels_removed_fraction', float('nan')):.1f}% of the prunable BN"
            f" channels); folded into {st['folded_bn']} BN + {st['folded_bias']} biases"
            f" ({st['not_folded']} consumers not folded)"
        )
    lines += ["", "| | before | after | change |", "|---|---:|---:|---:|"]
    p0, p1 = rep["params"]
    g0, g1 = rep["gflops"]
    h0, h1 = rep["fp16_bytes"]
    lines.append(f"| params | {p0 / 1e6:.3f}M | {p1 / 1e6:.3f}M | {_pct(p1, p0)} |")
    lines.append(f"| GFLOPs at {rep['imgsz']} | {g0:.2f} | {g1:.2f} | {_pct(g1, g0)} |")
    lines.append(f"| weights fp16 | {h0 / 2**20:.2f} MB | {h1 / 2**20:.2f} MB | {_pct(h1, h0)} |")
    if rep.get("file_bytes"):
        f0, f1 = rep["file_bytes"]
        row = f"| {f0 / 2**20:.2f} MB | {f1 / 2**20:.2f} MB | {_pct(f1, f0)} |"
        lines.append("| checkpoint file (as saved) " + row)
    m = rep.get("mAP50")
    if m:
        lines += ["", "| mAP50 (VOC07, val) | value |", "|---|---:|"]
        for k in ("before", "pruned_folded", "pruned_no_fold"):
            if m.get(k) is not None:
                lines.append(f"| {k.replace('_', ' ')} | {m[k]:.4f} |")
    if widths:
        lines += ["", "## Per-layer widths", "", "| layer | before | after |", "|---|---:|---:|"]
        for k, (w0, w1) in rep["widths"].items():
            lines.append(f"| {k} | {w0} | {w1} |")
    return "\n".join(lines) + "\n"


def plot_widths(widths: dict[str, list[int]], path: str | Path) -> Path:
    """Before/after output width of every conv as grouped bars."""
    # matplotlib takes about 0.5 s to import: only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(widths)
    b = np.array([widths[k][0] for k in names])
    a = np.array([widths[k][1] for k in names])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(8, 0.22 * len(names)), 4))
    ax.bar(x - 0.2, b, 0.4, label="before", color="#bbbbbb")
    ax.bar(x + 0.2, a, 0.4, label="after", color="#1f77b4")
    ax.set_xticks(x, names, rotation=90, fontsize=6)
    ax.set_ylabel("output channels")
    ax.set_title("conv widths before / after pruning")
    ax.legend()
    fig.tight_layout()
    try:
        return atomic_savefig(fig, path, dpi=110)
    finally:
        plt.close(fig)
