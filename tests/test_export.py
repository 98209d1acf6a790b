"""ONNX export, the ONNX Runtime backend, INT8 quantisation and the torch-free standalone runner."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from obbslim.errors import ObbslimError
from obbslim.model import build, load_spec, save

NAMES = [f"c{i}" for i in range(15)]


def tiny_model(names=NAMES, seed: int = 0, arch: dict | None = None, width: float | None = None):
    """An untrained yolov5n-obb whose BatchNorms hold random statistics, so BN fusion is not a no-op
    and the outputs depend on the image."""
    torch.manual_seed(seed)
    if arch is None:
        spec = load_spec("yolov5n-obb")
        if width:
            spec["width_multiple"] = width
        m = build(spec, nc=len(names), names=names)
    else:
        m = build(arch, nc=len(names), names=names)
    for mod in m.modules():
        if isinstance(mod, torch.nn.Conv2d):  # variance-keeping init: torch's default shrinks the
            torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")  # features to a constant
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.3, 0.3)
    for conv in m.detect.m:
        conv.weight.data *= 0.1
    return m.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("w") / "tiny.pt"
    m = tiny_model()
    m.detect.theta_conf = 0.25  # a trained model's default: the export computes it in the graph
    save(m, p)
    return p


@pytest.fixture(scope="module")
def onnx_256(ckpt, tmp_path_factory) -> Path:
    from obbslim.deploy import export_onnx

    return export_onnx(ckpt, imgsz=256, out=tmp_path_factory.mktemp("o") / "tiny.onnx", verbose=False)


def dota8_image(shared_data: Path, size: int) -> torch.Tensor:
    from obbslim.deploy.quantize import load_letterboxed

    f = sorted((shared_data / "dota8" / "images" / "val").glob("*.jpg"))[0]
    return torch.from_numpy(load_letterboxed(f, (size, size)))


_FUSED: dict = {}


def torch_decoded(ckpt_or_model, x: torch.Tensor) -> torch.Tensor:
    """The PyTorch reference: the loaded (or given) model, BN fused, eval output `decoded`."""
    from obbslim.model import OBBModel, load

    m = ckpt_or_model
    if not isinstance(m, OBBModel):
        if str(m) not in _FUSED:
            _FUSED[str(m)] = load(m).fuse()
        m = _FUSED[str(m)]
    with torch.no_grad():
        return m.eval().fuse()(x)[0]


def assert_decoded_close(ref: torch.Tensor, got: torch.Tensor, nc: int, tol: float = 1e-3) -> None:
    """Columns equal within tol; theta may differ by a bin only where torch's top bins tie (1e-4)."""
    assert got.shape == ref.shape[:-1] + (6 + nc,)
    th_ref, th_got = ref[..., 4], got[..., 4]
    diff = th_ref != th_got
    if diff.any():  # a near-tie of two bins resolved differently by the two runtimes
        probs = ref[..., 6 + nc :][diff]
        k = torch.round((th_got[diff] + math.pi / 2) / (math.pi / probs.shape[-1])).long()
        gap = probs.max(-1).values - probs.gather(-1, k[:, None])[:, 0]
        assert float(gap.max()) < 1e-4, "theta differs where the bins do not tie"
    cols = [0, 1, 2, 3, *range(5, 6 + nc)]
    torch.testing.assert_close(got[..., cols], ref[..., cols], atol=tol, rtol=0)


def gap_threshold(decoded: torch.Tensor, nc: int, lo: int = 100, hi: int = 300) -> float:
    """A conf threshold in the widest gap between ranks lo..hi of the scores (no boundary flips)."""
    s = (decoded[0, :, 6 : 6 + nc] * decoded[0, :, 5:6]).max(1).values.sort(descending=True).values
    s = s[: hi + 1]
    k = int((s[lo:hi] - s[lo + 1 : hi + 1]).argmax()) + lo
    return float((s[k] + s[k + 1]) / 2)


def same_detections(a: dict, b: dict) -> None:
    assert a["cls"].numel() == b["cls"].numel() > 0
    oa, ob = (np.lexsort((d["rboxes"][:, 1].numpy().round(2), d["rboxes"][:, 0].numpy().round(2),
                          d["cls"].numpy())) for d in (a, b))  # fmt: skip
    assert torch.equal(a["cls"][oa], b["cls"][ob])
    torch.testing.assert_close(a["rboxes"][oa], b["rboxes"][ob], atol=1e-3, rtol=0)
    torch.testing.assert_close(a["scores"][oa], b["scores"][ob], atol=1e-5, rtol=0)


