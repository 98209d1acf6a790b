"""Knowledge distillation: the losses against hand-computed values and their defining properties
(identical student -> 0), the frozen teacher, the pairing checks, and short distill runs (API, CLI,
exact resume with the adapters) on tiny models at 64 px."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from obbslim.distill import (
    Distiller,
    bernoulli_kl,
    cwd_loss,
    mimic_loss,
    object_masks,
    output_losses,
    softmax_kl,
)
from obbslim.engine.runs import ResultsCSV
from obbslim.errors import ObbslimError

FAST_HYP = {"warmup_epochs": 0.0, "nbs": 2, "mosaic": 0.0, "degrees": 0.0, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0}
NC = 5
KD_COLS = ("kd_box", "kd_obj", "kd_cls", "kd_theta", "kd_feat")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On the shared 2-core machine two intra-op threads per process thrash (seconds per tiny conv)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(width: float, nc: int = NC, **arch_changes):
    """yolov5n-obb at a small width multiple (0.125: teacher, 0.0625: a 'pruned' student)."""
    from obbslim.model import build, load_spec
    from obbslim.model.yolo import spec_to_arch

    spec = load_spec("yolov5n-obb")
    spec["width_multiple"] = width
    arch = {**spec_to_arch(spec, nc=nc), **arch_changes}
    torch.manual_seed(int(width * 1000))
    return build(arch, nc)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    from obbslim.data.labels import load_data_yaml
    from obbslim.data.synth import make_synthetic
    from obbslim.model import save

    root = tmp_path_factory.mktemp("distill")
    synth = make_synthetic(root / "ds", n_images=6, size=96, seed=0, val_frac=0.34)
    d = load_data_yaml(synth)
    out = {
        "root": root,
        "synth": synth,
        "train_only": {"path": d["path"], "train": d["train"], "names": d["names"]},
    }
    for name, model in (("teacher", tiny(0.125)), ("student", tiny(0.0625))):
        save(model, root / f"{name}.pt")
        out[name] = root / f"{name}.pt"
    return out


def run_opts(files, tmp_path, **kw) -> dict:
    opts = dict(
        data=files["train_only"],
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
        noautoanchor=True,
    )
    opts.update(kw)
    return opts


def rand_raw(shape=(2, 3, 4, 4), nc=NC, nbins=180, seed=0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(3):
        b, a, h, w = shape
        out.append(torch.randn(b, a, h // (2**k) or 1, w // (2**k) or 1, 5 + nc + nbins, generator=g) * 2)
    return out


ANCHORS = torch.tensor([[[1.5, 1.0], [3.0, 1.5], [3.0, 3.0]]] * 3)


# ----------------------------------------------------------------------------- loss functions


def test_bernoulli_kl_is_soft_bce_minus_teacher_entropy():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(50, generator=g) * 3, torch.randn(50, generator=g) * 3
    p = t.sigmoid()
    bce = F.binary_cross_entropy_with_logits(s, p, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(t, p, reduction="none")
    torch.testing.assert_close(bernoulli_kl(s, t), bce - entropy, rtol=0, atol=1e-5)
    # by hand at one point: p = sigmoid(0) = 1/2, q = sigmoid(ln 3) = 3/4
    kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert bernoulli_kl(torch.tensor([math.log(3)]), torch.tensor([0.0])).item() == pytest.approx(
        kl, abs=1e-6
    )
    assert torch.all(bernoulli_kl(t, t) == 0)
    assert torch.all(bernoulli_kl(s, t)[s != t] > 0)
    # temperature: KL of the softened probabilities, times T^2
    assert bernoulli_kl(s, t, 2.0).tolist() == pytest.approx(
        (bernoulli_kl(s / 2, t / 2) * 4).tolist(), abs=1e-5
    )


def test_softmax_kl_by_hand_and_zero_for_identical():
    t = torch.tensor([[0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    s = torch.zeros(1, 2)  # q = (1/2, 1/2)
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert softmax_kl(s, t).item() == pytest.approx(kl, abs=1e-6)
    assert softmax_kl(s, t, 2.0).item() == pytest.approx(4 * softmax_kl(s / 2, t / 2).item(), abs=1e-6)
    x = torch.randn(4, 180)
    assert softmax_kl(x, x).abs().max().item() < 1e-6


def test_softmax_kl_equals_torch_kl_div_with_its_gradient():
    """The teacher's side computed once without a graph: the same values and student gradient as
    ``F.kl_div(log_softmax(s), log_softmax(t), log_target=True)``, at T = 1 and T = 2, and the teacher's
    logits get no gradient."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    for temp in (1.0, 2.0):
        s = (torch.randn(2, 3, 4, 180) * 3).requires_grad_()
        t = (torch.randn(2, 3, 4, 180) * 3).requires_grad_()
        ref = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t.detach() / temp, -1), reduction="none",
                       log_target=True).sum(-1) * temp**2  # fmt: skip
        (g_ref,) = torch.autograd.grad(ref.sum(), s)
        got = softmax_kl(s, t, temp)
        got.sum().backward()
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s.grad, g_ref, rtol=1e-5, atol=1e-6)
        assert t.grad is None
    x = torch.randn(4, 180)
    assert torch.equal(softmax_kl(x, x), torch.zeros(4))


