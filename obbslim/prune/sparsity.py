"""Sparsity training for network slimming: an L1 penalty on the prunable BatchNorm scales.

Two ways to apply the penalty lambda * sum|gamma| (``mode``):

- ``prox`` (default): after each backward pass every scale is soft-thresholded,
  gamma <- sign(gamma) * max(|gamma| - lambda * batch * lr_t * P, 0), in the optimizer's own metric:
  P = 1 / sqrt(v) for Adam/AdamW (v: its running mean of the squared gradient, bias-corrected), and
  1 / (1 - momentum) for SGD. This is the proximal step of lambda * batch * |gamma| in the metric in
  which the optimizer moves (the loss is summed over the batch), so a scale is held away from 0 exactly
  when the mean per-image gradient of the loss on it exceeds lambda, and sits at exactly 0 otherwise.
  That threshold does not depend on the number of steps, the learning rate, the optimizer or the batch:
  the same ``--sparsity`` means the same in a 2-minute demo and a 100-epoch DOTA run; the schedule
  only has to be long enough for the idle scales to get there (with Adam a few hundred steps, as the
  step is normalised; with SGD lr0 * steps * lambda * batch / (1 - momentum) must reach the scales' size).
- ``subgradient`` (network slimming's paper): lambda * sign(gamma) added to ``gamma.grad``; lambda is
  per step, so its effect depends on the steps, the optimizer (Adam normalises it away) and the lr,
  and the scales oscillate around 0 instead of reaching it.

Both run in the training engine's ``after_backward`` hook, after the AMP GradScaler has unscaled the
gradients. With ``bias=True`` the BN shifts (beta) get the same L1 term, so pruned channels output
~act(0) = 0.

``SparsityTraining`` also provides the per-epoch statistics: the fraction of |gamma| below 1e-2 and
the current lambda become results.csv columns, and ``gamma_hist.png`` (an epoch x log10|gamma|
heatmap, as in the network slimming paper's figure) is redrawn from ``gamma_hist.json`` each epoch.

``SparsityCallback`` plugs it into the training engine, and :func:`sparse_train` is ``obbslim train``:
the engine's ``train`` with that callback, configured by the sparsity options
(:class:`~obbslim.options.SparseTrainConfig`), which checkpoints store, so ``--resume`` keeps them.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from obbslim.engine.callbacks import Callback
from obbslim.engine.train import TrainState, train
from obbslim.options import SparseTrainConfig
from obbslim.options.train import SPARSITY_MODES
from obbslim.options.train import SPARSITY_SCHEDULES as SCHEDULES
from obbslim.options.train import SPARSITY_WEIGHTINGS as WEIGHTINGS
from obbslim.prune.slim import coupled_groups, dependency_graph, load_torch_pruning
from obbslim.utils.device import de_parallel
from obbslim.utils.io import atomic_savefig, atomic_write_text

LOGGER = logging.getLogger("obbslim")
#: at or above this fraction of the scales below 1e-2 the network is dead (no gradient reaches the scales)
COLLAPSED = 0.98

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


def _groups(model: nn.Module) -> tuple[nn.Module, list, dict]:
    """The coupled channel groups that obbslim.prune.slim prunes, traced on a CPU float copy of
    ``model`` (the live model stays where and as it is), the copy and its module names."""
    net = copy.deepcopy(model).cpu().float()
    dg, ignored = dependency_graph(net)
    return net, list(coupled_groups(dg, ignored)), {m: n for n, m in net.named_modules()}


def prunable_bn_names(model: nn.Module) -> list[str]:
    """Names of the BatchNorm2d layers whose channels torch-pruning can remove (not coupled to the
    Detect outputs); without torch-pruning every BatchNorm2d (the Detect convs have none)."""
    all_bn = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    try:  # optional at run time (see slim.load_torch_pruning)
        import torch_pruning  # noqa: F401
    except ImportError:
        return all_bn
    _, groups, names = _groups(model)
    found = {names.get(it.dep.target.module) for g in groups for it in g}
    return [n for n in all_bn if n in found]  # (found holds other modules too: only BNs are kept)


def flops_weights(model: nn.Module, imgsz: int = 256) -> dict[str, float]:
    """Per prunable BN: the multiply-adds one of its channels costs, relative to the channel average.

    A channel's cost is that of its whole coupled group: the output channel of every conv that
    produces it plus the input channel of every conv that reads it, each k*k*(other side's channels)
    at that conv's output size. Weighting the L1 penalty by it (resource-aware slimming, as MorphNet
    does) shrinks the scales of costly high-resolution layers first, so a channel ratio removes more
    FLOPs. The weights do not depend on ``imgsz`` (every feature map scales alike).
    """
    tp = load_torch_pruning()
    net, groups, names = _groups(model)
    hw: dict[nn.Module, int] = {}
    hooks = [m.register_forward_hook(lambda m, i, o: hw.__setitem__(m, o.shape[-1] * o.shape[-2]))
             for m in net.modules() if isinstance(m, nn.Conv2d)]  # fmt: skip
    with torch.no_grad():
        net.eval()(torch.zeros(1, int(getattr(net, "in_ch", 3)), imgsz, imgsz))
    for h in hooks:
        h.remove()
    cost: dict[str, float] = {}
    count: dict[str, int] = {}
    for g in groups:
        seen, macs, bns = set(), 0.0, []
        for it in g:
            m, handler = it.dep.target.module, it.dep.handler
            if (m, handler) in seen:
                continue
            seen.add((m, handler))
            if isinstance(m, nn.Conv2d) and handler == tp.prune_conv_out_channels:
                macs += m.kernel_size[0] * m.kernel_size[1] * m.in_channels / m.groups * hw[m]
            elif isinstance(m, nn.Conv2d) and handler == tp.prune_conv_in_channels:
                macs += m.kernel_size[0] * m.kernel_size[1] * m.out_channels / m.groups * hw[m]
            elif isinstance(m, nn.BatchNorm2d) and handler == tp.prune_batchnorm_out_channels:
                bns.append(m)
        for bn in bns:
            cost[names[bn]], count[names[bn]] = macs, bn.num_features
    mean = sum(cost[n] * count[n] for n in cost) / max(sum(count.values()), 1)
    return {n: c / mean for n, c in cost.items()} if mean > 0 else {n: 1.0 for n in cost}


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
    # matplotlib takes about 0.5 s to import: only when a plot is drawn
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
    try:
        return atomic_savefig(fig, path, dpi=110)
    finally:
        plt.close(fig)


class SparsityTraining:
    """The L1 subgradient hook and the per-epoch statistics for one training run.

    ``lam`` is lambda at the start; ``epochs`` spans the schedule (progress = epoch_frac / epochs).
    ``weighting`` "flops" scales each BN's lambda by flops_weights (1 on average over the channels).
    ``mode`` "prox" needs ``optimizer`` (the lr and state of each step) and ``batch`` (the images
    whose summed loss one backward pass differentiates), which the callback sets.
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
        weighting: str = "none",
        mode: str = "subgradient",
    ):
        schedule_factor(schedule, 0.0)  # validates the name
        if mode not in SPARSITY_MODES:
            raise ValueError(f"unknown sparsity mode {mode!r}; use one of {', '.join(SPARSITY_MODES)}")
        self.mode = mode
        self.optimizer = None  # prox: the lr and the metric of the step come from the optimizer
        self.batch = 1  # prox: images per backward pass (set by the callback)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown sparsity weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")
        self.lam, self.schedule, self.bias = float(lam), schedule, bool(bias)
        self.epochs = max(int(epochs), 1)
        if weighting == "flops":  # one trace gives both the prunable BNs and their weights
            w = flops_weights(model)
            self.names = [n for n, m in model.named_modules() if n in w and isinstance(m, nn.BatchNorm2d)]
            self.weights = [w[n] for n in self.names]
        else:
            self.names = prunable_bn_names(model)
            self.weights = [1.0] * len(self.names)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.current = self.lam

    def lam_at(self, epoch_frac: float) -> float:
        return self.lam * schedule_factor(self.schedule, epoch_frac / self.epochs)

    @torch.no_grad()
    def after_backward(self, model: nn.Module, epoch_frac: float) -> None:
        """prox: soft-threshold the scales by lambda_t * batch * lr * P; subgradient:
        grad(gamma) += lambda_t * sign(gamma) (and beta with ``bias``). Runs after AMP unscaling."""
        lam = self.current = self.lam_at(epoch_frac)
        mods = dict(model.named_modules())
        if self.mode == "prox":
            self._prox(mods, lam)
            return
        params, weights = [], []
        for n, w in zip(self.names, self.weights):
            bn = mods[n]
            params.append(bn.weight)
            weights.append(lam * w)
            if self.bias and bn.bias is not None:
                params.append(bn.bias)
                weights.append(lam * w)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if params:
            signs = [torch.sign(p) for p in params]
            torch._foreach_mul_(signs, weights)
            torch._foreach_add_([p.grad for p in params], signs)

    def _prox(self, mods: dict[str, nn.Module], lam: float) -> None:
        """Soft-threshold each scale by lambda * batch * lr * P (see the module docstring). Before the
        optimizer's first step Adam has no v yet: that one step goes without."""
        opt = self.optimizer
        group = next(g for g in opt.param_groups if any(p is mods[self.names[0]].weight for p in g["params"]))
        step = lam * self.batch * group["lr"]
        adam = "betas" in group
        if not adam:
            step /= max(1.0 - group.get("momentum", 0.0), 1e-3)
        for n, w in zip(self.names, self.weights):
            bn = mods[n]
            for p in [bn.weight] + ([bn.bias] if self.bias and bn.bias is not None else []):
                shrink: torch.Tensor | float = step * w
                if adam:
                    st = opt.state.get(p) or {}
                    if "exp_avg_sq" not in st or float(st["step"]) < 1:
                        continue
                    v = st["exp_avg_sq"] / (1.0 - group["betas"][1] ** float(st["step"]))
                    shrink = step * w / (v.sqrt() + group["eps"])
                p.copy_(torch.sign(p) * (p.abs() - shrink).clamp_min(0))

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
            atomic_write_text(jpath, json.dumps(hist))
            plot_gamma_hist(hist, self.run_dir / "gamma_hist.png")
        return {"gamma_lt_1e-2": stats["gamma_lt_1e-2"], "sparsity_lambda": lam}


