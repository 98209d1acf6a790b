"""Checkpoints, ONNX exports and image folders from strangers: every field is checked (type, range,
consistency with the weights or the graph) before anything is allocated, and a bad file ends in one
line naming the field; broken image links are reported, never skipped silently."""

from __future__ import annotations

import copy
import json
import os
import pickle
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from obbslim.errors import InputError, ObbslimError

OLD = Path(__file__).resolve().parent / "fixtures" / "old_pruned_tiny.pt"  # 5 classes, tiny, 64 px


@pytest.fixture(scope="module")
def ckpt() -> dict:
    return torch.load(OLD, map_location="cpu", weights_only=True)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "weights_only" not in msg and len(msg) < 500, msg
    return msg


# ------------------------------------------------------------------------------------- checkpoints


def test_a_file_that_is_not_a_checkpoint_says_what_it_is_not(tmp_path):
    from obbslim.model import load

    good = OLD.read_bytes()
    files = {
        "empty.pt": (b"", "the file is empty"),
        "random.pt": (os.urandom(3000), "not a PyTorch file (3000 bytes"),
        "text.pt": (b"version https://git-lfs.github.com/spec/v1\n", "not a PyTorch file"),
        "truncated.pt": (good[: len(good) // 2], "truncated or damaged PyTorch archive"),
        "pickle.pt": (pickle.dumps({"a": 1}), "pickled Python objects"),
    }
    for name, (data, text) in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ObbslimError) as e:
            load(tmp_path / name)
        msg = one_line(e)
        assert msg.startswith(f"{tmp_path / name}: not an obbslim checkpoint: ") and text in msg, msg


def test_a_pickled_module_checkpoint_is_refused_without_torchs_advice(tmp_path, capsys):
    """torch's message says to retry with weights_only=False (arbitrary code): never shown."""
    from obbslim.cli import main
    from obbslim.model import load

    p = tmp_path / "yolov5s.pt"
    torch.save({"model": torch.nn.Linear(2, 2), "arch": {}}, p)
    with pytest.raises(ObbslimError, match="pickled Python objects") as e:
        load(p)
    one_line(e)
    rc = main(["export", "--weights", str(p), "--imgsz", "64"])
    err = capsys.readouterr().err
    assert rc == 2 and "pickled Python objects" in err
    assert "weights_only" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "yolov5s.onnx").exists()


def edit(ck: dict, path: str, value) -> dict:
    """A deep copy of ``ck`` with ``path`` ('arch.layers.0.c2') set to ``value`` (or deleted: ...)."""
    out = copy.deepcopy(ck)
    *parents, last = path.split(".")
    d = out
    for k in parents:
        d = d[int(k)] if isinstance(d, list) else d[k]
    key = int(last) if isinstance(d, list) else last
    if value is ...:
        del d[key]
    else:
        d[key] = value
    return out


BAD_FIELDS = [
    ("names", "plane", "names"),
    ("names", ["plane", "ship"], "names"),  # fewer names than classes
    ("names", ["plane", "ship", "plane", "car", "bus"], "names"),  # duplicates
    ("names", ["a", "b", "c", "d", 5], "names"),
    ("names", ["a", "b", "c", "d", "../../../x"], "names"),
    ("version", 99, "version"),
    ("version", "1", "version"),
    ("epoch", "3", "epoch"),
    ("epoch", -7, "epoch"),
    ("hyp", [1, 2], "hyp"),
    ("model", torch.zeros(3), "model"),
    ("ema", {"a": 1}, "ema"),
    ("arch", [], "arch"),
    ("arch.nc", 10**6, "arch.nc"),
    ("arch.nc", 5.0, "arch.nc"),
    ("arch.nc", True, "arch.nc"),
    ("arch.strides", [0, 16, 32], "arch.strides"),
    ("arch.strides", [8, float("nan"), 32], "arch.strides"),
    ("arch.strides", "8,16,32", "arch.strides"),
    ("arch.anchors", [[[10, 13]]], "arch.anchors"),
    ("arch.anchors.0.0", [10, -13], "arch.anchors"),
    ("arch.layers", [], "arch.layers"),
    ("arch.layers", [{"type": "Conv"}] * 5000, "arch.layers"),
    ("arch.layers.0.c2", 10**9, "arch.layers[0].c2"),
    ("arch.layers.0.k", 10**5, "arch.layers[0].k"),
    ("arch.layers.0.s", 0, "arch.layers[0].s"),
    ("arch.layers.0", "Conv", "arch.layers[0]"),
    ("arch.ch", 10**6, "arch.ch"),
    ("arch.theta_conf", -0.5, "arch.theta_conf"),
    ("arch.theta_conf", float("inf"), "arch.theta_conf"),
    ("arch.theta_conf", "0.25", "arch.theta_conf"),
]