def test_output_losses_zero_for_identical_and_positive_per_term():
    t = rand_raw()
    for p in t:
        p[..., 4] = 3.0  # a confident teacher everywhere, so the box term is active
    zero = output_losses([p.clone() for p in t], t, NC, ANCHORS)
    assert set(zero) == {"cls", "theta", "obj", "box"}
    assert all(v.item() == pytest.approx(0.0, abs=1e-5) for v in zero.values()), zero
    c0 = 5 + NC
    for name, sl in (
        ("box", slice(0, 4)),
        ("obj", slice(4, 5)),
        ("cls", slice(5, c0)),
        ("theta", slice(c0, None)),
    ):
        s = [p.clone() for p in t]
        s[1][..., sl] += torch.randn_like(s[1][..., sl])
        out = output_losses(s, t, NC, ANCHORS)
        assert out[name].item() > 1e-3, name
        for other in set(out) - {name}:
            assert out[other].item() == pytest.approx(0.0, abs=1e-5), (name, other)


def test_output_losses_computes_only_the_terms_asked():
    """A subset of terms gives the same values as the full computation for those terms, 0 for the rest."""
    t, s = rand_raw(seed=0), rand_raw(seed=1)
    for p in t:
        p[..., 4] = 3.0  # every cell confident: the box term is active
    full = output_losses(s, t, NC, ANCHORS)
    for terms in (("theta",), ("box", "cls")):
        part = output_losses(s, t, NC, ANCHORS, terms=terms)
        for k in full:
            assert part[k].item() == (pytest.approx(full[k].item()) if k in terms else 0.0), (terms, k)


def test_output_losses_weighted_by_teacher_objectness():
    """Class/angle disagreement where the teacher sees background barely counts; the box term only
    acts where the teacher is confident; the value is the obj-weighted mean (checked by hand)."""
    t = rand_raw(shape=(1, 1, 2, 2))
    for p in t:
        p[..., 4] = -30.0  # background everywhere ...
    t[0][0, 0, 0, 0, 4] = 30.0  # ... except one confident cell
    s = [p.clone() for p in t]
    s[0][0, 0, 1, 1, 5:] += 5.0  # disagree on a background cell: ~no loss
    out = output_losses(s, t, NC, ANCHORS[:, :1])
    assert out["cls"].item() < 1e-9 and out["theta"].item() < 1e-9
    s = [p.clone() for p in t]
    s[0][0, 0, 0, 0, 5 : 5 + NC] += 1.0  # disagree at the confident cell: the whole weight is there
    out = output_losses(s, t, NC, ANCHORS[:, :1])
    expect = bernoulli_kl(s[0][0, 0, 0, 0, 5 : 5 + NC], t[0][0, 0, 0, 0, 5 : 5 + NC]).mean()
    assert out["cls"].item() == pytest.approx(expect.item(), rel=1e-4)
    s[1][0, 0, 0, 0, :4] += 1.0  # box change where the teacher is not confident: no box loss
    assert output_losses(s, t, NC, ANCHORS[:, :1])["box"].item() == pytest.approx(0.0, abs=1e-6)