class SparsityCallback(Callback):
    """Network slimming inside a training run, set by the run's options (``state.cfg``, so a resumed run
    keeps its own): inert when ``sparsity`` is 0."""

    name = "sparsity"

    def __init__(self) -> None:
        self.sp: SparsityTraining | None = None
        self.warned = False

    def recorded(self) -> bool:
        return self.sp is not None  # a run without sparsity resumes without this callback too

    def before_train(self, state: TrainState) -> None:
        c = state.cfg
        if not getattr(c, "sparsity", 0.0):
            return
        run_dir = state.save_dir if state.info.main and not c.noplots else None
        self.sp = SparsityTraining(de_parallel(state.model), c.sparsity, c.sparsity_schedule or "constant",
                                   state.epochs, bool(c.sparsity_bias), run_dir=run_dir,
                                   weighting=c.sparsity_weighting or "none",
                                   mode=c.sparsity_mode)  # fmt: skip
        self.sp.optimizer = state.optimizer

    def after_backward(self, state: TrainState, epoch_frac: float) -> None:
        if self.sp is not None:
            self.sp.epochs = state.epochs  # the lambda schedule spans what the lr schedule spans
            self.sp.batch = state.cfg.batch  # the loss sums over the batch (DDP: over every rank's)
            self.sp.after_backward(de_parallel(state.model), epoch_frac)

    def after_epoch(self, state: TrainState, epoch: int) -> dict:
        if self.sp is None:
            return {}
        self.sp.epochs = state.epochs
        cols = self.sp.on_epoch_end(de_parallel(state.model), epoch)
        if cols["gamma_lt_1e-2"] >= COLLAPSED and not self.warned and state.info.main:
            self.warned = True
            LOGGER.warning(
                "sparsity: %.0f%% of the prunable BN scales are below 1e-2 after epoch %d: the network "
                "has collapsed (a channel at 0 passes no gradient to the ones before it, so it does not "
                "recover). LAMBDA %g is above the loss gradient of nearly every channel: start the sparsity "
                "training from a trained model (--model best.pt, as compress does) or lower --sparsity",
                100 * cols["gamma_lt_1e-2"], epoch, self.sp.lam,
            )  # fmt: skip
        return cols


def sparse_train(*args: Any, callbacks: Sequence[Callback] = (), **options: Any) -> dict[str, Any]:
    """``obbslim train``: the training engine with network slimming's sparsity when ``sparsity`` > 0.

    ``sparse_train(data, model, epochs, **options)`` with the options of
    :class:`~obbslim.options.SparseTrainConfig` (the engine's and ``sparsity``, ``sparsity_schedule``,
    ``sparsity_bias``, ``sparsity_weighting``); returns the engine's result dict."""
    cfg = SparseTrainConfig.of(*args, **options)
    return train(cfg, callbacks=[SparsityCallback(), *callbacks])