@pytest.mark.parametrize("path,value,field", BAD_FIELDS, ids=[f"{p}={str(v)[:20]}" for p, v, _ in BAD_FIELDS])
def test_every_checkpoint_field_is_checked(tmp_path, ckpt, path, value, field):
    from obbslim.model import load

    p = tmp_path / "bad.pt"
    torch.save(edit(ckpt, path, value), p)
    t0 = time.perf_counter()
    with pytest.raises(ObbslimError) as e:
        load(p)
    msg = one_line(e)
    assert msg.startswith(f"{p}: ") and f"'{field}" in msg, msg
    assert time.perf_counter() - t0 < 5  # nothing huge was built


def test_training_fields_are_checked_before_a_resume(tmp_path, ckpt):
    from obbslim.model import read_checkpoint

    base = {**ckpt, "train_args": {"epochs": 3}, "best_fitness": 0.1, "best_epoch": 0, "callbacks": []}
    for key, value in (("train_args", "x"), ("train_args.epochs", -1), ("train_args.epochs", ...),
                       ("best_fitness", float("nan")), ("best_epoch", "0"), ("callbacks", "sparsity"),
                       ("ema_updates", -1), ("rng", [1]), ("train_time", "1h")):  # fmt: skip
        p = tmp_path / "bad.pt"
        torch.save(edit(base, key, value), p)
        with pytest.raises(ObbslimError, match=f"'{key.split('.')[0]}") as e:
            read_checkpoint(p)
        one_line(e)
    torch.save(base, tmp_path / "ok.pt")
    assert read_checkpoint(tmp_path / "ok.pt")["train_args"] == {"epochs": 3}


def test_a_record_that_promises_more_than_its_weights_is_refused_unbuilt(tmp_path, ckpt):
    """The record is built on the meta device and compared with the weights: a record asking for
    huge layers whose weights are not in the file fails before any allocation."""
    from obbslim.model import load

    bad = copy.deepcopy(ckpt)
    for i, r in enumerate(bad["arch"]["layers"][:-1]):  # every width x 1000, consistent with each other
        for k in ("c1", "c2", "cv1", "cv2", "cv3"):
            if k in r and (i, k) != (0, "c1"):  # the input stays 3 channels
                r[k] *= 1000
        if "m" in r:
            r["m"] = [[h * 1000, o * 1000] for h, o in r["m"]]
    bad["arch"]["layers"][-1]["ch"] = [c * 1000 for c in bad["arch"]["layers"][-1]["ch"]]
    p = tmp_path / "huge.pt"
    torch.save(bad, p)
    t0 = time.perf_counter()
    with pytest.raises(ObbslimError, match="does not match the architecture record") as e:
        load(p)
    one_line(e)
    assert time.perf_counter() - t0 < 5


def test_upsample_and_concat_records_are_bounded(tmp_path, ckpt):
    from obbslim.model import load

    up = next(i for i, r in enumerate(ckpt["arch"]["layers"]) if r["type"] == "Upsample")
    cat = next(i for i, r in enumerate(ckpt["arch"]["layers"]) if r["type"] == "Concat")
    for path, value in ((f"arch.layers.{up}.scale", 10**6), (f"arch.layers.{up}.mode", "area; rm -rf"),
                        (f"arch.layers.{cat}.dim", 0)):  # fmt: skip
        p = tmp_path / "bad.pt"
        torch.save(edit(ckpt, path, value), p)
        with pytest.raises(ObbslimError, match=f"arch.layers\\[{up if 'dim' not in path else cat}\\]"):
            load(p)