def test_output_losses_kl_classes_and_shape_mismatch():
    t = rand_raw()
    s = [p.clone() for p in t]
    assert output_losses(s, t, NC, ANCHORS, cls_kind="kl")["cls"].item() == pytest.approx(0.0, abs=1e-6)
    s[0][..., 5 : 5 + NC] += torch.randn_like(s[0][..., 5 : 5 + NC])
    assert output_losses(s, t, NC, ANCHORS, cls_kind="kl")["cls"].item() > 1e-3
    with pytest.raises(ValueError, match="cls_kind"):
        output_losses(s, t, NC, ANCHORS, cls_kind="mse")
    with pytest.raises(ValueError, match="level 0"):
        output_losses([s[0][:, :, :2]] + s[1:], t, NC, ANCHORS)


def test_cwd_by_hand_zero_for_identical_positive_otherwise():
    t = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 2)  # spatial distribution (1/4, 3/4)
    s = torch.zeros(1, 1, 1, 2)  # uniform
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert cwd_loss(s, t).item() == pytest.approx(kl, abs=1e-6)
    # tau: softmax(x / tau) and a tau^2 factor
    assert cwd_loss(s, t, tau=2.0).item() == pytest.approx(4 * cwd_loss(s, t / 2).item(), abs=1e-6)
    f = torch.randn(2, 4, 3, 3)
    assert cwd_loss(f, f).item() == pytest.approx(0.0, abs=1e-6)
    assert cwd_loss(f + torch.randn_like(f), f).item() > 1e-3
    with pytest.raises(ValueError):
        cwd_loss(f[:, :2], f)


@settings(max_examples=25, deadline=None)
@given(st.floats(-5, 5), st.integers(0, 3))
def test_cwd_ignores_a_per_channel_offset(offset, channel):
    """Each channel's map is a distribution over positions: adding a constant to a channel changes nothing."""
    g = torch.Generator().manual_seed(channel)
    t, s = torch.randn(1, 4, 3, 3, generator=g), torch.randn(1, 4, 3, 3, generator=g)
    s2 = s.clone()
    s2[:, channel] += offset
    assert cwd_loss(s2, t).item() == pytest.approx(cwd_loss(s, t).item(), abs=1e-5)


def test_mimic_masked_mse_by_hand():
    s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, -1.0], [2.0, 0.5]]]])  # [1, C=2, 2, 2]
    t = torch.zeros_like(s)
    mask = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # cells (0,0) and (1,1)
    # masked squared errors: (1^2 + 0^2) + (4^2 + 0.5^2) = 17.25 over 2 cells x 2 channels
    assert mimic_loss(s, t, mask).item() == pytest.approx(17.25 / 4)
    assert mimic_loss(s, t, torch.zeros(1, 2, 2)).item() == 0.0  # no objects: no loss
    assert mimic_loss(s, s.clone(), mask).item() == 0.0