def test_export_checker_opset_metadata(onnx_256):
    import onnx

    from obbslim.deploy import read_metadata

    m = onnx.load(str(onnx_256))
    onnx.checker.check_model(m)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = read_metadata(m)
    assert meta["format"] == "obbslim-onnx 1"
    assert meta["names"] == NAMES and meta["nc"] == 15 and meta["stride"] == [8, 16, 32]
    assert meta["imgsz"] == [256, 256] and meta["dynamic"] is False and meta["half"] is False
    assert meta["arch"]["name"] == "yolov5n-obb" and meta["arch"]["nbins"] == 180
    assert meta["arch"]["theta_conf"] == 0.25
    assert [i.name for i in m.graph.input] == ["images"] and [o.name for o in m.graph.output] == ["output"]
    ops = {n.op_type for n in m.graph.node}
    assert "BatchNormalization" not in ops and "ArgMax" in ops  # BN fused; theta decoded in the graph


def test_parity_and_identical_nms_on_dota8(ckpt, onnx_256, shared_data):
    from obbslim.deploy import OnnxModel
    from obbslim.inference.postprocess import postprocess

    x = dota8_image(shared_data, 256)
    ref = torch_decoded(ckpt, x)
    om = OnnxModel(onnx_256)
    assert (om.nc, om.names, om.imgsz, om.dynamic, om.half) == (15, NAMES, [256, 256], False, False)
    got = om(x)
    assert_decoded_close(ref, got, 15)
    conf = gap_threshold(ref, 15)
    a = postprocess(ref, conf_thr=conf, iou_thr=0.4, max_det=300)[0]
    b = postprocess(got, conf_thr=conf, iou_thr=0.4, max_det=300, nc=15)[0]
    c = postprocess(got, conf_thr=conf, iou_thr=0.4, max_det=300, nbins=0)[0]
    same_detections(a, b)
    same_detections(a, c)
    assert a["cls"].numel() >= 20


