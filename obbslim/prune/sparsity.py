"""Sparsity training for network slimming: an L1 penalty on the prunable BatchNorm scales.

The penalty lambda * sum|gamma| is applied as its subgradient, lambda * sign(gamma), added to
``gamma.grad`` by the training engine's ``after_backward`` hook. That hook runs after the AMP
GradScaler has unscaled the gradients, so the term is never divided by the loss scale. With
``bias=True`` the BN shifts (beta) get the same L1 term, so pruned channels output ~act(0) = 0.

``SparsityTraining`` also provides the ``on_epoch_end`` callback: the fraction of |gamma| below 1e-2
and the current lambda become results.csv columns, and ``gamma_hist.png`` (an epoch x log10|gamma|
heatmap, as in the network slimming paper's figure) is redrawn from ``gamma_hist.json`` each epoch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

SCHEDULES = ("constant", "linear", "cosine")
END_FACTOR = 0.1  # linear/cosine decay lambda to 0.1 lambda at the end (the YOLOv5 slimming repos)
HIST_BINS = np.linspace(-6.0, 1.0, 71)  # log10|gamma| bins of the histogram plot


def schedule_factor(schedule: str, progress: float) -> float:
    """lambda multiplier at ``progress`` in [0, 1] of training: constant 1, linear/cosine 1 -> 0.1."""
    t = min(max(float(progress), 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - (1.0 - END_FACTOR) * t
    if schedule == "cosine":
        return END_FACTOR + (1.0 - END_FACTOR) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown sparsity schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")


def prunable_bn_names(model: nn.Module, imgsz: int = 64) -> list[str]:
    """Names of the BatchNorm2d layers whose channels torch-pruning can remove (not coupled to the
    Detect outputs). Traced on a CPU copy so the live model's running stats are untouched; without
    torch-pruning every BatchNorm2d (the Detect convs have none)."""
    import copy

    all_bn = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        import torch_pruning as tp
    except ImportError:
        return all_bn
    net = copy.deepcopy(model).cpu().float().eval()
    detect = getattr(net, "detect", None)
    ignored = list(detect.m) if detect is not None else []
    x = torch.zeros(1, int(getattr(net, "in_ch", 3)), imgsz, imgsz)
    dg = tp.DependencyGraph().build_dependency(net, example_inputs=x)
    names = {m: n for n, m in net.named_modules()}
    found = set()
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d]):
        for item in group:
            m = item.dep.target.module
            if isinstance(m, nn.BatchNorm2d):
                found.add(names[m])
    return [n for n in all_bn if n in found]


def bn_gammas(model: nn.Module, names: list[str] | None = None) -> torch.Tensor:
    """All |gamma| of the named (default: every) BatchNorm2d layer, concatenated (CPU float)."""
    mods = dict(model.named_modules())
    bns = [mods[n] for n in names] if names is not None else [
        m for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    ]
    if not bns:
        return torch.zeros(0)
    return torch.cat([b.weight.detach().abs().float().cpu().reshape(-1) for b in bns])


def gamma_stats(model: nn.Module, names: list[str] | None = None) -> dict[str, float]:
    """Fraction of |gamma| below 1e-2 (and below 1e-3), the median |gamma| and the count."""
    g = bn_gammas(model, names)
    if g.numel() == 0:
        return {"gamma_lt_1e-2": 0.0, "gamma_lt_1e-3": 0.0, "gamma_median": 0.0, "n_gamma": 0}
    return {
        "gamma_lt_1e-2": float((g < 1e-2).float().mean()),
        "gamma_lt_1e-3": float((g < 1e-3).float().mean()),
        "gamma_median": float(g.median()),
        "n_gamma": int(g.numel()),
    }


def plot_gamma_hist(history: list[dict], path: str | Path) -> Path | None:
    """Epoch x log10|gamma| heatmap (fraction of channels per bin): sparsity shows as mass moving left."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = np.asarray([h["counts"] for h in history], np.float64)
    hist = hist / np.maximum(hist.sum(1, keepdims=True), 1)
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    extent = (HIST_BINS[0], HIST_BINS[-1], epochs[0] - 0.5, epochs[-1] + 0.5)
    from matplotlib.colors import PowerNorm
    from matplotlib.ticker import MaxNLocator

    norm = PowerNorm(0.3, vmin=0.0, vmax=max(float(hist.max()), 1e-9))  # small tails stay visible
    im = ax.imshow(hist, aspect="auto", origin="lower", extent=extent, cmap="viridis", interpolation="none",
                   norm=norm)  # fmt: skip
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axvline(-2.0, color="w", lw=0.8, ls="--")
    ax.set_xlabel("log10 |gamma| (BN scale)")
    ax.set_ylabel("epoch")
    ax.set_title("BN scale distribution over training (dashed: 1e-2)")
    fig.colorbar(im, ax=ax, label="fraction of channels")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class SparsityTraining:
    """The L1 subgradient hook and the per-epoch statistics for one training run.

    ``lam`` is lambda at the start; ``epochs`` spans the schedule (progress = epoch_frac / epochs).
    ``run_dir``: where gamma_hist.json / gamma_hist.png go (None: no files).
    """

    def __init__(
        self,
        model: nn.Module,
        lam: float,
        schedule: str = "constant",
        epochs: int = 1,
        bias: bool = False,
        run_dir: str | Path | None = None,
    ):
        schedule_factor(schedule, 0.0)  # validates the name
        self.lam, self.schedule, self.bias = float(lam), schedule, bool(bias)
        self.epochs = max(int(epochs), 1)
        self.names = prunable_bn_names(model)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.current = self.lam

    def lam_at(self, epoch_frac: float) -> float:
        return self.lam * schedule_factor(self.schedule, epoch_frac / self.epochs)

    @torch.no_grad()
    def after_backward(self, model: nn.Module, epoch_frac: float) -> None:
        """grad(gamma) += lambda_t * sign(gamma) (and beta with ``bias``); runs after AMP unscaling."""
        lam = self.current = self.lam_at(epoch_frac)
        mods = dict(model.named_modules())
        params = []
        for n in self.names:
            bn = mods[n]
            params.append(bn.weight)
            if self.bias and bn.bias is not None:
                params.append(bn.bias)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if params:
            torch._foreach_add_([p.grad for p in params], [torch.sign(p) for p in params], alpha=lam)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> dict:
        """results.csv columns; also appends to gamma_hist.json and redraws gamma_hist.png."""
        lam = self.lam_at(epoch + 1.0)
        stats = gamma_stats(model, self.names)
        if self.run_dir is not None:
            g = bn_gammas(model, self.names).numpy()
            counts = np.histogram(np.log10(np.clip(g, 10 ** HIST_BINS[0], 10 ** HIST_BINS[-1])), HIST_BINS)[0]
            jpath = self.run_dir / "gamma_hist.json"
            hist = json.loads(jpath.read_text()) if jpath.exists() else []
            hist = [h for h in hist if h["epoch"] < epoch]
            hist.append({"epoch": int(epoch), "counts": counts.tolist()})
            from obbslim.utils.io import atomic_write_text

            atomic_write_text(jpath, json.dumps(hist))
            plot_gamma_hist(hist, self.run_dir / "gamma_hist.png")
        return {"gamma_lt_1e-2": stats["gamma_lt_1e-2"], "sparsity_lambda": lam}