def test_object_masks_mark_the_assigned_cells():
    from obbslim.engine.loss import OBBLoss

    model = tiny(0.125)
    assign = OBBLoss(model)
    preds = [torch.zeros(2, 3, 8, 8, 5 + NC + 180), torch.zeros(2, 3, 4, 4, 1), torch.zeros(2, 3, 2, 2, 1)]
    # image 1, a 14 x 8 px box centred on P3 cell (x=2, y=5): 20 = 2.5 * 8, 44 = 5.5 * 8 (a cell centre:
    # no neighbour cells). At P4 (stride 16) the centre is (1.25, 2.75): its cell (1, 2) plus the left
    # (0, 2) and lower (1, 3) neighbours; the (48, 16) anchor fits (ratios 3.4, 2 < 4). P5 anchors do not.
    targets = torch.tensor([[1, 0, 20.0, 44.0, 14.0, 8.0, 0.3]])
    m = object_masks(assign, preds, targets)
    assert [tuple(x.shape) for x in m] == [(2, 8, 8), (2, 4, 4), (2, 2, 2)]
    assert m[0].sum().item() == 1 and m[0][1, 5, 2].item() == 1
    assert m[1][0].sum().item() == 0 and m[1][1].nonzero().tolist() == [[2, 0], [2, 1], [3, 1]]
    assert m[2].sum().item() == 0


# ----------------------------------------------------------------------------- the Distiller


def test_distiller_identical_student_gives_zero_and_teacher_stays_out():
    teacher = tiny(0.125)
    student = copy.deepcopy(teacher)
    ch = [m.weight.shape[1] for m in student.detect.m]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        unfused = [t.clone() for t in teacher.eval()(x)[1]]
    d = Distiller(teacher, ch, feature_type="cwd", output_weight=1.0)
    # the teacher's BatchNorms are folded into its convs: the same outputs
    assert teacher.fused and not student.fused
    for a, b in zip(d.teacher_forward(x), unfused):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # only the adapters are parameters / state; the teacher is frozen and in eval mode
    assert {k.split(".")[0] for k in d.state_dict()} == {"adapters"}
    assert sum(p.numel() for p in d.parameters()) == sum(p.numel() for p in d.adapters.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    d.train()
    assert d.adapters.training and not any(m.training for m in teacher.modules())
    d.bind(student)
    student.eval()
    student.detect.train()  # raw outputs as in training, BN statistics as the teacher's
    imgs = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 1, 30.0, 30.0, 20.0, 10.0, 0.2]])
    for ftype in ("cwd", "mimic"):
        d.feature_type = ftype
        raw = student(imgs)
        loss, items = d(raw, imgs, targets)
        assert set(items) == set(KD_COLS)
        assert loss.item() == pytest.approx(0.0, abs=1e-5), (ftype, items)
    # a different student: every active term is positive, and gradients reach the student and adapters
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    d.feature_type = "cwd"
    raw = student(imgs)
    loss, items = d(raw, imgs, targets)
    assert all(items[k].item() > 0 for k in ("kd_obj", "kd_cls", "kd_theta", "kd_feat")), items
    loss.backward()
    assert student.model[0].conv.weight.grad is not None and d.adapters[0].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    d.unbind()


def test_distiller_moves_the_teacher_and_rejects_bad_pairs(files):
    from obbslim.distill import check_pair

    teacher = tiny(0.125)
    d = Distiller(teacher, [16, 32, 64])
    d.to(torch.float64)
    assert teacher.model[0].conv.weight.dtype == torch.float64 and d.adapters[0].weight.dtype == torch.float64
    with pytest.raises(ObbslimError, match="neck widths"):
        d.bind(tiny(0.125))  # widths (32, 64, 128) but the adapters expect (16, 32, 64)
    with pytest.raises(ObbslimError, match="kd-feature-type"):
        Distiller(teacher, [16, 32, 64], feature_type="l2")
    arch = tiny(0.0625).get_arch()
    with pytest.raises(ObbslimError, match=r"t\.pt.*s\.pt.*strides"):
        check_pair(arch, {**arch, "strides": [8, 16, 64]}, "s.pt", "t.pt")
    with pytest.raises(ObbslimError, match="nc 3"):
        check_pair(arch, tiny(0.125, nc=3).get_arch(), "s.pt", "t.pt")


