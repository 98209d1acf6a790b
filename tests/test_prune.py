"""Network slimming: pruning by ratio / threshold / FLOPs and params budgets against a hand-computed
reference (group score = max |gamma| over residual-coupled BNs), min-channels and round-to, exactness
for zeroed channels, folding of constant activations, checkpoints that load without torch-pruning,
the CLI report, and fine-tuning a pruned checkpoint."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from obbslim.model import OBBModel, build, load_spec, model_info, save
from obbslim.prune import prune
from obbslim.prune.slim import keep_count

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread avoids oversubscribing a shared small CPU (3x faster here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
FAST_HYP = {"warmup_epochs": 0.0, "nbs": 2, "mosaic": 0.0, "degrees": 0.0, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0}


def tiny_spec() -> dict:
    spec = load_spec("yolov5n-obb")
    spec["width_multiple"] = 0.125  # widths 8..128, every block type of yolov5
    return spec


def randomize(m: nn.Module, seed: int = 0) -> nn.Module:
    """BN scales spread over (0.05, 1) and non-trivial shifts and running stats, eval mode."""
    g = torch.Generator().manual_seed(seed)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            bn.weight.data = torch.rand(n, generator=g) * 0.95 + 0.05
            bn.bias.data = torch.randn(n, generator=g) * 0.3
            bn.running_mean = torch.randn(n, generator=g) * 0.2
            bn.running_var = torch.rand(n, generator=g) + 0.5
    return m.eval()


@pytest.fixture(scope="module")
def base() -> OBBModel:
    torch.manual_seed(0)
    return randomize(build(tiny_spec(), nc=5))  # the synthetic dataset's 5 classes


def widths(m: nn.Module) -> dict[str, int]:
    head = f"model.{len(m.model) - 1}."
    convs = ((n, x) for n, x in m.named_modules() if isinstance(x, nn.Conv2d))
    return {n: x.out_channels for n, x in convs if not n.startswith(head)}


def residual_groups(m: OBBModel) -> list[list[str]]:
    """Hand-listed couplings of yolov5: a C3 with shortcut adds cv1 and every bottleneck's cv2."""
    out = []
    for i, layer in enumerate(m.model):
        if getattr(layer, "type", "") == "C3" and layer.shortcut:
            out.append([f"model.{i}.cv1.conv"] + [f"model.{i}.m.{j}.cv2.conv" for j in range(len(layer.m))])
    return out


def expected_widths(m: OBBModel, thr: float, min_channels: int, round_to: int) -> dict[str, int]:
    """Reference kept widths: score per channel = |gamma| (max over a residual group), then the
    keep_count rule written out: > thr, at least min_channels, rounded up, capped."""
    mods = dict(m.named_modules())

    def gamma(conv_name: str) -> np.ndarray:
        return mods[conv_name.removesuffix(".conv") + ".bn"].weight.detach().abs().numpy()

    out = {}
    coupled = {n: grp for grp in residual_groups(m) for n in grp}
    for name, w in widths(m).items():
        grp = coupled.get(name, [name])
        score = np.max(np.stack([gamma(n) for n in grp]), 0)
        k = max(int((score > thr).sum()), min(min_channels, w), 1)
        k = int(math.ceil(k / round_to) * round_to)
        out[name] = min(k, w)
    return out


def all_abs_gammas(m: nn.Module) -> np.ndarray:
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    return np.concatenate([b.weight.detach().abs().numpy() for b in bns])


def check_consistent(before: OBBModel, after: OBBModel, x: torch.Tensor) -> None:
    """The pruned model runs, keeps the Detect outputs, and its arch record rebuilds it exactly."""
    det0, det1 = before.detect, after.detect
    assert [c.out_channels for c in det1.m] == [c.out_channels for c in det0.m]
    arch = after.arch
    rebuilt = OBBModel.from_arch(arch, names=after.names)
    rebuilt.load_state_dict(after.state_dict(), strict=True)
    rebuilt.eval()
    with torch.no_grad():
        y0, raw0 = before(x)
        y1, raw1 = after(x)
        y2, raw2 = rebuilt(x)
    assert y1.shape == y0.shape and [r.shape for r in raw1] == [r.shape for r in raw0]
    for a, b in zip(raw1, raw2):
        assert torch.equal(a, b)
    assert rebuilt.arch == arch


# ----------------------------------------------------------------------------- keep_count / criteria


