"""YOLOv5-OBB model: architecture against the official YOLOv5 numbers, the head's decode by hand,
fuse, channels_last, the architecture record round trip (pruned widths), save/load, FLOPs."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from obbslim.errors import ObbslimError
from obbslim.model import (
    DEFAULT_ANCHORS,
    Detect,
    OBBModel,
    available_specs,
    build,
    ckpt_to_model,
    load,
    load_spec,
    model_info,
    read_checkpoint,
    save,
)
from obbslim.model.summary import count_flops, layer_table
from obbslim.model.yolo import SPECS_DIR

torch.set_num_threads(1)

# Official ultralytics/yolov5 v6 COCO summaries (nc=80, 255 = 3 x 85 head outputs per level).
YOLOV5_PARAMS = {"n": 1872157, "s": 7235389, "l": 46563709}
YOLOV5_GFLOPS = {"n": 4.5, "s": 16.5}  # README v6.0 (thop, 2 x MACs)
WIDTH = {"n": 0.25, "s": 0.50, "m": 0.75, "l": 1.0, "x": 1.25}
DEPTH = {"n": 0.33, "s": 0.33, "m": 0.67, "l": 1.0, "x": 1.33}


def head_params(ch: list[int], nc: int, nbins: int, na: int = 3) -> int:
    """1x1 conv per level: weights ch * na * no plus na * no biases."""
    no = na * (5 + nc + nbins)
    return sum(c * no + no for c in ch)


def det_ch(scale: str) -> list[int]:
    return [int(math.ceil(c * WIDTH[scale] / 8) * 8) for c in (256, 512, 1024)]


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics so that fuse and state-dict round trips are really exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5


@pytest.fixture(scope="module")
def nano() -> OBBModel:
    torch.manual_seed(0)
    m = build("yolov5n-obb", nc=3, names=["a", "b", "c"])
    randomize_bn(m)
    return m.eval()


@pytest.mark.parametrize("scale", ["n", "s", "l"])
def test_params_match_official_yolov5_with_obb_head(scale):
    model = build(f"yolov5{scale}-obb", nc=15)
    ch = det_ch(scale)
    body = YOLOV5_PARAMS[scale] - head_params(ch, nc=80, nbins=0)  # the official backbone + neck
    expected = body + head_params(ch, nc=15, nbins=180)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert [c.in_channels for c in model.detect.m] == ch
    assert all(c.out_channels == 3 * (5 + 15 + 180) for c in model.detect.m)


@pytest.mark.parametrize("scale", ["n", "s", "m", "l", "x"])
def test_every_scale_follows_its_multiples(scale):
    arch = build(f"yolov5{scale}-obb", nc=15).arch
    layers = arch["layers"]
    assert len(layers) == 25 and layers[-1]["type"] == "Detect"
    assert layers[0] == {"type": "Conv", "from": -1, "c1": 3, "c2": int(math.ceil(64 * WIDTH[scale] / 8) * 8),
                         "k": 6, "s": 2, "p": 2}  # fmt: skip
    n_c3 = [len(r["m"]) for r in layers if r["type"] == "C3"]
    assert n_c3 == [max(round(n * DEPTH[scale]), 1) for n in (3, 6, 9, 3, 3, 3, 3, 3)]
    assert [r["shortcut"] for r in layers if r["type"] == "C3"] == [True] * 4 + [False] * 4
    assert arch["strides"] == [8, 16, 32]
    assert layers[9]["type"] == "SPPF" and layers[9]["k"] == 5


def test_bn_and_conv_settings(nano):
    conv = nano.model[0]
    assert isinstance(conv.conv, nn.Conv2d) and conv.conv.bias is None
    assert isinstance(conv.bn, nn.BatchNorm2d) and conv.bn.eps == 1e-3 and conv.bn.momentum == 0.03
    assert isinstance(conv.act, nn.SiLU)
    assert conv.conv.kernel_size == (6, 6) and conv.conv.stride == (2, 2) and conv.conv.padding == (2, 2)


@pytest.mark.parametrize("scale", ["n", "s"])
def test_train_and_eval_shapes_non_square(scale):
    torch.manual_seed(0)
    model = build(f"yolov5{scale}-obb", nc=2)
    x = torch.rand(2, 3, 64, 96)
    raw = model.train()(x)
    no = 5 + 2 + 180
    assert [tuple(r.shape) for r in raw] == [(2, 3, 8, 12, no), (2, 3, 4, 6, no), (2, 3, 2, 3, no)]
    dec, raw2 = model.eval()(x)
    assert dec.shape == (2, 3 * (8 * 12 + 4 * 6 + 2 * 3), 6 + 2 + 180)
    assert len(raw2) == 3
    d = model.detect
    assert (d.nc, d.na, d.nbins, d.nl) == (2, 3, 180, 3)
    assert d.stride.tolist() == [8, 16, 32] and tuple(d.anchors.shape) == (3, 3, 2)


def test_decode_by_hand():
    torch.manual_seed(0)
    anchors = [[[10, 5], [20, 8], [30, 30]], [[40, 20], [60, 30], [80, 80]],
               [[100, 50], [150, 70], [200, 200]]]  # fmt: skip
    det = Detect(nc=2, anchors=anchors, ch=[4, 4, 4], strides=[8, 16, 32]).eval()
    no = 5 + 2 + 180
    raw = [torch.zeros(1, 3, 2, 2, no), torch.zeros(1, 3, 1, 1, no), torch.zeros(1, 3, 1, 1, no)]
    p = raw[0][0, 1, 1, 0]  # anchor 1, cell y=1, x=0 at stride 8
    p[0] = 0.0  # sigmoid 0.5 -> x = (1 - 0.5 + 0) * 8 = 4
    p[1] = math.log(3.0)  # sigmoid 0.75 -> y = (1.5 - 0.5 + 1) * 8 = 16
    p[2] = 10.0  # sigmoid ~1 -> w = 4 * 20
    p[3] = -math.log(3.0)  # sigmoid 0.25 -> h = 0.25 * 8
    p[4] = 2.0
    p[5], p[6] = -1.0, 3.0
    p[7 + 45] = 5.0  # bin 45 -> -pi/2 + 45 deg = -pi/4
    out = det.decode(raw)
    assert out.shape == (1, 3 * 4 + 3 + 3, 6 + 2 + 180)
    row = out[0, 1 * 4 + 1 * 2 + 0]
    sig = torch.sigmoid
    exp_w = (2 * sig(torch.tensor(10.0))) ** 2 * 20
    expected = torch.tensor([4.0, 16.0, float(exp_w), 2.0, -math.pi / 4])
    torch.testing.assert_close(row[:5], expected)
    torch.testing.assert_close(row[5], sig(torch.tensor(2.0)))
    torch.testing.assert_close(row[6:8], sig(torch.tensor([-1.0, 3.0])))
    torch.testing.assert_close(row[8 + 45], sig(torch.tensor(5.0)))
    assert row[8:].argmax().item() == 45
    # an all-zero cell: centre of its cell, 1 x anchor size, bin 0 -> -pi/2
    z = out[0, 3 * 4 + 2]  # level 1 (one cell), anchor 2
    torch.testing.assert_close(z[:5], torch.tensor([8.0, 8.0, 80.0, 80.0, -math.pi / 2]))


def test_theta_conf_scales_objectness_by_the_angle_softmax_peak():
    anchors = [[[10, 5]], [[40, 20]], [[100, 50]]]
    no = 5 + 2 + 180
    raw = [torch.zeros(1, 1, 1, 1, no) for _ in range(3)]
    raw[0][..., 4] = 1.0
    raw[0][..., 7 + 30] = raw[0][..., 7 + 120] = math.log(89.0)  # two peaks: 89 / (89 + 89 + 178) = 0.25
    raw[1][..., 7 + 60] = 50.0  # one sure bin: peak 1
    plain = Detect(nc=2, anchors=anchors, ch=[4, 4, 4], strides=[8, 16, 32]).eval()
    half = Detect(nc=2, anchors=anchors, ch=[4, 4, 4], strides=[8, 16, 32], theta_conf=0.5).eval()
    a, b = plain.decode(raw), half.decode(raw)
    obj = torch.sigmoid(torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(a[0, :, 5], obj)
    # x 0.25 ** 0.5, x 1, x (1 / 180) ** 0.5 (uniform bins)
    torch.testing.assert_close(b[0, :, 5], obj * torch.tensor([0.5, 1.0, (1 / 180) ** 0.5]))
    torch.testing.assert_close(b[..., :5], a[..., :5])  # the box and angle do not change
    torch.testing.assert_close(b[..., 6:], a[..., 6:])


def test_theta_conf_is_kept_by_the_arch_record(nano):
    assert "theta_conf" not in nano.get_arch()  # 0: the record of a model from before it, unchanged
    m = copy.deepcopy(nano)
    m.detect.theta_conf = 0.25
    arch = m.get_arch()
    assert arch["theta_conf"] == 0.25
    assert OBBModel.from_arch(arch).detect.theta_conf == 0.25
    assert OBBModel.from_arch(nano.get_arch()).detect.theta_conf == 0.0


def test_theta_bins_match_ops_csl():
    csl = pytest.importorskip("obbslim.ops.csl")
    logits = torch.full((4, 180), -5.0)
    bins = [0, 45, 90, 179]
    logits[range(4), bins] = 5.0
    angles = torch.as_tensor(csl.csl_decode(logits), dtype=torch.float64).reshape(-1)
    expected = torch.tensor([-math.pi / 2 + b * math.pi / 180 for b in bins], dtype=torch.float64)
    torch.testing.assert_close(angles, expected, atol=1e-6, rtol=0)


def test_detect_bias_priors():
    det = Detect(nc=15, anchors=DEFAULT_ANCHORS, ch=[8, 8, 8], strides=[8, 16, 32])
    for conv, s in zip(det.m, (8, 16, 32)):
        b = conv.bias.view(3, -1)
        tol = 1 / math.sqrt(8) + 1e-6  # default uniform init bound before the priors are added
        assert (b[:, 4] - math.log(8 / (640 / s) ** 2)).abs().max() <= tol
        assert (b[:, 5:20] - math.log(0.6 / (15 - 0.99))).abs().max() <= tol
        assert (b[:, 20:] - math.log(1 / 180)).abs().max() <= tol


def test_grid_cache_per_size_and_dtype(nano):
    det = nano.detect
    for shape in [(64, 64), (96, 64), (64, 64)]:
        dec, _ = nano(torch.rand(1, 3, *shape))
        h, w = shape
        assert dec.shape[1] == 3 * sum((h // s) * (w // s) for s in (8, 16, 32))
    assert len(det._grids) == 6  # 2 sizes x 3 levels
    m64 = copy.deepcopy(nano).double()
    assert m64.detect._grids == {}
    dec, _ = m64(torch.rand(1, 3, 64, 64, dtype=torch.float64))
    assert dec.dtype == torch.float64


def test_fuse_keeps_outputs(nano):
    x = torch.rand(2, 3, 64, 64)
    fused = copy.deepcopy(nano).fuse()
    assert fused.fused and not nano.fused
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        d0, r0 = nano(x)
        d1, r1 = fused(x)
    for a, b in zip(r0, r1):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(d0[..., :4], d1[..., :4], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(d0[..., 5:], d1[..., 5:], atol=1e-4, rtol=1e-4)
    with pytest.raises(ObbslimError, match="fused"):
        save(fused, "/nonexistent/never.pt")


def test_channels_last_forward(nano):
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        d0, _ = nano(x)
        m = copy.deepcopy(nano).to(memory_format=torch.channels_last)
        d1, _ = m(x.contiguous(memory_format=torch.channels_last))
        raw = m.train()(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(d0, d1, atol=1e-4, rtol=1e-4)
    assert raw[0].shape == (1, 3, 8, 12, 5 + 3 + 180)


def test_arch_record_is_plain_json_and_rebuilds(nano):
    arch = nano.arch
    assert json.loads(json.dumps(arch)) == arch
    assert arch["anchors"] == [[[float(v) for v in a] for a in lvl] for lvl in DEFAULT_ANCHORS]
    assert arch == build(arch, nc=3).arch


def _shrink_arch(arch: dict, rng: np.random.Generator) -> dict:
    """Random smaller widths consistent with the couplings (inputs follow producers, residual adds)."""
    a = copy.deepcopy(arch)
    out: list[int] = []

    def pick(c: int) -> int:
        return int(rng.integers(max(1, c // 3), c + 1))

    for i, r in enumerate(a["layers"]):
        srcs = r["from"] if isinstance(r["from"], list) else [r["from"]]
        ins = [a["ch"] if (i == 0 and j == -1) else out[j] for j in srcs]
        t = r["type"]
        if t in ("Conv", "C3", "SPPF"):
            r["c1"] = ins[0]
        if t == "Conv":
            r["c2"] = pick(r["c2"])
            out.append(r["c2"])
        elif t == "C3":
            r["cv1"], r["cv2"], r["cv3"] = pick(r["cv1"]), pick(r["cv2"]), pick(r["cv3"])
            r["m"] = [[pick(h), r["cv1"] if r["shortcut"] else pick(o)] for h, o in r["m"]]
            out.append(r["cv3"])
        elif t == "SPPF":
            r["cv1"], r["cv2"] = pick(r["cv1"]), pick(r["cv2"])
            out.append(r["cv2"])
        elif t == "Concat":
            out.append(sum(ins))
        elif t == "Upsample":
            out.append(ins[0])
        else:
            r["ch"] = ins
            out.append(0)
    return a


def test_random_pruned_widths_rebuild_identically():
    torch.manual_seed(1)
    full = build("yolov5n-obb", nc=2).arch
    small = _shrink_arch(full, np.random.default_rng(3))
    assert small != full
    m1 = OBBModel.from_arch(small)
    randomize_bn(m1, seed=2)
    assert m1.arch == small
    n_full = sum(p.numel() for p in OBBModel.from_arch(full).parameters())
    assert sum(p.numel() for p in m1.parameters()) < n_full
    m2 = OBBModel.from_arch(json.loads(json.dumps(m1.arch)))
    m2.load_state_dict(m1.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        d1, _ = m1.eval()(x)
        d2, _ = m2.eval()(x)
    assert torch.equal(d1, d2)


def _keep_out(conv_block, idx: torch.Tensor) -> None:
    """Keep output channels idx of a Conv block (conv rows + its BN), as a pruner would in place."""
    c, bn = conv_block.conv, conv_block.bn
    c.weight = nn.Parameter(c.weight.data[idx].clone())
    c.out_channels = len(idx)
    bn.weight = nn.Parameter(bn.weight.data[idx].clone())
    bn.bias = nn.Parameter(bn.bias.data[idx].clone())
    bn.running_mean = bn.running_mean[idx].clone()
    bn.running_var = bn.running_var[idx].clone()
    bn.num_features = len(idx)


def _keep_in(conv: nn.Conv2d, idx: torch.Tensor) -> None:
    conv.weight = nn.Parameter(conv.weight.data[:, idx].clone())
    conv.in_channels = len(idx)


def test_in_place_slice_then_record_rebuild(nano):
    model = copy.deepcopy(nano)
    # (1) layer 13 (C3, no shortcut): its bottleneck's hidden conv 64 -> 40 channels
    c3 = model.model[13]
    keep = torch.arange(0, 64, 64 / 40).long()[:40]
    _keep_out(c3.m[0].cv1, keep)
    _keep_in(c3.m[0].cv2.conv, keep)
    # (2) layer 2 (C3 with shortcut): cv1 width is coupled with the residual (bottleneck cv2 out)
    # and with cv3's first input block, so all of them lose the same channels
    c3 = model.model[2]
    keep = torch.tensor([0, 2, 3, 5, 7, 8, 11, 13, 15])
    _keep_out(c3.cv1, keep)
    _keep_in(c3.m[0].cv1.conv, keep)
    _keep_out(c3.m[0].cv2, keep)
    cv3_in = torch.cat([keep, torch.arange(16, 32)])
    _keep_in(c3.cv3.conv, cv3_in)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        d1, _ = model(x)
    arch = model.arch
    assert arch["layers"][13]["m"] == [[40, 64]]
    assert arch["layers"][2]["cv1"] == 9 and arch["layers"][2]["m"] == [[16, 9]]
    rebuilt = OBBModel.from_arch(arch, names=model.names)
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        d2, _ = rebuilt.eval()(x)
    assert torch.equal(d1, d2)


def test_inconsistent_records_are_refused(nano):
    arch = nano.arch
    bad = copy.deepcopy(arch)
    bad["layers"][3]["c1"] += 1
    with pytest.raises(ObbslimError, match="layer 3"):
        OBBModel.from_arch(bad)
    bad = copy.deepcopy(arch)
    bad["layers"][2]["m"][0][1] -= 1  # residual add needs out == in
    with pytest.raises(ObbslimError, match="shortcut"):
        OBBModel.from_arch(bad)
    bad = copy.deepcopy(arch)
    bad["layers"][-1]["ch"][0] += 8
    with pytest.raises(ObbslimError, match="Detect"):
        OBBModel.from_arch(bad)


def test_build_accepts_names_files_and_dicts(tmp_path):
    a = build("yolov5n-obb", nc=4).arch
    assert build("yolov5n-obb.yaml", nc=4).arch == a
    assert build(SPECS_DIR / "yolov5n-obb.yaml", nc=4).arch == a
    spec = load_spec("yolov5n-obb")
    p = tmp_path / "mine.yaml"
    p.write_text((SPECS_DIR / "yolov5n-obb.yaml").read_text())
    assert build(str(p), nc=4).arch["layers"] == a["layers"]
    assert build(spec, nc=4).arch["layers"] == a["layers"]
    assert available_specs() == [f"yolov5{s}-obb" for s in "lmnsx"]
    m = build("yolov5n-obb", nc=2, names=["car", "ship"])
    assert m.names == ["car", "ship"] and build("yolov5n-obb", nc=2).names == ["0", "1"]
    with pytest.raises(ObbslimError, match="yolov5q"):
        build("yolov5q-obb", nc=2)
    with pytest.raises(ObbslimError, match="names"):
        build("yolov5n-obb", nc=2, names=["car"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("nc: 3\nbackbone: [\n")
    with pytest.raises(ObbslimError, match="bad.yaml"):
        build(bad, nc=2)


def test_spec_anchors_are_the_defaults():
    for name in available_specs():
        spec = load_spec(name)
        pairs = [[[row[j], row[j + 1]] for j in range(0, 6, 2)] for row in spec["anchors"]]
        assert pairs == DEFAULT_ANCHORS, name


def test_save_load_round_trip_weights_only_without_torch_pruning(nano, tmp_path):
    ema = copy.deepcopy(nano)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.01)
    opt = torch.optim.SGD(nano.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "sub" / "best.pt"
    save(nano, path, ema=ema, optimizer=opt, epoch=7, hyp={"lr0": 0.01}, metrics={"map50": 0.5}, note="hi")
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) >= {"arch", "model", "ema", "names", "hyp", "epoch", "optimizer", "metrics", "version"}
    assert ckpt["names"] == ["a", "b", "c"] and ckpt["epoch"] == 7 and ckpt["note"] == "hi"
    assert ckpt["arch"] == nano.arch
    x = torch.rand(1, 3, 64, 64)
    torch.save(x, tmp_path / "x.pt")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch_pruning"] = None  # importing it would fail: loading must not need it
        import torch
        torch.set_num_threads(1)  # as the parent: same summation order
        from obbslim.model import load
        torch.load({str(path)!r}, weights_only=True)
        x = torch.load({str(tmp_path / "x.pt")!r}, weights_only=True)
        out = {{}}
        for ema in (True, False):
            m = load({str(path)!r}, ema=ema)
            assert not m.training and m.names == ["a", "b", "c"]
            with torch.no_grad():
                out[str(ema)] = m(x)[0]
        torch.save(out, {str(tmp_path / "out.pt")!r})
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    with torch.no_grad():  # another process may use other thread counts: not bit-identical sums
        torch.testing.assert_close(out["True"], ema(x)[0], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(out["False"], nano(x)[0], rtol=1e-5, atol=1e-4)
        assert not torch.allclose(out["True"][..., :4], out["False"][..., :4], atol=1e-3)
    resumed = ckpt_to_model(read_checkpoint(path))
    assert resumed.training
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), nano.state_dict().values()))


def test_half_weights_saved_as_float(nano, tmp_path):
    path = tmp_path / "h.pt"
    save(copy.deepcopy(nano).half(), path)
    sd = torch.load(path, weights_only=True)["model"]
    assert all(v.dtype != torch.float16 for v in sd.values())
    assert load(path, ema=True).detect.anchors.dtype == torch.float32  # no EMA stored: raw weights


def test_bad_checkpoints_give_clear_errors(nano, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ObbslimError, match="junk.pt"):
        load(junk)
    with pytest.raises(ObbslimError, match="missing.pt"):
        load(tmp_path / "missing.pt")
    plain = tmp_path / "plain.pt"
    torch.save({"model": {}}, plain)
    with pytest.raises(ObbslimError, match="plain.pt.*not an obbslim checkpoint"):
        load(plain)
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": nn.Linear(2, 2), "arch": {}}, pickled)  # a pickled module: refused
    with pytest.raises(ObbslimError, match="pickled.pt"):
        load(pickled)
    good = tmp_path / "good.pt"
    save(nano, good)
    ckpt = torch.load(good, weights_only=True)
    ckpt["arch"]["layers"][0]["c2"] = 8
    ckpt["arch"]["layers"][1]["c1"] = 8
    mismatch = tmp_path / "mismatch.pt"
    torch.save(ckpt, mismatch)
    with pytest.raises(ObbslimError, match="mismatch.pt.*does not match"):
        load(mismatch)


def test_flops_of_one_conv_are_two_macs():
    conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    macs = 16 * 3 * 3 * 3 * 8 * 8
    assert count_flops(conv, torch.zeros(1, 3, 8, 8)) == 2 * macs


@pytest.mark.parametrize("scale", ["n", "s"])
def test_gflops_match_yolov5_convention(scale):
    spec = load_spec(f"yolov5{scale}-obb")
    spec["nbins"] = 0  # the plain COCO YOLOv5 head, to compare with the official figure
    info = model_info(build(spec, nc=80), print_fn=None)
    assert info["params"] == YOLOV5_PARAMS[scale] == info["gradients"]
    # conv/matmul FLOPs only; thop also counts BN, so ours sit slightly under the official figure
    assert 0.97 < info["gflops"] / YOLOV5_GFLOPS[scale] < 1.0


def test_model_info_scales_exactly_and_prints(nano, capsys):
    info = model_info(nano, imgsz=128, verbose=True)
    direct = count_flops(nano, torch.zeros(1, 3, 128, 128)) / 1e9
    assert info["gflops"] == pytest.approx(direct, rel=1e-9)
    assert info["layers"] == len(list(nano.modules()))
    text = capsys.readouterr().out
    assert "yolov5n-obb summary:" in text and "GFLOPs at 128 (FLOPs = 2 x MACs)" in text
    rows = layer_table(nano)
    assert len(rows) == 25 and rows[-1]["module"] == "Detect" and rows[4]["n"] == 2
    assert sum(r["params"] for r in rows) == info["params"]
    assert nano.training is False


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_eval_forward_traces(nano):
    """The decode is plain tensor ops: a trace reproduces the eager output (ONNX export relies on it)."""
    model = copy.deepcopy(nano)
    model.detect._grids = {}
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False, strict=False)
        assert model.detect._grids == {}  # no traced constants leak into the eager cache
        d0, _ = model(x)
        d1, _ = traced(x)
    torch.testing.assert_close(d0, d1)