def test_distill_rejects_mismatched_teacher(files, tmp_path):
    from obbslim.distill import distill
    from obbslim.model import save

    bad = tiny(0.125, strides=[8, 16, 64])
    save(bad, tmp_path / "bad_teacher.pt")
    with pytest.raises(ObbslimError) as e:
        distill(files["student"], tmp_path / "bad_teacher.pt", **run_opts(files, tmp_path))
    assert "bad_teacher.pt" in str(e.value) and "student.pt" in str(e.value) and "strides" in str(e.value)
    with pytest.raises(ObbslimError, match="--teacher"):
        distill(files["student"], None, **run_opts(files, tmp_path))


# ----------------------------------------------------------------------------- runs


def test_distill_run_keeps_teacher_bitwise_and_resumes_exactly(files, tmp_path, monkeypatch):
    """A 2-epoch run against a 1-epoch run resumed for the second: the same student, EMA and adapters.
    The teacher that distill() loads is captured: bitwise unchanged (weights, BN buffers), no grads."""
    import obbslim.distill.run
    from obbslim.distill import distill
    from obbslim.model import load

    teachers = []

    def capture(*a, **k):
        teachers.append(load(*a, **k))
        return teachers[-1]

    monkeypatch.setattr(obbslim.distill.run, "load", capture)
    kd = dict(kd_temp=2.0, kd_feature_type="cwd")
    full = distill(files["student"], files["teacher"], **run_opts(files, tmp_path, name="full"), **kd)
    teacher = teachers[0]
    before = load(files["teacher"]).fuse().state_dict()  # the Distiller folds the teacher's BN once
    assert before.keys() == teacher.state_dict().keys()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # weights and BN buffers
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not any(m.training for m in teacher.modules())
    a = torch.load(full["last"], map_location="cpu", weights_only=True)
    assert {k.split(".")[0] for k in a["extra_state"]} == {"adapters"}
    assert len(a["optimizer"]["param_groups"]) == 4  # the adapters' own group, no weight decay
    assert a["optimizer"]["param_groups"][3]["weight_decay"] == 0.0
    student = load(full["last"])  # the student alone
    assert [m.weight.shape[1] for m in student.detect.m] == [16, 32, 64]

    opts = run_opts(files, tmp_path, name="part", stop_after=1)
    part = distill(files["student"], files["teacher"], **opts, **kd)
    assert part["stopped"] == "stop_after" and part["epochs_done"] == 1
    from obbslim.engine.train import train

    with pytest.raises(ObbslimError, match="the run used distill"):  # the bare engine has no teacher
        train(resume=part["run_dir"], device="cpu", verbose=False)
    resumed = distill(resume=part["run_dir"], project=tmp_path / "runs", device="cpu", verbose=False)
    assert resumed["epochs_done"] == 2 and resumed["run_dir"] == part["run_dir"]
    b = torch.load(resumed["last"], map_location="cpu", weights_only=True)
    assert b["train_args"]["teacher"] == str(Path(files["teacher"]).resolve())
    assert b["train_args"]["kd_temp"] == 2.0 and b["callbacks"] == ["distill"]
    for key in ("model", "ema", "extra_state"):
        for k, v in a[key].items():
            torch.testing.assert_close(b[key][k], v, rtol=0, atol=1e-6, msg=f"{key}.{k}")
    rows = ResultsCSV(Path(part["run_dir"]) / "results.csv").read()
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert all(float(r[k]) >= 0 for r in rows for k in KD_COLS) and float(rows[0]["kd_feat"]) > 0
    with pytest.raises(ObbslimError, match="not a distillation run"):
        distill(resume=files["student"], project=tmp_path / "runs")


