"""The training engine: optimiser groups and schedules, EMA, validation metric, the run directory,
exact resume, SIGTERM, NaN handling, hooks and weights_only checkpoints (tiny model, 64 px)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from obbslim.engine import optim
from obbslim.engine.callbacks import Callback
from obbslim.engine.ema import ModelEMA
from obbslim.engine.runs import ResultsCSV, numeric_series, plot_results
from obbslim.errors import ObbslimError
from obbslim.utils.io import increment_path

REPO = Path(__file__).resolve().parents[1]
FAST_HYP = {"warmup_epochs": 0.0, "nbs": 2, "mosaic": 0.0, "degrees": 0.0, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from obbslim.data.synth import make_synthetic

    return Path(
        make_synthetic(tmp_path_factory.mktemp("synth") / "ds", n_images=6, size=96, seed=0, val_frac=0.34)
    )


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory) -> Path:
    """yolov5n-obb at width 0.125: the whole pipeline, a few seconds per epoch on CPU."""
    from obbslim.model import load_spec

    spec = load_spec("yolov5n-obb")
    spec["width_multiple"] = 0.125
    path = tmp_path_factory.mktemp("spec") / "tiny-obb.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def train_only(synth: Path) -> dict:
    """The synthetic dataset without its val split (no validation: the fastest runs)."""
    from obbslim.data.labels import load_data_yaml

    d = load_data_yaml(synth)
    return {"path": d["path"], "train": d["train"], "names": d["names"]}


def run(synth, tiny_spec, tmp_path, **kw):
    from obbslim.engine.train import train

    opts = dict(
        data=synth,
        model=str(tiny_spec),
        epochs=2,
        imgsz=64,
        batch=2,
        device="cpu",
        workers=0,
        hyp=FAST_HYP,
        project=tmp_path / "runs",
        name="exp",
        verbose=False,
        noplots=True,
    )
    opts.update(kw)
    return train(**opts)


# ----------------------------------------------------------------------------- optimiser, EMA, runs


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1, bias=True))


def test_param_groups_split_decay_bn_bias():
    net = small_net()
    opt = optim.build_optimizer(net, lr=0.01, momentum=0.9, weight_decay=5e-4, name="SGD")
    bias, decay, bn = (g["params"] for g in opt.param_groups)
    assert [p.shape for p in decay] == [net[0].weight.shape, net[2].weight.shape]
    assert [p is net[1].weight for p in bn] == [True]
    assert {id(p) for p in bias} == {id(net[1].bias), id(net[2].bias)}
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4, 0.0]
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)
    n_all = sum(1 for _ in net.parameters())
    assert len(bias) + len(decay) + len(bn) == n_all


def test_accumulate_and_weight_decay_scaling():
    assert (
        optim.accumulate_steps(16, 64) == 4
        and optim.accumulate_steps(128, 64) == 1
        and optim.accumulate_steps(24, 64) == 3
    )
    assert optim.scaled_weight_decay(5e-4, 16, 64) == pytest.approx(5e-4)  # 16 * 4 = 64
    assert optim.scaled_weight_decay(5e-4, 24, 64) == pytest.approx(5e-4 * 72 / 64)
    assert optim.scaled_weight_decay(5e-4, 128, 64) == pytest.approx(1e-3)


def test_lr_schedules():
    cos = optim.lr_lambda(10, 0.01, "cosine")
    assert cos(0) == pytest.approx(1.0) and cos(10) == pytest.approx(0.01) and cos(5) == pytest.approx(0.505)
    lin = optim.lr_lambda(10, 0.01, "linear")
    assert lin(0) == pytest.approx(1.0) and lin(9) == pytest.approx(0.01) and lin(4.5) == pytest.approx(0.505)


def test_warmup_values():
    net = small_net()
    hyp = {"momentum": 0.937, "warmup_momentum": 0.8, "warmup_bias_lr": 0.1, "nbs": 64}
    opt = optim.build_optimizer(net, lr=0.01, momentum=0.937, weight_decay=5e-4, name="SGD")
    lf = optim.lr_lambda(10, 0.01)
    acc = optim.set_lr(opt, hyp, lf, epoch=0, ni=0, nw=100, batch_size=16)
    assert acc == 1
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.0, 0.0])
    assert all(g["momentum"] == pytest.approx(0.8) for g in opt.param_groups)
    acc = optim.set_lr(opt, hyp, lf, epoch=0, ni=50, nw=100, batch_size=16)
    assert acc == 2  # interp(50, [0, 100], [1, 4]) = 2.5 -> rounds to 2 (numpy banker's rounding)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.055, 0.005, 0.005])
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.8685)
    acc = optim.set_lr(opt, hyp, lf, epoch=3, ni=300, nw=100, batch_size=16)
    assert acc == 4
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01 * lf(3)] * 3)
    assert all(g["momentum"] == 0.937 for g in opt.param_groups)


def test_ema_follows_yolov5_formula():
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema = ModelEMA(net, decay=0.9, tau=2.0)
    with torch.no_grad():
        net.weight.fill_(3.0)
    ema.update(net)
    d = 0.9 * (1 - math.exp(-1 / 2.0))
    assert ema.ema.weight.item() == pytest.approx(d * 1.0 + (1 - d) * 3.0)
    assert ema.updates == 1 and not ema.ema.weight.requires_grad


def test_increment_path_and_results_csv(tmp_path):
    assert increment_path(tmp_path / "exp") == tmp_path / "exp"
    (tmp_path / "exp").mkdir()
    assert increment_path(tmp_path / "exp") == tmp_path / "exp2"
    (tmp_path / "exp2").mkdir()
    assert increment_path(tmp_path / "exp") == tmp_path / "exp3"
    assert increment_path(tmp_path / "exp", exist_ok=True) == tmp_path / "exp"
    csv = ResultsCSV(tmp_path / "r.csv")
    for e in range(3):
        csv.append({"epoch": e, "box": 0.5 / (e + 1), "mAP50": "" if e == 1 else 0.1 * e})
    csv = ResultsCSV(tmp_path / "r.csv")  # reopen: the header comes from the file
    csv.truncate(1)
    csv.append({"epoch": 2, "box": 0.25, "mAP50": 0.3})
    rows = csv.read()
    assert (
        [r["epoch"] for r in rows] == ["0", "1", "2"] and rows[1]["mAP50"] == "" and rows[2]["mAP50"] == "0.3"
    )
    assert numeric_series(rows)["mAP50"] == [(0.0, 0.0), (2.0, 0.3)]
    assert plot_results(tmp_path / "r.csv").stat().st_size > 0


# ----------------------------------------------------------------------------- validation metric


def test_validate_perfect_predictions_score_one(synth):
    """A fake model that outputs the letterboxed ground truth: the un-letterboxing and polygon matching
    must give mAP 1 at every IoU threshold; shifted boxes must score lower."""
    from obbslim.data.dataset import build_dataloader
    from obbslim.data.labels import load_data_yaml, load_split
    from obbslim.eval.metrics import validate

    data = load_data_yaml(synth)
    samples, _ = load_split(data, "val", verbose=False)
    loader = build_dataloader(samples, "val", 96, 2, augment=False, workers=0)
    batches = [t for _, t, *_ in loader]
    nc = len(data["names"])

    class Oracle(nn.Module):
        def __init__(self, shift: float):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))
            self.shift, self.k = shift, 0

        def forward(self, imgs):
            t = batches[self.k % len(batches)]
            self.k += 1
            out = torch.zeros(imgs.shape[0], 400, 6 + nc + 180)
            for b in range(imgs.shape[0]):
                tb = t[t[:, 0] == b]
                n = len(tb)
                out[b, :n, :5] = tb[:, 2:7]
                out[b, :n, 0] += self.shift * tb[:, 4]
                out[b, :n, 5] = 1.0
                out[b, torch.arange(n), 6 + tb[:, 1].long()] = 1.0
            return out, None

    m = validate(Oracle(0.0), loader, data["names"], progress=False)
    assert m["mAP50"] == pytest.approx(1.0) and m["mAP50_voc12"] == pytest.approx(1.0)
    assert m["mAP50_95"] == pytest.approx(1.0, abs=1e-6)
    assert m["precision"] == pytest.approx(1.0) and m["recall"] == pytest.approx(1.0)
    assert m["n_images"] == len(samples)
    # shifted by 0.3 of the long side along x: IoU of a rectangle with itself moved by 0.3 w along its
    # long axis is 0.7/1.3 = 0.54 (for an axis-aligned box): fine at 0.5, not at 0.75
    m2 = validate(Oracle(0.3), loader, data["names"], progress=False)
    assert m2["mAP50_95"] < 0.15


def test_validate_leaves_out_the_angle_probabilities_without_changing_the_detections(tiny_spec):
    """Validation decodes a real model without the 180 bin probabilities (only the argmax angle is read):
    its detections must be those of the full decode that any other model goes through."""
    from obbslim.eval.metrics import _decoded_and_raw
    from obbslim.inference.postprocess import postprocess
    from obbslim.model import build

    torch.manual_seed(0)
    net = build(str(tiny_spec), 3).eval()
    with torch.no_grad():  # objectness and class logits up: many random boxes pass conf 0.001
        for conv in net.detect.m:
            conv.bias.view(net.detect.na, -1)[:, 4:8] = 2.0
        x = torch.rand(2, 3, 96, 96)
        full, _ = net(x)
        fast, raw, nc = _decoded_and_raw(net, x)
    assert full.shape[-1] == 6 + 3 + 180 and fast.shape[-1] == 6 + 3 and nc == 3 and len(raw) == 3
    a = postprocess(full, multi_label=True)
    b = postprocess(fast, multi_label=True, nc=nc)
    assert sum(len(o["scores"]) for o in a) > 20
    for oa, ob in zip(a, b):
        for k in ("rboxes", "scores", "cls"):
            assert torch.equal(oa[k], ob[k]), k


def test_fitness_is_yolov5s_weighting_of_map50_and_map50_95():
    from obbslim.eval.metrics import fitness

    assert fitness({"mAP50": 0.7, "mAP50_95": 0.1}) == pytest.approx(0.07 + 0.09)
    # the epoch whose boxes fit better wins over the one that only finds more of them
    assert fitness({"mAP50": 0.66, "mAP50_95": 0.30}) > fitness({"mAP50": 0.67, "mAP50_95": 0.29})


def test_resume_rescores_the_best_epoch_with_this_rule(tmp_path):
    """A run started when best.pt was chosen by mAP50 alone stored that as its best fitness: resuming
    reads the best epoch's row of results.csv again, so new epochs are compared on the same scale."""
    from obbslim.engine.train import best_fitness_of

    csv = tmp_path / "results.csv"
    csv.write_text("epoch,box,mAP50,mAP50_95\n0,0.1,,\n1,0.09,0.5,0.2\n2,0.08,0.6,0.25\n")
    assert best_fitness_of(csv, 2, stored=0.6) == pytest.approx(0.1 * 0.6 + 0.9 * 0.25)
    assert best_fitness_of(csv, 1, stored=0.5) == pytest.approx(0.05 + 0.18)
    assert best_fitness_of(csv, 0, stored=0.7) == 0.7  # not validated: the stored value
    assert best_fitness_of(csv, 5, stored=0.4) == 0.4  # no row
    assert best_fitness_of(tmp_path / "none.csv", 1, stored=0.3) == 0.3