@pytest.mark.parametrize(
    "scores, thr, mn, rt, exp",
    [
        ([0.1, 0.2, 0.3, 0.4], 0.25, 1, 1, 2),
        ([0.1, 0.2, 0.3, 0.4], 0.25, 3, 1, 3),  # min channels
        ([0.1] * 10, 0.5, 1, 8, 8),  # 1 -> rounded up to 8
        ([0.9] * 9 + [0.0], 0.5, 1, 8, 10),  # 9 -> 16, capped at the width
        ([0.9] * 4, 0.5, 8, 8, 4),  # min channels capped at the width
    ],
)
def test_keep_count(scores, thr, mn, rt, exp):
    assert keep_count(torch.tensor(scores), thr, mn, rt) == exp


def test_exactly_one_criterion(base):
    from obbslim.errors import ObbslimError

    with pytest.raises(ObbslimError, match="exactly one"):
        prune(copy.deepcopy(base), ratio=0.5, threshold=0.1)
    with pytest.raises(ObbslimError, match="exactly one"):
        prune(copy.deepcopy(base))
    with pytest.raises(ObbslimError, match="in \\[0, 1\\]"):
        prune(copy.deepcopy(base), ratio=1.5)


# ----------------------------------------------------------------------------- pruning vs the reference


@pytest.mark.parametrize("mn, rt", [(1, 1), (4, 3), (8, 8)])
def test_threshold_widths_match_reference(base, mn, rt):
    thr = 0.5
    exp = expected_widths(base, thr, mn, rt)
    m = prune(copy.deepcopy(base), threshold=thr, min_channels=mn, round_to=rt, imgsz=64)
    got = widths(m)
    assert got == exp
    orig = widths(base)
    for k, w in got.items():  # min-channels and round-to in every layer
        assert w >= min(mn, orig[k])
        assert w % rt == 0 or w == orig[k]
    assert sum(got.values()) < sum(orig.values())
    check_consistent(base, m, torch.rand(1, 3, 64, 64))


def removed(before: OBBModel, kept: dict[str, int]) -> float:
    orig = widths(before)
    return 1 - sum(kept.values()) / sum(orig.values())


@pytest.mark.parametrize("ratio, mn, rt", [(0.5, 1, 1), (0.5, 8, 8), (0.3, 4, 3)])
def test_ratio_removes_that_fraction_of_channels(base, ratio, mn, rt):
    # ratio = the fraction of conv output channels removed once the residual max-rule, min-channels
    # and round-to have acted, with the least pruning that reaches it: brute force over thresholds
    scores = np.unique(all_abs_gammas(base))
    ref_thr = next(t for t in scores if removed(base, expected_widths(base, t, mn, rt)) >= ratio)
    m = prune(copy.deepcopy(base), ratio=ratio, min_channels=mn, round_to=rt, imgsz=64)
    assert widths(m) == expected_widths(base, ref_thr, mn, rt)
    frac = removed(base, widths(m))
    assert frac >= ratio and m.prune_stats["channels_removed_fraction"] == pytest.approx(frac)
    # the global |gamma| percentile (network slimming's definition) would remove less than asked,
    # because the residual max-rule and round-to keep channels back
    pct = float(np.quantile(all_abs_gammas(base), ratio))
    assert removed(base, expected_widths(base, pct, mn, rt)) < ratio
    check_consistent(base, m, torch.rand(1, 3, 96, 96))


@pytest.mark.parametrize("key, target", [("flops", 0.5), ("params", 0.4)])
def test_budget_search(base, key, target):
    m = prune(copy.deepcopy(base), **{f"target_{key}": target}, min_channels=1, round_to=1, imgsz=128)
    i0, i1 = model_info(base, 128, print_fn=None), model_info(m, 128, print_fn=None)
    name = "gflops" if key == "flops" else "params"
    frac = i1[name] / i0[name]
    assert frac <= target + 1e-9
    assert frac > target - 0.1  # the least pruning that meets the budget, not much below it
    assert 0 < m.prune_stats["ratio"] < 1


# ----------------------------------------------------------------------------- exactness and folding


def zero_channels(m: OBBModel, beta: float | None) -> dict[str, list[int]]:
    """Set gamma = 0 (and beta = `beta` or random) on chosen channels: plain convs, a concatenated
    output, the SPPF, and a whole residual group (C3.cv1 plus both bottleneck cv2 of layer 4)."""
    picks = {
        "model.0.bn": [0, 3],
        "model.3.bn": [1, 2, 5],
        "model.10.bn": [4],  # concatenated with the upsampled path
        "model.9.cv1.bn": [2, 7],  # SPPF hidden: max-pools and a concat
        "model.4.cv1.bn": [1, 6],  # residual group ...
        "model.4.m.0.cv2.bn": [1, 6],
        "model.4.m.1.cv2.bn": [1, 6],
        "model.13.m.0.cv1.bn": [0],  # 3x3 consumer
        "model.23.cv3.bn": [3, 9],  # feeds the Detect conv
    }
    mods = dict(m.named_modules())
    g = torch.Generator().manual_seed(1)
    for name, idx in picks.items():
        bn = mods[name]
        bn.weight.data[idx] = 0.0
        bn.bias.data[idx] = beta if beta is not None else torch.randn(len(idx), generator=g) * 0.8 + 0.3
    return picks