# ----------------------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def onnx64(tmp_path_factory) -> Path:
    from obbslim.deploy.export import export_onnx

    torch.set_num_threads(1)
    return export_onnx(OLD, imgsz=64, simplify=False, out=tmp_path_factory.mktemp("onnx") / "m.onnx",
                       verbose=False)  # fmt: skip


def with_meta(src: Path, dst: Path, **raw: str | None) -> Path:
    """A copy of an export whose metadata values are replaced by raw strings (None: the key removed)."""
    import onnx

    m = onnx.load(str(src))
    props = {p.key: p.value for p in m.metadata_props}
    for k, v in raw.items():
        if v is None:
            props.pop(k, None)
        else:
            props[k] = v
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(dst))
    return dst


NAMES5 = json.dumps(["small-vehicle", "large-vehicle", "plane", "ship", "storage-tank"])
BAD_META = [
    ({"imgsz": "[100000, 100000]"}, "imgsz"),  # the 30 GB allocation
    ({"imgsz": "[128, 128]"}, "imgsz"),  # not the graph's input
    ({"imgsz": "[60, 64]"}, "imgsz"),  # not a multiple of the stride
    ({"imgsz": "[64]"}, "imgsz"),
    ({"imgsz": "[-64, 64]"}, "imgsz"),
    ({"imgsz": "[64, 64"}, "imgsz"),  # not JSON
    ({"imgsz": "[1e999, 64]"}, "imgsz"),  # inf
    ({"imgsz": None}, "imgsz"),
    ({"names": '["a", "b"'}, "names"),  # the case: was split into characters
    ({"names": '"abcde"'}, "names"),
    ({"names": json.dumps(["a", "b"]), "nc": "2"}, "nc"),  # consistent, but not with the graph
    ({"names": json.dumps(["a", "b"])}, "nc"),  # fewer names than classes: gave Task1_1.txt ...
    ({"names": json.dumps([f"c{i}" for i in range(100_000)]), "nc": "100000"}, "names"),
    ({"names": json.dumps(["a", "b", "c", "d", "/../../../ESCAPED_OUTSIDE"])}, "names"),
    ({"names": json.dumps(["a", "b", "c", "d", "a"])}, "names"),
    ({"names": json.dumps(["a", "b", "c", "d", None])}, "names"),
    ({"nc": "7"}, "nc"),
    ({"nc": "true"}, "nc"),
    ({"nc": "5.0"}, "nc"),
    ({"nc": "1e999"}, "nc"),
    ({"stride": "[0, 0, 0]"}, "stride"),
    ({"stride": "[8, 16, -32]"}, "stride"),
    ({"stride": "[8, 16, 1e400]"}, "stride"),
    ({"stride": "8,16,32"}, "stride"),
    ({"stride": "[]"}, "stride"),
    ({"stride": "[8, 16, 33]"}, "imgsz"),  # 64 is not a multiple of 33
    ({"dynamic": "yes"}, "dynamic"),
    ({"dynamic": "1"}, "dynamic"),
    ({"dynamic": None}, "dynamic"),
    ({"half": '"false"'}, "half"),
    ({"int8": "[]"}, "int8"),
]


@pytest.mark.parametrize("raw,field", BAD_META, ids=[f"{k}={str(v)[:24]}" for r, _ in BAD_META for k, v in
                                                     list(r.items())[:1]])  # fmt: skip
def test_every_onnx_metadata_field_is_checked(onnx64, tmp_path, raw, field):
    from obbslim.inference.onnx_backend import OnnxModel

    p = with_meta(onnx64, tmp_path / "bad.onnx", **raw)
    t0 = time.perf_counter()
    with pytest.raises(ObbslimError) as e:
        OnnxModel(p)
    msg = one_line(e)
    assert msg.startswith(f"{p}: invalid ONNX metadata '{field}'"), msg
    assert time.perf_counter() - t0 < 5