# ----------------------------------------------------------------------------- training runs


class Hooks(Callback):
    """Records after_backward calls (with whether every BN has its gradient) and adds a constant loss."""

    def __init__(self):
        self.calls = []

    def after_backward(self, state, epoch_frac):
        bn = [m for m in state.model.modules() if isinstance(m, nn.BatchNorm2d)]
        self.calls.append((epoch_frac, all(m.weight.grad is not None for m in bn)))

    def extra_loss(self, raw, imgs, targets):
        assert len(raw) == 3 and imgs.dtype == torch.float32 and imgs.max() <= 1.0
        return raw[0].sum() * 0.0 + 0.25, {"kd": torch.tensor(0.25)}


def test_train_end_to_end_writes_run_dir(synth, tiny_spec, tmp_path):
    from obbslim.model import load

    hooks = Hooks()
    r = run(synth, tiny_spec, tmp_path, noplots=False, callbacks=[hooks], val_every=1)
    calls = hooks.calls
    d = Path(r["run_dir"])
    assert d == tmp_path / "runs" / "exp"
    for f in (
        "weights/last.pt",
        "weights/best.pt",
        "results.csv",
        "results.png",
        "args.yaml",
        "labels.png",
        "train_batch0.jpg",
    ):
        assert (d / f).is_file() and (d / f).stat().st_size > 0, f
    rows = ResultsCSV(d / "results.csv").read()
    assert [r_["epoch"] for r_ in rows] == ["0", "1"]
    for k in ("box", "obj", "cls", "theta", "kd", "lr", "mAP50", "mAP50_voc12", "mAP50_95", "images"):
        assert k in rows[0], k
    assert float(rows[0]["kd"]) == pytest.approx(0.25)
    assert int(rows[0]["images"]) == 4  # the 4 training images, once each
    assert r["epochs_done"] == 2 and r["stopped"] is None and r["best"] == str(d / "weights/best.pt")
    # the hook: once per optimizer step (nbs = batch = 2 -> every batch), with gradients present
    assert len(calls) == 4 and all(ok for _, ok in calls)
    assert [c for c, _ in calls] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    # checkpoints: plain dicts under weights_only, the model rebuilds from the stored arch
    ck = torch.load(d / "weights/last.pt", map_location="cpu", weights_only=True)
    for k in ("arch", "model", "ema", "optimizer", "hyp", "epoch", "train_args", "rng", "ema_updates"):
        assert k in ck, k
    assert ck["epoch"] == 1 and ck["ema_updates"] == 4
    args = yaml.safe_load((d / "args.yaml").read_text())
    assert args["epochs"] == 2 and args["imgsz"] == 64
    model = load(d / "weights/best.pt")
    assert model.nc == 5
    # the softmax angle head (the default theta_loss: ce) scores with its peak ** hyp theta_conf
    assert ck["arch"]["theta_conf"] == 0.25 and model.detect.theta_conf == 0.25