def test_dynamic_axes_two_sizes(ckpt, tmp_path):
    from obbslim.deploy import OnnxModel, export_onnx

    p = export_onnx(ckpt, imgsz=64, dynamic=True, simplify=True, out=tmp_path / "dyn.onnx", verbose=False)
    om = OnnxModel(p)
    assert om.dynamic
    g = torch.Generator().manual_seed(1)
    for shape in ((1, 3, 64, 64), (2, 3, 96, 160)):
        x = torch.rand(*shape, generator=g)
        got = om(x)
        assert got.shape[:2] == (shape[0], 3 * sum((shape[2] // s) * (shape[3] // s) for s in (8, 16, 32)))
        assert_decoded_close(torch_decoded(ckpt, x), got, 15)
    with pytest.raises(ObbslimError, match="multiple of the max stride"):
        om(torch.rand(1, 3, 70, 64))


def test_static_size_is_enforced(onnx_256):
    from obbslim.deploy import OnnxModel

    with pytest.raises(ObbslimError, match="exported for 256x256"):
        OnnxModel(onnx_256)(torch.rand(1, 3, 128, 128))


def test_postprocess_with_and_without_theta_columns():
    from obbslim.inference.postprocess import postprocess

    g = torch.Generator().manual_seed(0)
    d = torch.rand(1, 500, 6 + 3 + 180, generator=g)
    d[..., :2] *= 200
    d[..., 2:4] = d[..., 2:4] * 30 + 2
    d[..., 4] = d[..., 4] * math.pi - math.pi / 2
    a = postprocess(d, conf_thr=0.3, nbins=180)[0]
    b = postprocess(d[..., :9], conf_thr=0.3, nc=3)[0]
    assert a["cls"].numel() > 10
    for k in a:
        assert torch.equal(a[k], b[k])
    with pytest.raises(ValueError, match="theta_refine"):
        postprocess(d[..., :9], nc=3, theta_refine=True)
    with pytest.raises(ValueError, match="channels"):
        postprocess(d[..., :12], nc=3)


def test_theta_conf_can_be_replaced_for_a_checkpoint_not_an_export(ckpt, onnx_256, shared_data):
    from obbslim.inference.detector import Detector

    x = dota8_image(shared_data, 256)
    assert Detector(ckpt, device="cpu", imgsz=256).model.detect.theta_conf == 0.25
    det = Detector(ckpt, device="cpu", imgsz=256, theta_conf=0.0)
    with torch.no_grad():
        plain = det.forward(x, [])
    ref = torch_decoded(ckpt, x)  # 0.25: objectness x the angle bins' softmax peak ** 0.25
    peak = torch.logit(ref[..., 6 + 15 :]).softmax(-1).amax(-1)  # the theta columns are sigmoids
    torch.testing.assert_close(ref[..., 5], plain[..., 5] * peak**0.25, rtol=1e-4, atol=1e-7)
    with pytest.raises(ObbslimError, match="exported with"):
        Detector(onnx_256, device="cpu", imgsz=256, theta_conf=0.0)


def test_pruned_width_model_exports(tmp_path):
    """An OBBModel rebuilt from a record with narrower layers (as after pruning) exports and agrees."""
    from obbslim.deploy import OnnxModel, export_onnx
    from obbslim.model import spec_to_arch

    arch = spec_to_arch(load_spec("yolov5n-obb"), nc=15)
    L = arch["layers"]
    L[0]["c2"], L[1]["c1"] = 11, 11  # stem conv 16 -> 11 channels
    L[2]["cv1"], L[2]["m"], L[2]["cv2"] = 9, [[5, 9]], 13  # C3: odd inner widths, a thinner bottleneck
    L[9]["cv1"] = 100  # SPPF hidden 128 -> 100
    model = tiny_model(arch=arch)
    assert model.get_arch()["layers"][2]["cv1"] == 9
    p = export_onnx(model, imgsz=128, out=tmp_path / "pruned.onnx", verbose=False)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    assert_decoded_close(torch_decoded(model, x), OnnxModel(p)(x), 15)


def test_half_export_needs_cuda_or_is_fp16(ckpt, tmp_path):
    import onnx

    from obbslim.deploy import export_onnx

    if not torch.cuda.is_available():
        with pytest.raises(ObbslimError, match="needs CUDA"):
            export_onnx(ckpt, imgsz=64, half=True, out=tmp_path / "h.onnx", verbose=False)
        return
    p = export_onnx(ckpt, imgsz=64, half=True, out=tmp_path / "h.onnx", verbose=False)
    m = onnx.load(str(p))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def synth_yaml(tmp_path_factory) -> Path:
    from obbslim.data.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("s") / "ds", n_images=6, size=64, seed=0, val_frac=0.34)


def test_int8_quantisation(tmp_path, synth_yaml):
    import onnx

    from obbslim.deploy import OnnxModel, export_onnx, quantize_int8
    from obbslim.deploy.quantize import head_nodes, load_letterboxed

    model = tiny_model(names=["a", "b", "c", "d", "e"])
    p = export_onnx(model, imgsz=64, out=tmp_path / "m.onnx", verbose=False)
    q = quantize_int8(p, synth_yaml, calib=4, verbose=False)
    assert q == tmp_path / "m_int8.onnx"
    qm = onnx.load(str(q))
    onnx.checker.check_model(qm)
    ops = [n.op_type for n in qm.graph.node]
    assert ops.count("QuantizeLinear") > 20
    heads = set(head_nodes(qm))  # the Detect convs and the decode stay float: no Q/DQ touches them
    outs = {o for n in qm.graph.node if n.name in heads for o in n.output}
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in outs for n in qm.graph.node)
    a, b = OnnxModel(p), OnnxModel(q)
    assert b.int8 and b.meta["calib_images"] == 4
    img = next((synth_yaml.parent / "images" / "train").glob("*.png"))
    x = torch.from_numpy(load_letterboxed(img, (64, 64)))
    ya, yb = a(x), b(x)
    assert yb.shape == ya.shape == (1, 3 * (64 + 16 + 4), 11) and yb.dtype == torch.float32
    assert float((ya[..., 5:] - yb[..., 5:]).abs().mean()) < 0.05  # probabilities close-ish
    assert float((ya[..., :2] - yb[..., :2]).abs().median()) < 2.0  # centres within 2 px


def test_cli_export_with_int8(ckpt, tmp_path, synth_yaml, capsys):
    from obbslim.cli import main
    from obbslim.model import load

    # a 15-class checkpoint calibrated on 5-class data is fine: calibration reads only images
    out = tmp_path / "cli.onnx"
    rc = main(["export", "--weights", str(ckpt), "--imgsz", "64", "--out", str(out), "--int8",
               "--data", str(synth_yaml), "--calib", "2"])  # fmt: skip
    assert rc == 0 and out.is_file() and (tmp_path / "cli_int8.onnx").is_file()
    assert "ONNX export" in capsys.readouterr().out
    assert load(ckpt).nc == 15


def test_bad_inputs_give_clear_errors(tmp_path, ckpt, capsys):
    from obbslim.cli import main
    from obbslim.deploy import OnnxModel, export_onnx

    with pytest.raises(ObbslimError, match="not found"):
        export_onnx(tmp_path / "missing.pt", out=tmp_path / "x.onnx")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint\n")
    with pytest.raises(ObbslimError, match="junk.pt"):
        export_onnx(junk, out=tmp_path / "x.onnx")
    assert main(["export", "--weights", str(junk)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("obbslim export: error:") and "junk.pt" in err and "\n" not in err
    with pytest.raises(ObbslimError, match="not a readable ONNX model"):
        OnnxModel(junk)
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])  # fmt: skip
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(g), str(other))
    with pytest.raises(ObbslimError, match="not an obbslim ONNX export"):
        OnnxModel(other)
    with pytest.raises(ObbslimError, match="needs --data"):
        main_args = ["export", "--weights", str(ckpt), "--int8"]
        from obbslim.deploy.export import export

        export(ckpt, int8=True, data=None, out=tmp_path / "y.onnx")
    assert main(main_args) == 2
    with pytest.raises(ObbslimError, match="opset"):
        export_onnx(ckpt, opset=13, out=tmp_path / "x.onnx")
    with pytest.raises(ObbslimError, match="multiple of the model's largest stride"):
        export_onnx(ckpt, imgsz=100, out=tmp_path / "x.onnx")