def test_zero_channels_prune_exactly(base):
    m0 = copy.deepcopy(base)
    picks = zero_channels(m0, beta=0.0)
    m1 = prune(copy.deepcopy(m0), threshold=1e-9, min_channels=1, round_to=1, imgsz=64)
    assert m1.prune_stats["channels_removed"] == 2 + 3 + 1 + 2 + 2 + 1 + 2
    w0, w1 = widths(m0), widths(m1)
    for name, idx in picks.items():
        conv = name.removesuffix(".bn") + ".conv"
        assert w1[conv] == w0[conv] - len(idx)
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        y0, raw0 = m0(x)
        y1, raw1 = m1(x)
    for a, b in zip(raw0, raw1):
        assert (a - b).abs().max() < 1e-5
    assert (y0 - y1).abs().max() < 1e-3  # decoded pixels (x stride and anchors)
    check_consistent(m0, m1, x[:1])


def _no_padding_model() -> OBBModel:
    """All consumers see a pruned channel on their whole window (no zero padding): folding is exact.
    Convs with k=2/s=2 and 1x1, a concat, SPPF (max-pool pads with -inf) and the Detect biases."""
    conv = lambda f, c1, c2, k, s: {"type": "Conv", "from": f, "c1": c1, "c2": c2, "k": k, "s": s, "p": 0}  # noqa: E731
    arch = {
        "name": "nopad", "nc": 2, "nbins": 180, "ch": 3, "strides": [8, 16, 32],
        "anchors": [[[14, 8], [26, 12], [24, 22]], [[48, 16], [52, 36], [90, 32]],
                    [[110, 70], [200, 60], [260, 180]]],
        "layers": [
            conv(-1, 3, 16, 2, 2), conv(-1, 16, 16, 2, 2), conv(-1, 16, 16, 2, 2),  # 0-2: /8
            conv(-1, 16, 16, 1, 1),  # 3
            {"type": "Concat", "from": [-1, 2], "dim": 1},  # 4: 32 ch
            conv(-1, 32, 16, 2, 2),  # 5: /16
            conv(-1, 16, 16, 2, 2),  # 6: /32
            {"type": "SPPF", "from": -1, "c1": 16, "cv1": 8, "cv2": 16, "k": 5},  # 7
            {"type": "Detect", "from": [4, 5, 7], "ch": [32, 16, 16]},
        ],
    }  # fmt: skip
    torch.manual_seed(0)
    return randomize(OBBModel.from_arch(arch))