def test_theta_conf_needs_the_softmax_angle_loss():
    from obbslim.cfg import load_hyp
    from obbslim.engine.train import theta_conf

    assert theta_conf(load_hyp()) == 0.25
    assert theta_conf(load_hyp({"theta_conf": 0.5})) == 0.5
    assert theta_conf(load_hyp({"theta_loss": "bce", "theta": 1.0})) == 0.0  # per-bin sigmoids: no peak
    for bad in (-1.0, 9.0):  # 9 would train, then be refused by the checkpoint check at load
        with pytest.raises(ObbslimError, match="theta_conf"):
            load_hyp({"theta_conf": bad})


def test_resume_gives_the_same_weights(synth, tiny_spec, tmp_path):
    data = train_only(synth)
    full = run(synth, tiny_spec, tmp_path, data=data, name="full")
    part = run(synth, tiny_spec, tmp_path, data=data, name="part", stop_after=1)
    assert part["stopped"] == "stop_after" and part["epochs_done"] == 1
    resumed = run(synth, tiny_spec, tmp_path, resume=part["run_dir"])
    assert resumed["epochs_done"] == 2 and resumed["run_dir"] == part["run_dir"]
    a = torch.load(full["last"], weights_only=True)
    b = torch.load(resumed["last"], weights_only=True)
    assert a["epoch"] == b["epoch"] == 1 and a["ema_updates"] == b["ema_updates"]
    for key in ("model", "ema"):
        for k, v in a[key].items():
            torch.testing.assert_close(b[key][k], v, rtol=0, atol=1e-6, msg=f"{key}.{k}")
    for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert s.keys() == t.keys() and s  # momentum_buffer (SGD) or step/exp_avg/exp_avg_sq (AdamW)
        for k in s:
            torch.testing.assert_close(t[k], s[k], rtol=0, atol=1e-6, msg=k)
    rows = ResultsCSV(Path(part["run_dir"]) / "results.csv").read()
    assert [r["epoch"] for r in rows] == ["0", "1"]
    with pytest.raises(Exception, match="already finished"):
        run(synth, tiny_spec, tmp_path, resume=resumed["last"])