def test_a_good_export_still_loads_and_detects(onnx64, tmp_path):
    from obbslim.inference.detector import Detector
    from obbslim.inference.onnx_backend import OnnxModel

    m = OnnxModel(onnx64)
    assert m.names == json.loads(NAMES5) and m.nc == 5 and m.imgsz == [64, 64] and m.dynamic is False
    d = Detector(onnx64, device="cpu", imgsz=64, conf=0.0001).predict(np.full((80, 96, 3), 128, np.uint8))
    assert np.isfinite(d.rboxes).all()
    # a plain string "format" and extra keys stay fine
    assert OnnxModel(with_meta(onnx64, tmp_path / "x.onnx", comment="hello")).nc == 5


def test_not_an_obbslim_export(onnx64, tmp_path, capsys):
    from obbslim.cli import main
    from obbslim.inference.onnx_backend import OnnxModel

    with pytest.raises(ObbslimError, match="not an obbslim ONNX export"):
        OnnxModel(with_meta(onnx64, tmp_path / "a.onnx", format=None))
    (tmp_path / "b.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ObbslimError, match="not a readable ONNX model|not an obbslim ONNX export") as e:
        OnnxModel(tmp_path / "b.onnx")
    one_line(e)
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.zeros((64, 64, 3), np.uint8))
    bad = with_meta(onnx64, tmp_path / "c.onnx", imgsz="[100000, 100000]")
    rc = main(["detect", "--weights", str(bad), "--source", str(img), "--save-dota", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert rc == 2 and "invalid ONNX metadata 'imgsz'" in err and "Traceback" not in err
    assert not (tmp_path / "t").exists()


# ------------------------------------------------------------------------------ broken image links


def test_broken_image_links_are_reported_by_the_label_scan(tmp_path):
    from obbslim.data.labels import load_split
    from obbslim.data.synth import make_synthetic

    data = make_synthetic(tmp_path / "ds", n_images=4, size=64, seed=0, val_frac=0.25)
    train = tmp_path / "ds" / "images" / "train"
    link = train / "gone.png"
    link.symlink_to(tmp_path / "nowhere.png")
    samples, report = load_split(data, "train", verbose=False, cache=False)
    assert report.found == 4 and report.skipped_bad == 1 and len(samples) == 3
    assert any(str(link) in m and "broken symbolic link" in m and "nowhere.png" in m for m in report.messages)


def test_broken_image_links_stop_detect_up_front(tmp_path):
    from obbslim.inference.detect import list_sources

    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    (tmp_path / "b.png").symlink_to(tmp_path / "missing.png")
    for source in (tmp_path, str(tmp_path / "*.png"), tmp_path / "b.png"):
        with pytest.raises(InputError, match=r"b\.png: broken symbolic link \(to .*missing\.png\)"):
            list_sources(source)
    (tmp_path / "b.png").unlink()
    (tmp_path / "c.png").symlink_to(tmp_path / "a.png")  # a good link is an image like any other
    assert [Path(f).name for f in list_sources(tmp_path)] == ["a.png", "c.png"]


def test_broken_image_links_are_reported_by_split(tmp_path):
    from obbslim.data.split import split_dataset

    src = tmp_path / "dota"
    (src / "images").mkdir(parents=True)
    (src / "labelTxt").mkdir()
    (src / "images" / "P1.png").symlink_to(tmp_path / "gone.png")
    (src / "labelTxt" / "P1.txt").write_text("")
    s = split_dataset(src, tmp_path / "out", size=64, gap=16, workers=1, progress=False)
    assert s["images"] == 1 and len(s["failed"]) == 1
    assert s["failed"][0][0].endswith("P1.png") and "broken symbolic link" in s["failed"][0][1]


def test_the_standalone_runner_checks_imgsz_against_the_graph(onnx64, tmp_path):
    from obbslim.deploy import standalone

    assert standalone.Detector(str(onnx64)).imgsz == (64, 64)
    for raw in ({"imgsz": "[100000, 100000]"}, {"imgsz": "[128, 128]"}, {"names": '["a"'}, {"half": "1"}):
        with pytest.raises(ValueError, match="metadata"):
            standalone.Detector(str(with_meta(onnx64, tmp_path / "bad.onnx", **raw)))
