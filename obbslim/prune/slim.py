"""Network slimming: remove output channels with small BatchNorm scales, with one global threshold.

torch-pruning's dependency graph (traced on an example input) groups every set of coupled channels:
a conv's outputs with its BN and every consumer's inputs, across concatenations (C3, SPPF, the neck),
nearest upsampling, the residual adds of C3 bottlenecks, and the Detect head's input convs. The
Detect output convs are ``ignored_layers``: their channels are never removed.

Group score: a coupled group holds one channel index per BN in it (for a residual stack: C3.cv1 and
every bottleneck's cv2); its score per channel is the MAX of |gamma| over those BNs, so a residual
channel stays if any member needs it. A group keeps its channels whose score exceeds the one global
threshold, then at least ``min_channels``, rounded UP to a multiple of ``round_to`` (capped at the
original width), choosing the largest scores. ``ratio`` is the fraction of the prunable BN channels
actually removed after those rules (ratio 0.5 halves the channel count); the threshold that does it
is found by bisection over the group scores.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from obbslim.errors import ObbslimError
from obbslim.model import model_info
from obbslim.options import PruneConfig
from obbslim.prune.fold import fold_constants


@dataclass
class Group:
    """One coupled channel set: its root conv (by module name), width and per-channel score."""

    root: str
    width: int
    scores: torch.Tensor  # [width] max |gamma| over the group's BNs
    gammas: list[torch.Tensor]  # the |gamma| of every BN in the group (for the global threshold)


def load_torch_pruning():
    """torch-pruning, imported when channels are analysed or removed: a pruned model loads and runs
    without it (sparsity training falls back to every BatchNorm)."""
    try:
        import torch_pruning as tp
    except ImportError:  # pragma: no cover - it is a dependency
        raise ObbslimError("pruning needs torch-pruning: pip install torch-pruning") from None
    return tp


def dependency_graph(model: nn.Module):
    """torch-pruning's dependency graph of ``model`` (traced in eval mode) and the ignored Detect convs."""
    tp = load_torch_pruning()
    detect = getattr(model, "detect", None)
    ignored = list(detect.m) if detect is not None else []
    p = next(model.parameters())
    s = int(max(float(getattr(model, "stride", torch.tensor([32.0])).max()), 32)) * 2
    x = torch.zeros(1, int(getattr(model, "in_ch", 3)), s, s, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()  # the trace must not touch the BN running stats
    try:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    finally:
        model.train(was_training)
    return dg, ignored


def coupled_groups(dg, ignored):
    """Every coupled channel group rooted at a conv (the Detect output convs left out)."""
    return dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d])


def _items(group):
    """(module, handler, idxs, root_idxs) per dependency of a group."""
    for it in group:
        idxs = [int(i) for i in it.idxs]
        root_idxs = getattr(it, "root_idxs", None)
        root_idxs = [int(i) for i in root_idxs] if root_idxs is not None else idxs
        yield it.dep.target.module, it.dep.handler, idxs, root_idxs


def analyse(model: nn.Module) -> list[Group]:
    """The prunable groups and their channel scores (no change to the model)."""
    tp = load_torch_pruning()
    dg, ignored = dependency_graph(model)
    names = {m: n for n, m in model.named_modules()}
    out = []
    for g in coupled_groups(dg, ignored):
        root = g[0].dep.target.module
        width = int(root.out_channels)
        score = torch.full((width,), -math.inf)
        gammas = []
        for mod, handler, idxs, ridx in _items(g):
            if isinstance(mod, nn.BatchNorm2d) and handler == tp.prune_batchnorm_out_channels:
                gam = mod.weight.detach().abs().float().cpu()[idxs]
                score[ridx] = torch.maximum(score[ridx], gam)
                gammas.append(gam)
        if not gammas:  # nothing measures these channels: keep them
            continue
        out.append(Group(names[root], width, score, gammas))
    if not out:
        raise ObbslimError("no prunable channel groups (does the model have BatchNorm layers?)")
    return out