def test_cached_images_train_the_same_weights(synth, tiny_spec, tmp_path, capsys):
    """--cache-images changes where the pixels come from, not the batches: the weights are identical."""
    plain = run(synth, tiny_spec, tmp_path, name="plain", epochs=1)
    cached = run(synth, tiny_spec, tmp_path, name="cached", epochs=1, cache_images=True, verbose=True)
    assert "cache-images: 6 images in RAM" in capsys.readouterr().out  # 4 train + 2 val
    a = torch.load(plain["last"], weights_only=True)["model"]
    b = torch.load(cached["last"], weights_only=True)["model"]
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=0, atol=0, msg=k)


def test_nan_loss_is_skipped_then_stops(synth, tiny_spec, tmp_path, monkeypatch, capsys):
    from obbslim.engine import loss as loss_mod
    from obbslim.engine import train as train_mod
    from obbslim.errors import ObbslimError

    real = loss_mod.OBBLoss.__call__
    count = {"n": 0}

    def flaky(self, preds, targets):
        count["n"] += 1
        loss, items = real(self, preds, targets)
        return (loss * float("nan") if count["n"] <= 2 else loss), items

    monkeypatch.setattr(loss_mod.OBBLoss, "__call__", flaky)
    r = run(synth, tiny_spec, tmp_path, data=train_only(synth), batch=1, hyp={**FAST_HYP, "nbs": 1}, epochs=1)
    assert r["epochs_done"] == 1
    assert capsys.readouterr().err.count("non-finite loss") == 2
    ck = torch.load(r["last"], weights_only=True)
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())

    monkeypatch.setattr(
        loss_mod.OBBLoss, "__call__", lambda self, p, t: (p[0].sum() * float("nan"), torch.zeros(4))
    )
    monkeypatch.setattr(train_mod, "MAX_BAD_STEPS", 3)
    with pytest.raises(ObbslimError, match="NaN/inf for 3 consecutive batches"):
        run(synth, tiny_spec, tmp_path, data=train_only(synth), batch=1, name="nan")
    ck = torch.load(tmp_path / "runs" / "nan" / "weights" / "last.pt", weights_only=True)
    assert ck["epoch"] == -1  # no epoch completed