def test_cli_distill_end_to_end(files, tmp_path):
    import yaml

    from obbslim.cli import main
    from obbslim.model import load

    hyp = tmp_path / "hyp.yaml"
    hyp.write_text(yaml.safe_dump(FAST_HYP))
    argv = ["distill", "--student", str(files["student"]), "--teacher", str(files["teacher"]),
            "--data", str(files["synth"]), "--epochs", "1", "--imgsz", "64", "--batch", "2",
            "--device", "cpu", "--workers", "0", "--project", str(tmp_path / "p"), "--noplots",
            "--noautoanchor", "--hyp", str(hyp), "--kd-output", "1.0", "--kd-feature", "2.0",
            "--kd-temp", "2", "--kd-feature-type", "mimic"]  # fmt: skip
    assert main(argv) == 0
    run_dir = tmp_path / "p" / "exp"
    model = load(run_dir / "weights" / "best.pt")
    assert model.nc == NC and [m.weight.shape[1] for m in model.detect.m] == [16, 32, 64]
    rows = ResultsCSV(run_dir / "results.csv").read()
    assert all(k in rows[0] for k in KD_COLS) and rows[0]["mAP50"] != ""
    args = yaml.safe_load((run_dir / "args.yaml").read_text())
    assert args["kd_feature_type"] == "mimic"
    assert args["kd_feature"] == 2.0
    assert main(["distill", "--data", str(files["synth"])]) == 2  # no student/teacher: one-line error


