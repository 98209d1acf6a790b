"""Sparsity training (network slimming): the L1 subgradient hook, its schedules, AMP independence,
and the per-epoch statistics (results.csv columns, gamma_hist.png) of a tiny 2-epoch run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from obbslim.prune.sparsity import (
    SparsityTraining,
    bn_gammas,
    flops_weights,
    gamma_stats,
    prunable_bn_names,
    schedule_factor,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread avoids oversubscribing a shared small CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


FAST_HYP = {"warmup_epochs": 0.0, "nbs": 2, "mosaic": 0.0, "degrees": 0.0, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0}


def tiny_model():
    from obbslim.model import build, load_spec

    spec = load_spec("yolov5n-obb")
    spec["width_multiple"] = 0.125
    torch.manual_seed(0)
    m = build(spec, nc=2)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.weight.data.uniform_(-1, 1)
            bn.bias.data.uniform_(-1, 1)
    return m


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from obbslim.data.synth import make_synthetic

    dst = tmp_path_factory.mktemp("synth") / "ds"
    return Path(make_synthetic(dst, n_images=6, size=96, seed=0, val_frac=0.34))


def train_only(synth: Path) -> dict:
    """The dataset without its val split (no validation: the fastest runs)."""
    from obbslim.data.labels import load_data_yaml

    d = load_data_yaml(synth)
    return {"path": d["path"], "train": d["train"], "names": d["names"]}


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory) -> Path:
    from obbslim.model import load_spec

    spec = load_spec("yolov5n-obb")
    spec["width_multiple"] = 0.125
    path = tmp_path_factory.mktemp("spec") / "tiny-obb.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    "schedule, values",
    [
        ("constant", [1.0, 1.0, 1.0, 1.0]),
        ("linear", [1.0, 1 - 0.9 * 0.25, 0.55, 0.1]),
        ("cosine", [1.0, 0.1 + 0.45 * (1 + math.sqrt(0.5)), 0.55, 0.1]),
    ],
)
def test_schedule_values(schedule, values):
    got = [schedule_factor(schedule, t) for t in (0.0, 0.25, 0.5, 1.0)]
    assert got == pytest.approx(values, abs=1e-12)
    assert schedule_factor(schedule, 2.0) == pytest.approx(values[-1])  # clamped past the end


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown sparsity schedule"):
        schedule_factor("step", 0.5)


def test_prunable_bns_are_all_backbone_and_neck_bns():
    m = tiny_model()
    names = prunable_bn_names(m)
    all_bn = [n for n, x in m.named_modules() if isinstance(x, nn.BatchNorm2d)]
    assert names == all_bn and len(names) == 57  # the Detect convs have no BN


@pytest.mark.parametrize("bias", [False, True])
def test_hook_adds_lambda_sign(bias):
    m = tiny_model()
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    bns[0].weight.data[:2] = 0.0  # sign(0) = 0: no push
    g0 = {}
    for p in m.parameters():
        p.grad = torch.randn_like(p)
        g0[p] = p.grad.clone()
    sp = SparsityTraining(m, 1e-3, "linear", epochs=10, bias=bias)
    sp.after_backward(m, 5.0)  # halfway: 0.55 lambda
    lam = 1e-3 * 0.55
    assert sp.current == pytest.approx(lam)
    for bn in bns:
        exp = g0[bn.weight] + lam * torch.sign(bn.weight.detach())
        torch.testing.assert_close(bn.weight.grad, exp, rtol=0, atol=1e-7)
        exp_b = g0[bn.bias] + (lam * torch.sign(bn.bias.detach()) if bias else 0)
        torch.testing.assert_close(bn.bias.grad, exp_b, rtol=0, atol=1e-7)
    assert torch.equal(bns[0].weight.grad[:2], g0[bns[0].weight][:2])
    for conv in m.detect.m:  # untouched
        assert torch.equal(conv.weight.grad, g0[conv.weight])


def test_flops_weights_are_the_hand_computed_channel_costs():
    """One channel's multiply-adds, produced and read, against the spec: model.0 (6x6 stride-2 conv of
    3 inputs, at S/2) feeds model.1 (3x3 stride 2, at S/4); model.1 feeds C3 model.2's two 1x1 convs;
    model.2's residual group (1x1 cv1 + the bottleneck's 3x3 cv2) feeds the bottleneck's cv1 and cv3
    (both 1x1). Weights average 1 over the channels."""
    m = tiny_model()
    w = flops_weights(m, imgsz=128)
    q = (128 / 4) ** 2  # stride-4 map
    c0, c1 = m.model[0].conv.out_channels, m.model[1].conv.out_channels
    c3 = m.model[2]
    cost0 = 6 * 6 * 3 * 4 * q + 9 * c1 * q
    cost1 = 9 * c0 * q + (c3.cv1.conv.out_channels + c3.cv2.conv.out_channels) * q
    hid = c3.cv1.conv.out_channels
    cost2 = (c1 + 9 * hid) * q + (hid + c3.cv3.conv.out_channels) * q  # producers + readers
    assert w["model.0.bn"] / w["model.1.bn"] == pytest.approx(cost0 / cost1, rel=1e-9)
    assert w["model.2.cv1.bn"] / w["model.1.bn"] == pytest.approx(cost2 / cost1, rel=1e-9)
    assert w["model.2.m.0.cv2.bn"] == w["model.2.cv1.bn"]  # one residual group, one cost
    assert flops_weights(m, imgsz=64) == pytest.approx(w, rel=1e-9)  # no dependence on the size
    n = {k: x.num_features for k, x in m.named_modules() if isinstance(x, nn.BatchNorm2d)}
    assert sum(w[k] * n[k] for k in w) / sum(n[k] for k in w) == pytest.approx(1.0)
    # the hook pushes each BN by its own weight
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    sp = SparsityTraining(m, 1e-3, "constant", weighting="flops")
    assert sp.names == prunable_bn_names(m)  # the same BNs, in the same order, from one trace
    sp.after_backward(m, 0.0)
    for k in ("model.0.bn", "model.8.cv1.bn"):
        bn = dict(m.named_modules())[k]
        torch.testing.assert_close(bn.weight.grad, 1e-3 * w[k] * torch.sign(bn.weight.detach()))
    with pytest.raises(ValueError, match="weighting"):
        SparsityTraining(m, 1e-3, weighting="params")


def test_hook_after_amp_unscale_is_not_divided_by_the_scale():
    """Through the engine's optimizer step with an enabled GradScaler (scale 1024): the BN scale moves by
    exactly lr * lambda * sign(gamma), not that over the loss scale."""
    from obbslim.engine.train import TrainState, optimizer_step
    from obbslim.options import SparseTrainConfig
    from obbslim.prune.sparsity import SparsityCallback

    m = tiny_model()
    bn = m.model[0].bn
    w0 = bn.weight.detach().clone()
    opt = torch.optim.SGD(m.parameters(), lr=1.0, momentum=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=True)
    assert scaler.is_enabled()
    loss = (bn.weight * 0.0).sum() + (m.model[1].conv.weight * 0.0).sum()
    scaler.scale(loss).backward()
    cb = SparsityCallback()
    cfg = SparseTrainConfig(sparsity=1e-3, sparsity_mode="subgradient", noplots=True)
    hyp = {"clip_grad_norm": 1e9}
    state = TrainState(cfg=cfg, hyp=hyp, model=m, optimizer=opt, scaler=scaler, callbacks=[cb])
    cb.before_train(state)
    assert cb.recorded() and cb.sp.lam == 1e-3
    optimizer_step(state, 0.5)
    torch.testing.assert_close(bn.weight.detach(), w0 - 1e-3 * torch.sign(w0), rtol=0, atol=1e-7)


def test_gamma_stats():
    m = tiny_model()
    g = torch.cat([x.weight.detach().abs().reshape(-1) for x in m.modules() if isinstance(x, nn.BatchNorm2d)])
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    bns[3].weight.data[:] = 1e-3
    bns[4].weight.data[:5] = -5e-3
    s = gamma_stats(m)
    exp = torch.cat([x.weight.detach().abs().reshape(-1) for x in bns])
    assert s["n_gamma"] == g.numel()
    assert s["gamma_lt_1e-2"] == pytest.approx(float((exp < 1e-2).float().mean()))
    assert s["gamma_lt_1e-2"] >= (bns[3].weight.numel() + 5) / g.numel()


def test_two_epoch_run_logs_columns_plots_and_resumes(synth, tiny_spec, tmp_path):
    """A 2-epoch linear-schedule run stopped after epoch 0 and resumed: the sparsity settings come
    back from the checkpoint, results.csv has the lambda of each epoch and gamma_lt_1e-2,
    gamma_hist.png is drawn."""
    from obbslim.engine.runs import ResultsCSV
    from obbslim.model import read_checkpoint
    from obbslim.prune.sparsity import sparse_train as train

    lam = 0.05
    common = dict(data=train_only(synth), model=str(tiny_spec), epochs=2, imgsz=64, batch=2, device="cpu",
                  workers=0, hyp=FAST_HYP, project=tmp_path / "runs", verbose=False, noautoanchor=True)
    r1 = train(**common, name="sp", stop_after=1, sparsity=lam, sparsity_schedule="linear", noplots=False)
    run_dir = Path(r1["run_dir"])
    args = yaml.safe_load((run_dir / "args.yaml").read_text())
    assert args["sparsity"] == lam and args["sparsity_schedule"] == "linear"
    r2 = train(resume=run_dir, device="cpu", workers=0, verbose=False)
    assert r2["epochs_done"] == 2
    rows = ResultsCSV(run_dir / "results.csv").read()
    assert len(rows) == 2
    lams = [float(r["sparsity_lambda"]) for r in rows]
    assert lams == pytest.approx([lam * 0.55, lam * 0.1], rel=1e-4)  # factor at the end of each epoch
    fr = [float(r["gamma_lt_1e-2"]) for r in rows]
    assert all(0.0 <= f <= 1.0 for f in fr)
    assert (run_dir / "gamma_hist.png").stat().st_size > 1000
    ck = read_checkpoint(run_dir / "weights" / "last.pt")
    n_gamma = sum(v.numel() for k, v in ck["model"].items() if k.endswith("bn.weight"))
    hist = json.loads((run_dir / "gamma_hist.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1]  # epoch 0 from the first call, 1 from the resumed one
    assert [sum(h["counts"]) for h in hist] == [n_gamma, n_gamma]
    assert ck["train_args"]["sparsity"] == lam



def test_time_limited_run_ends_the_lambda_schedule_with_the_run(synth, tiny_spec, tmp_path, monkeypatch):
    """With --time the epoch count is re-estimated after each epoch; the lambda schedule follows it, as
    the lr does, so a linear schedule still reaches 0.1 lambda in the last epoch. A fake clock in the
    trainer (1 s per reading) makes the estimate deterministic."""
    import time as real_time

    import obbslim.engine.train as train_mod
    from obbslim.engine.runs import ResultsCSV
    from obbslim.prune.sparsity import sparse_train

    class Clock:
        now = 0.0

        def time(self) -> float:
            self.now += 1.0
            return self.now

        def __getattr__(self, name):
            return getattr(real_time, name)

    clock = Clock()
    monkeypatch.setattr(train_mod, "time", clock)
    lam = 0.05
    r = sparse_train(data=train_only(synth), model=str(tiny_spec), epochs=1000, imgsz=64, batch=2,
                     device="cpu", workers=0, hyp=FAST_HYP, project=tmp_path / "runs", verbose=False,
                     noautoanchor=True, noval=True, name="t", sparsity=lam, sparsity_schedule="linear",
                     time_limit=12 / 3600)  # fmt: skip
    n = r["epochs_done"]
    assert 2 <= n < 1000  # the clock ran out after a few epochs
    rows = ResultsCSV(Path(r["run_dir"]) / "results.csv").read()
    assert float(rows[-1]["sparsity_lambda"]) == pytest.approx(0.1 * lam, rel=1e-6)


def _bn_weights(m: nn.Module) -> list[torch.Tensor]:
    return [x.weight for x in m.modules() if isinstance(x, nn.BatchNorm2d)]


def test_prox_soft_thresholds_in_the_optimizers_metric():
    """The shrink is lambda * batch * lr * P and stops at 0 (no sign flip), gradients untouched.
    Hand-computed: SGD, lambda 0.1, batch 2, lr 0.1, momentum 0.5 -> 0.1 * 2 * 0.1 / 0.5 = 0.04;
    Adam after one step with gradient 0.5 (bias-corrected v = 0.25): 0.01 * 4 * 0.1 / 0.5 = 0.008."""
    m = tiny_model()
    bn = next(x for x in m.modules() if isinstance(x, nn.BatchNorm2d))
    sp = SparsityTraining(m, 0.1, mode="prox")
    sp.optimizer, sp.batch = torch.optim.SGD(_bn_weights(m), lr=0.1, momentum=0.5), 2
    bn.weight.data[:4] = torch.tensor([0.03, -0.2, 0.5, 0.0])
    bn.weight.grad = torch.ones_like(bn.weight)
    sp.after_backward(m, 0.0)
    torch.testing.assert_close(bn.weight.data[:4], torch.tensor([0.0, -0.16, 0.46, 0.0]))
    assert torch.equal(bn.weight.grad, torch.ones_like(bn.weight))

    sp = SparsityTraining(m, 0.01, mode="prox")
    sp.optimizer, sp.batch = torch.optim.Adam(_bn_weights(m), lr=0.1), 4
    sp.after_backward(m, 0.0)  # no Adam state yet: nothing happens
    assert bn.weight.data[1] == pytest.approx(-0.16)
    for p in _bn_weights(m):
        p.grad = torch.full_like(p, 0.5)
    sp.optimizer.step()  # every weight moves by -lr = -0.1
    bn.weight.data[:3] = torch.tensor([0.005, -0.2, 0.5])
    sp.after_backward(m, 0.0)
    torch.testing.assert_close(bn.weight.data[:3], torch.tensor([0.0, -0.192, 0.492]))
    with pytest.raises(ValueError, match="sparsity mode"):
        SparsityTraining(m, 1.0, mode="l1")


@pytest.mark.parametrize("opt", ["SGD", "AdamW"])
@pytest.mark.parametrize("lr,batch", [(0.01, 2), (0.001, 16)])
def test_prox_keeps_a_scale_exactly_when_its_gradient_exceeds_lambda(opt, lr, batch):
    """The rule behind --sparsity: a scale whose per-image loss gradient is a (the loss sums over the
    batch, so its gradient is a * batch) grows when a > lambda and, when a < lambda, is set to 0 by every
    prox and ends within the one optimizer step that follows it, whatever the optimizer, lr and batch."""
    lam = 0.01
    for a, survives in ((2 * lam, True), (0.5 * lam, False)):
        m = tiny_model()
        ws = _bn_weights(m)
        for w in ws:
            w.data.fill_(0.5)
        sgd = opt == "SGD"
        optim = torch.optim.SGD(ws, lr=lr, momentum=0.9) if sgd else torch.optim.AdamW(ws, lr, weight_decay=0)
        sp = SparsityTraining(m, lam, mode="prox")
        sp.optimizer, sp.batch = optim, batch
        # long enough for the dying scale to travel 0.5: net lr per step with Adam
        steps = int(1 / lr) + 50 if not sgd else int(3 / (lr * lam * batch * 10)) + 50
        for _ in range(steps):
            for w in ws:
                w.grad = torch.full_like(w, -a * batch)  # the loss wants the scale larger, by a per image
            sp.after_backward(m, 0.0)
            optim.step()
        g = bn_gammas(m)
        one_step = lr * a * batch / 0.1 if opt == "SGD" else lr  # SGD: with momentum 0.9; Adam: about lr
        ok = bool((g > 0.5).all()) if survives else float(g.max()) <= 1.01 * one_step
        assert ok, (a, float(g.min()), float(g.max()))


def test_prox_run_separates_the_scales_and_old_records_keep_the_subgradient(synth, tiny_spec, tmp_path):
    """A 2-epoch prox run at --sparsity 1e-2 drives the scales the loss does not defend below 1e-2; a
    run recorded before the option existed resumes with the subgradient it was trained with."""
    from obbslim.engine.runs import ResultsCSV
    from obbslim.options import SparseTrainConfig
    from obbslim.prune.sparsity import sparse_train

    r = sparse_train(data=train_only(synth), model=str(tiny_spec), epochs=2, imgsz=64, batch=2, device="cpu",
                     workers=0, hyp=FAST_HYP, project=tmp_path / "runs", verbose=False, noautoanchor=True,
                     noval=True, name="prox", sparsity=1e-2)  # fmt: skip
    rows = ResultsCSV(Path(r["run_dir"]) / "results.csv").read()
    assert float(rows[0]["gamma_lt_1e-2"]) < float(rows[-1]["gamma_lt_1e-2"])
    assert float(rows[-1]["gamma_lt_1e-2"]) > 0.1
    args = yaml.safe_load((Path(r["run_dir"]) / "args.yaml").read_text())
    assert args["sparsity_mode"] == "prox"
    old = {k: v for k, v in args.items() if k != "sparsity_mode"}
    assert SparseTrainConfig.from_record(old).sparsity_mode == "subgradient"
    assert SparseTrainConfig.from_record({**old, "sparsity": 0.0}).sparsity_mode == "prox"


def test_a_collapsed_sparse_run_says_so(synth, tiny_spec, tmp_path, caplog):
    """Prox at a lambda above every channel's gradient zeroes the whole network in one epoch, which no
    later epoch undoes: the run warns once, naming the cure; a healthy run does not."""
    from obbslim.prune.sparsity import sparse_train

    kw = dict(data=train_only(synth), model=str(tiny_spec), epochs=2, imgsz=64, batch=2, device="cpu",
              workers=0, hyp=FAST_HYP, project=tmp_path / "runs", verbose=False, noautoanchor=True,
              noval=True)  # fmt: skip
    with caplog.at_level("WARNING", logger="obbslim"):
        sparse_train(**kw, name="ok", sparsity=1e-6)
        assert "collapsed" not in caplog.text
        sparse_train(**kw, name="dead", sparsity=10.0)
    assert caplog.text.count("the network has collapsed") == 1
    assert "start the sparsity training" in caplog.text