def _pruned_channels(m: OBBModel, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    for x in m.modules():
        if isinstance(x, nn.BatchNorm2d):
            idx = torch.randperm(x.num_features, generator=g)[: x.num_features // 3]
            x.weight.data[idx] = 0.0
            x.bias.data[idx] = torch.randn(len(idx), generator=g) * 0.8 + 0.5


def test_fold_is_exact_without_padding():
    m0 = _no_padding_model()
    _pruned_channels(m0)
    x = torch.rand(2, 3, 128, 128)
    errs = {}
    for fold in (True, False):
        m1 = prune(copy.deepcopy(m0), threshold=1e-9, min_channels=1, round_to=1, fold=fold, imgsz=64)
        assert m1.prune_stats["channels_removed"] > 20
        with torch.no_grad():
            errs[fold] = max((a - b).abs().max().item() for a, b in zip(m0(x)[1], m1(x)[1]))
    assert m1.prune_stats["folded_bn"] == 0 and m1.prune_stats["not_folded"] == 0
    assert errs[True] < 1e-4
    assert errs[False] > 0.1


def test_fold_reduces_the_error_with_padding(base):
    """yolov5 with 3x3 consumers and residual adds: exact in the interior only, still much better."""
    m0 = copy.deepcopy(base)
    zero_channels(m0, beta=None)
    x = torch.rand(1, 3, 256, 256)
    errs, interior = {}, {}
    for fold in (True, False):
        m1 = prune(copy.deepcopy(m0), threshold=1e-9, min_channels=1, round_to=1, fold=fold, imgsz=64)
        with torch.no_grad():
            r0, r1 = m0(x)[1][0], m1(x)[1][0]  # stride 8: 32 x 32 cells
        errs[fold] = (r0 - r1).abs().max().item()
        interior[fold] = (r0 - r1)[:, :, 8:-8, 8:-8].abs().max().item()
        if fold:
            assert m1.prune_stats["folded_bn"] > 0 and m1.prune_stats["folded_bias"] == 1  # Detect P5
    assert errs[True] < errs[False]
    assert interior[True] < 1e-4 < interior[False]


# ----------------------------------------------------------------------------- files, CLI, fine-tuning


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from obbslim.data.synth import make_synthetic

    dst = tmp_path_factory.mktemp("synth") / "ds"
    return Path(make_synthetic(dst, n_images=4, size=96, seed=0, val_frac=0.5))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, base, synth) -> Path:
    from obbslim.data.labels import load_data_yaml

    path = tmp_path_factory.mktemp("ck") / "sparse.pt"
    m = copy.deepcopy(base)
    m.names = list(load_data_yaml(synth)["names"])
    save(m, path, ema=m)
    return path


def test_cli_writes_checkpoint_report_and_plot(ckpt, tmp_path, capsys):
    from obbslim.cli import main

    out = tmp_path / "p" / "pruned.pt"
    rc = main(["prune", "--weights", str(ckpt), "--ratio", "0.5", "--imgsz", "64", "--out", str(out)])
    assert rc == 0
    text = (out.parent / "pruned_report.md").read_text()
    assert "| params |" in text and "| GFLOPs at 64 |" in text and "model.4.cv1" in text
    assert (out.parent / "pruned_widths.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "Pruning report" in printed and "model.4.cv1" not in printed  # the per-layer table is in the file
    assert printed.rstrip().splitlines()[-1] == (
        f"Pruned model saved to {out}; report {out.parent / 'pruned_report.md'}, per-layer widths "
        f"{out.parent / 'pruned_widths.png'}"
    )
    ck = torch.load(out, weights_only=True)
    assert ck["pruned"]["criterion"] == "ratio" and ck["pruned"]["fold"] is True
    m = OBBModel.from_arch(ck["arch"])
    m0 = OBBModel.from_arch(torch.load(ckpt, weights_only=True)["arch"])
    assert sum(widths(m).values()) < sum(widths(m0).values())
    rc = main(["prune", "--weights", str(ckpt), "--target-flops", "0.01", "--imgsz", "64", "--out", str(out)])
    assert rc == 2  # a budget below the min-channels floor is a one-line error
    assert "cannot be met" in capsys.readouterr().err


def test_pruned_checkpoint_loads_without_torch_pruning(ckpt, tmp_path):
    from obbslim.prune import prune_checkpoint

    out = tmp_path / "pruned.pt"
    rep = prune_checkpoint(ckpt, out, ratio=0.6, imgsz=64, verbose=False)
    assert rep["params"][1] < rep["params"][0]
    code = f"""
import sys
sys.modules["torch_pruning"] = None  # import torch_pruning now raises ImportError
import torch
from obbslim.model import load
ck = torch.load({str(out)!r}, weights_only=True)
m = load({str(out)!r})
assert "torch_pruning" not in [k for k, v in sys.modules.items() if v is not None]
y, raw = m(torch.zeros(1, 3, 64, 64))
print(sum(p.numel() for p in m.parameters()), tuple(y.shape))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    n, shape = r.stdout.split(maxsplit=1)
    assert int(n) == rep["params"][1]


def test_prune_checkpoint_reports_map_and_pruned_model_fine_tunes(ckpt, synth, tmp_path):
    from obbslim.engine.train import train
    from obbslim.model import read_checkpoint
    from obbslim.prune import prune_checkpoint

    out = tmp_path / "pruned.pt"
    rep = prune_checkpoint(ckpt, out, ratio=0.5, imgsz=64, data=synth, batch=2, verbose=False)
    assert set(rep["mAP50"]) == {"before", "pruned_folded", "pruned_no_fold"}
    assert all(0.0 <= v <= 1.0 for v in rep["mAP50"].values())
    assert "mAP50 (VOC07, val)" in (tmp_path / "pruned_report.md").read_text()
    arch = read_checkpoint(out)["arch"]
    r = train(data=synth, model=str(out), epochs=1, imgsz=64, batch=2, device="cpu", workers=0, hyp=FAST_HYP,
              project=tmp_path / "runs", verbose=False, noplots=True)  # fmt: skip
    assert read_checkpoint(r["last"])["arch"]["layers"] == arch["layers"]  # the pruned widths are kept