@pytest.mark.slow
def test_distill_ddp_two_cpu_processes(files, tmp_path):
    """torchrun with 2 gloo processes: the adapters train on both ranks (their gradients averaged)."""
    import os
    import subprocess
    import sys

    import torch.distributed as dist
    import yaml

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("no gloo backend")
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text(yaml.safe_dump(FAST_HYP))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "obbslim", "distill", "--student", str(files["student"]), "--teacher", str(files["teacher"]),
           "--data", str(files["synth"]), "--epochs", "2", "--imgsz", "64", "--batch", "2", "--device", "cpu",
           "--workers", "0", "--project", str(tmp_path / "runs"), "--noplots", "--noautoanchor",
           "--hyp", str(hyp), "--val-every", "2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "x2 (DDP)" in p.stdout
    run_dir = tmp_path / "runs" / "exp"
    rows = ResultsCSV(run_dir / "results.csv").read()
    assert [int(r["images"]) for r in rows] == [4, 4] and all(k in rows[0] for k in KD_COLS)
    ck = torch.load(run_dir / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert {k.split(".")[0] for k in ck["extra_state"]} == {"adapters"}


ALL_TERMS = ("box", "obj", "cls", "theta")


@pytest.mark.parametrize(
    "student, teacher, terms",
    [(0.0001, 0.80, ALL_TERMS), (0.39, 0.80, ALL_TERMS), (0.40, 0.80, ("theta",)), (0.68, 0.79, ("theta",)),
     (0.0, 0.0, ("theta",))],
)
def test_auto_output_by_hand(student, teacher, terms):
    """Every output term below half of the teacher's mAP50 (bench_distill's destroyed students), the angle
    bins alone from half (the demo's slimmed students keep 76-87%); an untrained pair (0 and 0) gets the
    light choice. The weight is 1 in both cases."""
    from obbslim.distill.run import auto_output

    assert auto_output(student, teacher) == {"kd_output": 1.0, "kd_output_terms": terms}


@pytest.mark.parametrize(
    "maps, terms",
    [({"student": 0.1, "teacher": 0.8}, ALL_TERMS), ({"student": 0.7, "teacher": 0.8}, ("theta",))],
)
def test_distill_auto_stores_what_it_chose(files, tmp_path, monkeypatch, capsys, maps, terms):
    """kd_output 'auto' (the default) measures both checkpoints, says what it chose, and the run's stored
    options hold it (a resumed run rebuilds the same Distiller); the terms it left out stay 0 in
    results.csv."""
    import obbslim.distill.run
    from obbslim.distill import distill

    real = obbslim.distill.run._val_map50
    seen = []

    def fake(path, cfg, split):
        assert split == "train"  # this data has no val split
        seen.append(real(path, cfg, split))  # the real measurement runs
        return maps["student" if Path(path) == Path(files["student"]) else "teacher"]

    monkeypatch.setattr(obbslim.distill.run, "_val_map50", fake)
    r = distill(files["student"], files["teacher"], **run_opts(files, tmp_path, epochs=1, verbose=True))
    assert len(seen) == 2 and all(0.0 <= m <= 1.0 for m in seen)
    ck = torch.load(r["last"], map_location="cpu", weights_only=True)
    assert ck["train_args"]["kd_output"] == 1.0 and ck["train_args"]["kd_output_terms"] == list(terms)
    assert f"--kd-output auto -> 1 on {' '.join(terms)} and the features" in capsys.readouterr().out
    row = ResultsCSV(Path(r["last"]).parent.parent / "results.csv").read()[-1]
    nonzero = {k for k in ALL_TERMS if float(row[f"kd_{k}"]) != 0.0}
    # the box term counts only where the teacher's objectness > 0.5: nowhere for this untrained teacher
    assert nonzero <= set(terms) and set(terms) - {"box"} <= nonzero, (nonzero, terms)


@pytest.mark.parametrize(
    "given, stored",
    [
        ({"kd_output": 0.5}, (0.5, ALL_TERMS)),
        ({"kd_output": 0.5, "kd_output_terms": ["cls"]}, (0.5, ("cls",))),
        ({"kd_output_terms": ["box", "theta"]}, (1.0, ("box", "theta"))),
    ],
)
def test_named_output_weight_and_terms_are_kept(files, tmp_path, monkeypatch, given, stored):
    """A number for kd_output distils every term unless terms are named; terms named beside auto keep
    auto's weight (the mAP50s are faked: a student near its teacher)."""
    import obbslim.distill.run
    from obbslim.distill.run import resolve_output_weight
    from obbslim.options import DistillConfig

    monkeypatch.setattr(obbslim.distill.run, "_val_map50", lambda path, cfg, split: 0.7)
    cfg = DistillConfig.of(files["student"], files["teacher"], files["synth"], 1, **given)
    got = resolve_output_weight(cfg)
    assert (got.kd_output, tuple(got.kd_output_terms)) == stored


@pytest.mark.parametrize("bad", [(), ("auto", "box"), ("angle",), "theta"])
def test_bad_output_terms_are_refused(bad):
    from obbslim.options import DistillConfig

    with pytest.raises(ObbslimError, match="--kd-output-terms must be auto or some of box obj cls theta"):
        DistillConfig(kd_output_terms=bad)


def test_distiller_leaves_out_the_terms_not_named():
    """Only the named output terms reach the loss; the same pair with every term gives them all."""
    teacher, student = tiny(0.125), tiny(0.0625)
    student.train()
    imgs = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 1, 30.0, 30.0, 20.0, 10.0, 0.2]])
    logged = {}
    for terms in (ALL_TERMS, ("theta",)):
        d = Distiller(teacher, [int(m.weight.shape[1]) for m in student.detect.m], output_weight=1.0,
                      feature_weight=0.0, output_terms=terms, box_thresh=0.0)  # fmt: skip
        d.bind(student)
        _, items = d(student(imgs), imgs, targets)
        d.unbind()
        logged[terms] = {k: float(v) for k, v in items.items()}
    every, theta = logged[ALL_TERMS], logged[("theta",)]
    assert all(every[k] > 0 for k in ("kd_box", "kd_obj", "kd_cls", "kd_theta")), every
    assert theta["kd_theta"] == pytest.approx(every["kd_theta"])
    assert theta["kd_box"] == theta["kd_obj"] == theta["kd_cls"] == theta["kd_feat"] == 0.0