def all_gammas(groups: list[Group]) -> torch.Tensor:
    return torch.cat([g for grp in groups for g in grp.gammas])


def keep_count(scores: torch.Tensor, threshold: float, min_channels: int = 8, round_to: int = 8) -> int:
    """Channels a group keeps: score > threshold, at least min_channels, rounded up to round_to."""
    n = int(scores.numel())
    k = int((scores > threshold).sum())
    k = max(k, min(int(min_channels), n), 1)
    if round_to and round_to > 1:
        k = int(math.ceil(k / round_to) * round_to)
    return min(k, n)


def removed_fraction(
    groups: list[Group], threshold: float, min_channels: int = 8, round_to: int = 8
) -> float:
    """Fraction of the prunable BN channels that ``threshold`` removes (a group's channel counts once
    per BN in it, as every one of those convs loses it)."""
    total = removed = 0.0
    for g in groups:
        per_channel = sum(int(x.numel()) for x in g.gammas) / g.width
        total += per_channel * g.width
        removed += per_channel * (g.width - keep_count(g.scores, threshold, min_channels, round_to))
    return removed / total


def threshold_for_ratio(groups: list[Group], ratio: float, min_channels: int = 8, round_to: int = 8) -> float:
    """The smallest global threshold that removes at least ``ratio`` of the prunable BN channels
    (as far as min_channels allows), by bisection over the sorted group scores."""
    if ratio <= 0:
        return -math.inf
    cand = torch.unique(torch.cat([g.scores for g in groups]))  # sorted ascending
    lo, hi = 0, int(cand.numel()) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if removed_fraction(groups, float(cand[mid]), min_channels, round_to) >= ratio:
            hi = mid
        else:
            lo = mid + 1
    return float(cand[lo])


def plan(
    groups: list[Group], threshold: float, min_channels: int = 8, round_to: int = 8
) -> dict[str, list[int]]:
    """root conv name -> sorted channel indices to remove (largest scores kept)."""
    out = {}
    for g in groups:
        k = keep_count(g.scores, threshold, min_channels, round_to)
        if k < g.width:
            order = torch.sort(g.scores, descending=True, stable=True).indices
            out[g.root] = sorted(int(i) for i in order[k:])
    return out


def apply_plan(model: nn.Module, removals: dict[str, list[int]], fold: bool = True) -> dict[str, int]:
    """Remove the planned channels in place (folding their constant activations first when ``fold``)."""
    tp = load_torch_pruning()
    dg, ignored = dependency_graph(model)
    mods = dict(model.named_modules())
    stats = {"folded_bn": 0, "folded_bias": 0, "not_folded": 0}
    if fold and removals:
        zero_bn, consumers = [], []
        for root, idxs in removals.items():
            g = dg.get_pruning_group(mods[root], tp.prune_conv_out_channels, idxs)
            for mod, handler, ii, _ in _items(g):
                if isinstance(mod, nn.BatchNorm2d) and handler == tp.prune_batchnorm_out_channels:
                    zero_bn.append((mod, ii))
                elif isinstance(mod, nn.Conv2d) and handler == tp.prune_conv_in_channels:
                    consumers.append((mod, ii))
        stats = fold_constants(model, zero_bn, consumers)
    names = {m: n for n, m in model.named_modules()}
    done = set()
    for g in coupled_groups(dg, ignored):  # lazily regenerated: indices stay valid after each prune
        root = names[g[0].dep.target.module]
        if root in removals:
            g.prune(idxs=removals[root])
            done.add(root)
    missing = set(removals) - done
    if missing:
        raise ObbslimError(f"pruning: groups not found for {sorted(missing)[:3]}")
    return stats


def _cost(model: nn.Module, imgsz: int) -> tuple[int, float]:
    info = model_info(model, imgsz=imgsz, print_fn=None)
    return int(info["params"]), float(info["gflops"])