def _random_rboxes(rng: np.random.Generator, n: int) -> np.ndarray:
    r = np.empty((n, 5))
    r[:, :2] = rng.uniform(0, 60, (n, 2))
    r[:, 2] = rng.uniform(4, 30, n)
    r[:, 3] = r[:, 2] * rng.uniform(0.2, 1.0, n)
    r[:, 4] = rng.uniform(-math.pi / 2, math.pi / 2, n)
    return r


@pytest.mark.parametrize("seed", range(4))
def test_standalone_nms_matches_ops(seed):
    from obbslim import ops
    from obbslim.deploy import standalone

    rng = np.random.default_rng(seed)
    r = _random_rboxes(rng, 150)
    s = rng.random(150)
    for thr in (0.1, 0.4, 0.7):
        keep = standalone.nms_rotated(r, s, thr)
        assert np.array_equal(keep, ops.nms_rotated(r, s, thr))
    # IoU by clipping against shapely-free hand values: a unit square and its half-shifted copy
    a = standalone.rbox2poly(np.array([[0.0, 0.0, 2.0, 2.0, 0.0]])).reshape(4, 2)
    b = standalone.rbox2poly(np.array([[1.0, 0.0, 2.0, 2.0, 0.0]])).reshape(4, 2)
    assert standalone._clip_area(b, a) == pytest.approx(2.0)


def test_standalone_matches_torch_path(ckpt, onnx_256, shared_data):
    """The torch-free runner gives the detections of model + postprocess + scale_rboxes."""
    import cv2

    from obbslim.data.augment import letterbox
    from obbslim.deploy import standalone
    from obbslim.inference.postprocess import postprocess, scale_rboxes

    f = sorted((shared_data / "dota8" / "images" / "val").glob("*.jpg"))[1]
    img = cv2.imread(str(f))
    lb, ratio, pad = letterbox(img, 256, auto=False)
    x = torch.from_numpy(np.ascontiguousarray(lb[:, :, ::-1].transpose(2, 0, 1))[None] / np.float32(255))
    ref = torch_decoded(ckpt, x)
    conf = gap_threshold(ref, 15)
    d = postprocess(ref, conf_thr=conf, iou_thr=0.4, max_det=300)[0]
    rb = scale_rboxes(d["rboxes"].double(), (ratio, pad))
    det = standalone.Detector(str(onnx_256))
    srb, ssc, scl = det(img, conf=conf, iou=0.4, max_det=300)
    a = {"rboxes": rb.float(), "scores": d["scores"], "cls": d["cls"]}
    b = {"rboxes": torch.from_numpy(srb).float(), "scores": torch.from_numpy(ssc)}
    b["cls"] = torch.from_numpy(scl)
    same_detections(a, b)


def test_standalone_runs_without_torch(onnx_256, tmp_path):
    """standalone.py imports nothing but numpy, cv2 and onnxruntime: it runs with torch blocked."""
    import subprocess
    import sys

    import cv2

    img = tmp_path / "img.png"
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    src = Path(__file__).resolve().parents[1] / "obbslim" / "deploy" / "standalone.py"
    code = (
        "import sys, importlib.util, cv2\n"
        "sys.modules['torch'] = None; sys.modules['obbslim'] = None\n"
        f"spec = importlib.util.spec_from_file_location('standalone', {str(src)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"rb, sc, cls = m.Detector({str(onnx_256)!r})(cv2.imread({str(img)!r}), conf=1e-4)\n"  # untrained
        "print(rb.shape[1], len(sc) == len(cls) > 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["5", "True"]