def test_resume_checkpoint_from_model_and_errors(synth, tiny_spec, tmp_path):
    """--model CKPT keeps the stored architecture (here: a hand-narrowed record); bad input is clear."""
    from obbslim.errors import ObbslimError
    from obbslim.model import build, save

    net = build(str(tiny_spec), 5)
    arch = net.get_arch()
    save(net, tmp_path / "start.pt")
    r = run(
        synth,
        tiny_spec,
        tmp_path,
        data=train_only(synth),
        model=str(tmp_path / "start.pt"),
        epochs=1,
        noautoanchor=True,
    )
    ck = torch.load(r["last"], weights_only=True)
    assert ck["arch"]["layers"] == arch["layers"]
    with pytest.raises(ObbslimError, match="no checkpoint"):
        run(synth, tiny_spec, tmp_path, resume=tmp_path / "nowhere")
    with pytest.raises(ObbslimError, match="dataset is required"):
        run(synth, tiny_spec, tmp_path, data=None)


def test_sigterm_leaves_a_usable_last_pt(synth, tiny_spec, tmp_path):
    """SIGTERM mid-epoch: the process saves last.pt (epoch in progress not counted) and exits 143."""
    cmd = [
        sys.executable,
        "-m",
        "obbslim",
        "train",
        "--data",
        str(synth),
        "--model",
        str(tiny_spec),
        "--epochs",
        "50",
        "--imgsz",
        "64",
        "--batch",
        "1",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--project",
        str(tmp_path / "runs"),
        "--name",
        "sig",
        "--noplots",
        "--noautoanchor",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    run_dir = tmp_path / "runs" / "sig"
    deadline = time.time() + 120
    while not (run_dir / "args.yaml").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # inside the first epoch
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "stopped by SIGTERM" in out
    ck = torch.load(run_dir / "weights" / "last.pt", weights_only=True)
    assert ck["epoch"] < 49 and ck["train_args"]["epochs"] == 50
    from obbslim.model import load

    model = load(run_dir / "weights" / "last.pt")
    with torch.no_grad():
        decoded, _ = model(torch.zeros(1, 3, 64, 64))
    assert torch.isfinite(decoded).all()


def test_a_failed_run_with_loader_workers_still_lets_the_process_exit(synth, tiny_spec, tmp_path):
    """The loader workers persist across epochs and ignore SIGTERM; a run that raises while its
    traceback stays referenced (as pytest keeps it) must still end them, or the exit would hang."""
    script = f"""
from obbslim.engine.callbacks import Callback
from obbslim.engine.train import train
class Boom(Callback):
    def after_epoch(self, state, epoch):
        raise RuntimeError("boom")
kept = []
try:
    train(data={str(synth)!r}, model={str(tiny_spec)!r}, epochs=3, imgsz=64, batch=2, device="cpu",
          workers=2, hyp={FAST_HYP!r}, project={str(tmp_path / "runs")!r}, name="boom", verbose=False,
          noplots=True, callbacks=[Boom()])
except RuntimeError as e:
    kept.append(e)  # the traceback holds the run's frames, and with them its loaders
print("raised", kept[0])
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0 and "raised boom" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("threads, omp, expected", [(None, "", 3), (None, "1", 1), (2, "", 2)])
def test_validation_uses_the_core_kept_for_the_idle_loader_workers(monkeypatch, threads, omp, expected):
    """Training keeps a core for the loader workers; they idle while the epoch's validation runs, so it
    takes every core, unless --threads or OMP_NUM_THREADS says otherwise."""
    from types import SimpleNamespace

    import obbslim.engine.train as engine
    import obbslim.utils.threads as th

    seen = []

    def fake_validate(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return {"mAP50": 0.5, "mAP50_voc12": 0.5, "mAP50_95": 0.3, "precision": 0.5, "recall": 0.5}

    monkeypatch.setattr(th, "cpu_count", lambda: 3)
    monkeypatch.setenv("OMP_NUM_THREADS", omp)
    monkeypatch.setattr(engine, "validate", fake_validate)
    state = SimpleNamespace(ema=SimpleNamespace(ema=None), val_loader=None, names=[], criterion=None,
                            amp=False, cfg=SimpleNamespace(threads=threads, verbose=False), best_fitness=0.0,
                            epoch=0, best_epoch=-1, log=lambda msg: None)
    before = torch.get_num_threads()
    engine.validate_epoch(state, final=False)
    assert seen == [expected] and torch.get_num_threads() == before


def test_a_new_mosaic_schedule_restarts_the_persistent_workers(synth):
    """The workers hold a copy of the dataset: when time_limit moves the close_mosaic epoch, the next
    pass must run in fresh workers that see it."""
    from types import SimpleNamespace

    from obbslim.data.dataset import build_dataloader
    from obbslim.engine.train import _close_mosaic

    loader = build_dataloader(synth, "train", 64, 2, augment=True, hyp=FAST_HYP, workers=1,
                              persistent_workers=True)
    state = SimpleNamespace(train_loader=loader, epochs=10, hyp={"close_mosaic": 2})
    _close_mosaic(state)
    list(loader)
    workers = loader._iterator._workers
    _close_mosaic(state)  # unchanged: the same workers go on
    assert loader._iterator._workers is workers and loader.dataset.mosaic_epochs == 8
    state.epochs = 6
    _close_mosaic(state)
    assert loader._iterator is None and not any(w.is_alive() for w in workers)
    assert loader.dataset.mosaic_epochs == 4


def test_cli_train_in_process(synth, tiny_spec, tmp_path):
    from obbslim.cli import main

    rc = main(
        [
            "train",
            "--data",
            str(synth),
            "--model",
            str(tiny_spec),
            "--epochs",
            "1",
            "--imgsz",
            "64",
            "--batch",
            "2",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--project",
            str(tmp_path / "p"),
            "--noplots",
            "--hyp",
            str(_hyp_file(tmp_path)),
        ]
    )
    assert rc == 0
    assert (tmp_path / "p" / "exp" / "weights" / "best.pt").is_file()
    rc = main(["train", "--resume", str(tmp_path / "nothing")])
    assert rc == 2


def _hyp_file(tmp_path: Path) -> Path:
    p = tmp_path / "hyp.yaml"
    p.write_text(yaml.safe_dump(FAST_HYP))
    return p


def test_long_short_for_autoanchor():
    from obbslim.data.labels import Sample
    from obbslim.engine.train import _long_short

    s = Sample(
        "a.png",
        (200, 100),
        np.array([[0, 0, 40, 0, 40, 10, 0, 10]], np.float32),
        np.zeros(1, np.int64),
        np.zeros(1, np.int64),
    )
    np.testing.assert_allclose(_long_short([s], 64), [[40 * 64 / 200, 10 * 64 / 200]], rtol=1e-5)


def test_bad_samples_are_reported_at_start(synth, tiny_spec, tmp_path, capsys):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(synth.parent, ds)
    (ds / "images" / "train" / "broken.png").write_bytes(b"not a png at all")
    data = {"path": str(ds), "train": "images/train", "names": yaml.safe_load(synth.read_text())["names"]}
    r = run(synth, tiny_spec, tmp_path, data=data, epochs=1, verbose=True)
    out = capsys.readouterr().out
    assert "1 skipped as bad" in out and "broken.png" in out
    assert r["epochs_done"] == 1


def test_gradient_accumulation_steps(synth, tiny_spec, tmp_path):
    """batch 1, nominal batch 3 -> a step every 3 batches, plus a flush at the end of each 4-batch epoch."""
    hooks = Hooks()
    r = run(
        synth,
        tiny_spec,
        tmp_path,
        data=train_only(synth),
        batch=1,
        hyp={**FAST_HYP, "nbs": 3},
        callbacks=[hooks],
    )
    assert [f for f, _ in hooks.calls] == pytest.approx([0.75, 1.0, 1.75, 2.0])
    assert torch.load(r["last"], weights_only=True)["ema_updates"] == 4


class OutputDtype(Callback):
    """Records the dtype of the head's raw output and the batch's memory format at every training step."""

    def __init__(self):
        self.dtypes, self.channels_last = set(), set()

    def extra_loss(self, raw, imgs, targets):
        self.dtypes.add(raw[0].dtype)
        self.channels_last.add(imgs.is_contiguous(memory_format=torch.channels_last) and imgs.shape[1] > 1)
        return None


@pytest.mark.parametrize("native", [True, False])
def test_bf16_trains_the_convs_in_bfloat16_and_keeps_float32_weights(
    synth, tiny_spec, tmp_path, monkeypatch, capsys, native
):
    """--bf16 on a CPU with bf16 instructions runs the forward in bfloat16 while the weights, the optimizer
    and the checkpoint stay float32; on a CPU without them it trains in float32 and says why."""
    from obbslim.engine import train as train_mod

    monkeypatch.setattr(train_mod, "cpu_bf16_native", lambda: native)
    probe = OutputDtype()
    r = run(synth, tiny_spec, tmp_path, data=train_only(synth), epochs=1, bf16=True, verbose=True,
            callbacks=[probe])  # fmt: skip
    out = capsys.readouterr().out
    assert probe.dtypes == {torch.bfloat16 if native else torch.float32}
    assert probe.channels_last == {True}  # the CPU trains in channels_last: oneDNN is faster in it
    assert ("bf16 autocast ->" in out) == native
    assert ("this CPU has no bfloat16 instructions" in out) != native
    ck = torch.load(r["last"], weights_only=True)
    assert {v.dtype for v in ck["model"].values() if v.is_floating_point()} == {torch.float32}
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert ck["train_args"]["bf16"] is True


def test_bf16_is_off_by_default(synth, tiny_spec, tmp_path):
    probe = OutputDtype()
    run(synth, tiny_spec, tmp_path, data=train_only(synth), epochs=1, callbacks=[probe])
    assert probe.dtypes == {torch.float32} and probe.channels_last == {True}