def search_threshold(
    model: nn.Module,
    groups: list[Group],
    key: str,
    target: float,
    min_channels: int,
    round_to: int,
    imgsz: int,
    iters: int = 12,
    tol: float = 0.005,
) -> tuple[float, float]:
    """Bisect the global ratio so that the kept fraction of params/FLOPs is <= target (the least
    pruning that meets it, to within ``tol``). Returns (threshold, ratio)."""
    base = _cost(model, imgsz)
    idx = 0 if key == "params" else 1

    def kept(ratio: float) -> tuple[float, float]:
        thr = threshold_for_ratio(groups, ratio, min_channels, round_to)
        m = copy.deepcopy(model)
        apply_plan(m, plan(groups, thr, min_channels, round_to), fold=False)
        return _cost(m, imgsz)[idx] / base[idx], thr

    frac, thr = kept(1.0)
    if frac > target:
        raise ObbslimError(
            f"--target-{key} {target:g} cannot be met: pruning every layer to min-channels {min_channels} "
            f"(round-to {round_to}) keeps {frac:.3f} of the {key}"
        )
    lo, hi, best = 0.0, 1.0, (thr, 1.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        frac, thr = kept(mid)
        if frac <= target:
            hi, best = mid, (thr, mid)
            if frac >= target - tol:  # close enough below the budget
                break
        else:
            lo = mid
    return best


def prune(
    model: nn.Module,
    ratio: float | None = None,
    threshold: float | None = None,
    target_flops: float | None = None,
    target_params: float | None = None,
    round_to: int = PruneConfig.round_to,
    min_channels: int = PruneConfig.min_channels,
    fold: bool = PruneConfig.fold,
    imgsz: int = PruneConfig.imgsz,
) -> nn.Module:
    """Slim ``model`` in place (and return it) by one criterion: ``ratio`` (fraction of the prunable
    BN channels removed, coupling, min_channels and round_to included), ``threshold`` (|gamma|), or
    ``target_flops`` / ``target_params`` (fraction of the original kept, counted at ``imgsz``; the
    ratio is bisected).
    ``model.arch`` afterwards describes the pruned widths; ``model.prune_stats`` holds the details."""
    crits = dict(ratio=ratio, threshold=threshold, target_flops=target_flops, target_params=target_params)
    given = {k: v for k, v in crits.items() if v is not None}
    if len(given) != 1:
        raise ObbslimError(
            "prune: give exactly one of ratio, threshold, target_flops, target_params"
            f" (got {', '.join(given) or 'none'})"
        )
    (crit, value), = given.items()
    value = float(value)
    if crit in ("ratio", "target_flops", "target_params") and not 0.0 <= value <= 1.0:
        raise ObbslimError(f"prune: {crit} must be in [0, 1], got {value:g}")
    if min_channels < 1 or round_to < 1:
        raise ObbslimError("prune: min_channels and round_to must be >= 1")
    if getattr(model, "fused", False):
        raise ObbslimError("prune: the model is fused (BN folded into convs); prune the unfused model")
    groups = analyse(model)
    g_all = all_gammas(groups)
    used_ratio = None
    if crit == "ratio":
        used_ratio = value
        thr = threshold_for_ratio(groups, value, min_channels, round_to)
    elif crit == "threshold":
        thr = value
    else:
        thr, used_ratio = search_threshold(
            model, groups, crit.split("_")[1], value, min_channels, round_to, imgsz
        )
    removals = plan(groups, thr, min_channels, round_to)
    stats = apply_plan(model, removals, fold=fold)
    model.prune_stats = {
        "criterion": crit,
        "value": value,
        "threshold": thr,
        "ratio": used_ratio,
        "gamma_below_threshold": float((g_all <= thr).float().mean()),
        "groups": len(groups),
        "groups_pruned": len(removals),
        "channels_removed": int(sum(len(v) for v in removals.values())),
        "channels_removed_fraction": removed_fraction(groups, thr, min_channels, round_to),
        **stats,
    }
    return model
