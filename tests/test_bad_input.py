"""Bad input and interruptions, one table per kind: every case ends in a one-line error (exit 2 from the
CLI, an ObbslimError in Python) or in a named, counted warning with the right result; nothing is
dropped silently and an interrupted `detect` loses no work.

The CLI runs in-process (``obbslim.cli.main``); models are an untrained width-0.125 yolov5n at 64 px
(the plumbing, not the accuracy)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from obbslim.cli import build_parser, main
from obbslim.errors import InputError, ObbslimError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine more threads make a step ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from obbslim.data.synth import make_synthetic

    return Path(
        make_synthetic(tmp_path_factory.mktemp("s") / "ds", n_images=4, size=96, seed=0, val_frac=0.5)
    )


def tiny_model(nc: int, names: list[str]):
    from obbslim.model import build, load_spec

    torch.manual_seed(0)
    spec = load_spec("yolov5n-obb")
    spec["width_multiple"] = 0.125
    return build(spec, nc=nc, names=names)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """An untrained checkpoint for the five synthetic classes."""
    from obbslim.data.synth import CLASSES
    from obbslim.model import save

    path = tmp_path_factory.mktemp("w") / "tiny.pt"
    save(tiny_model(len(CLASSES), list(CLASSES)), path)
    return path


def cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_one_line_error(capsys, argv: list, needle: str) -> None:
    rc, _, err = cli(capsys, argv)
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"obbslim {argv[0]}: error: "), err
    assert needle in lines[0], lines[0]


# ------------------------------------------------------------------------------ option ranges (CLI)
# The values are checked when the options are built, before any file is opened: the paths are dummies.
W, D = ["--weights", "w.pt"], ["--data", "d.yaml"]
OPTION_CASES = [
    (["detect", *W, "--source", "x.png", "--conf", "2"], "--conf must be in [0, 1], got 2"),
    (["detect", *W, "--source", "x.png", "--iou", "-1"], "--iou must be in [0, 1], got -1"),
    (
        ["detect", *W, "--source", "x.png", "--imgsz", "256", "--gap", "300"],
        "--gap 300 must be smaller than the tile, 256 px",
    ),
    (["detect", *W, "--source", "x.png", "--tile", "512", "--gap", "512"], "--gap 512 must be smaller"),
    (["detect", *W, "--source", "x.png", "--batch", "0"], "--batch must be >= 1, got 0"),
    (["detect", *W, "--source", "x.png", "--max-det", "0"], "--max-det must be >= 1, got 0"),
    (["detect", *W, "--source", "x.png", "--imgsz", "0"], "--imgsz must be >= 32"),
    (["detect", *W, "--source", "x.png", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["val", *W, *D, "--conf", "2"], "--conf must be in [0, 1], got 2"),
    (["val", *W, *D, "--iou", "1.5"], "--iou must be in [0, 1], got 1.5"),
    (["val", *W, *D, "--batch", "0"], "--batch must be >= 1, got 0"),
    (["val", *W, "--full-images", "src", "--imgsz", "128", "--gap", "128"], "--gap 128 must be smaller"),
    (["val", *W, *D, "--workers", "-1"], "--workers must be >= 0, got -1"),
    (["train", *D, "--epochs", "-1"], "--epochs must be >= 1, got -1"),
    (["train", *D, "--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["train", *D, "--imgsz", "0"], "--imgsz must be >= 32 (the largest stride of the models), got 0"),
    (["train", *D, "--batch", "0"], "--batch must be >= 1, got 0"),
    (["train", *D, "--val-every", "0"], "--val-every must be >= 1, got 0"),
    (["train", *D, "--time", "-1"], "--time must be > 0, got -1"),
    (["train", *D, "--sparsity", "-0.1"], "--sparsity must be >= 0, got -0.1"),
    (["distill", "--student", "s.pt", "--teacher", "t.pt", *D, "--kd-temp", "0"], "--kd-temp must be > 0"),
    (["export", *W, "--imgsz", "0"], "--imgsz must be >= 32"),
    (["export", *W, "--opset", "11"], "--opset must be >= 17, got 11"),
    (["prune", *W, "--out", "o.pt", "--ratio", "1.5"], "--ratio must be in [0, 1], got 1.5"),
    (["prune", *W, "--out", "o.pt", "--target-flops", "-0.1"], "--target-flops must be in [0, 1]"),
    (["prune", *W, "--out", "o.pt", "--ratio", "0.5", "--min-channels", "0"], "--min-channels must be >= 1"),
    (["split", "src", "dst", "--size", "256", "--gap", "300"], "--gap 300 must be smaller than --size 256"),
    (["split", "src", "dst", "--rates", "1", "-0.5"], "--rates must be > 0, got -0.5"),
    (["split", "src", "dst", "--keep-thr", "2"], "--keep-thr must be in [0, 1], got 2"),
    (["synth", "dst", "--images", "0"], "--images must be >= 1, got 0"),
    (["synth", "dst", "--val-frac", "1.5"], "--val-frac must be in [0, 1], got 1.5"),
    (["show", "d.yaml", "--out", "o", "--imgsz", "0"], "--imgsz must be >= 32"),
    (["show", "d.yaml", "--out", "o", "--n", "-1"], "--n must be >= 0, got -1"),
    (["benchmark", "--weights", "a.pt", *D, "--runs", "0"], "--runs must be >= 1, got 0"),
    (["compress", *D, "--prune-ratio", "1"], "--prune-ratio must be in (0, 1), got 1"),
    (["compress", *D, "--prune-ratio", "0.5", "--epochs-sparse", "0"], "--epochs-sparse must be >= 1, got 0"),
    (["demo", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["evaluate", "det", "ann", "--threads", "-2"], "--threads must be >= 1, got -2"),
]


@pytest.mark.parametrize(
    "argv,message", OPTION_CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in OPTION_CASES]
)
def test_cli_option_out_of_range_is_one_line_exit_2(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(capsys, argv, message)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_python_api_checks_the_same_ranges(tmp_path):
    """The Python API and the CLI share the checks (and the words)."""
    from obbslim.data.split import split_dataset
    from obbslim.data.synth import make_synthetic
    from obbslim.deploy.export import export
    from obbslim.engine.train import train
    from obbslim.eval.val import val
    from obbslim.inference.detect import detect
    from obbslim.inference.detector import Detector
    from obbslim.options import TrainConfig
    from obbslim.prune import prune_checkpoint

    cases = [
        (lambda: Detector("nowhere.pt", conf=5), "--conf must be in [0, 1], got 5"),
        (lambda: Detector("nowhere.pt", imgsz=256, gap=300), "--gap 300 must be smaller than the tile"),
        (lambda: Detector("nowhere.pt", batch=0), "--batch must be >= 1, got 0"),
        (lambda: Detector("nowhere.pt", conf="high"), "--conf must be a number, got 'high'"),
        (lambda: detect("nowhere.pt", "x.png", iou=2), "--iou must be in [0, 1], got 2"),
        (lambda: val("nowhere.pt", "d.yaml", conf=2), "--conf must be in [0, 1], got 2"),
        (lambda: train("d.yaml", "yolov5n-obb.yaml", 0), "--epochs must be >= 1, got 0"),
        (lambda: TrainConfig.of(batch=0), "--batch must be >= 1, got 0"),
        (lambda: TrainConfig.of(epochs=2.5), "--epochs must be an integer, got 2.5"),
        (lambda: export("nowhere.pt", imgsz=0), "--imgsz must be >= 32"),
        (lambda: prune_checkpoint("a.pt", "b.pt", ratio=2), "--ratio must be in [0, 1], got 2"),
        (lambda: split_dataset(tmp_path, tmp_path / "o", size=256, gap=300), "--gap 300 must be smaller"),
        (lambda: make_synthetic(tmp_path / "s", n_images=0), "--images must be >= 1, got 0"),
    ]
    for call, message in cases:
        with pytest.raises(ObbslimError) as e:
            call()
        assert message in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_input_size_must_fit_the_models_stride(capsys, tiny, synth, tmp_path):
    message = "--imgsz 100 must be a multiple of the model's largest stride, 32 (96 or 128)"
    src = synth.parent / "images" / "val"
    assert_one_line_error(capsys, ["detect", "--weights", tiny, "--source", src, "--imgsz", "100"], message)
    argv = ["benchmark", "--weights", tiny, "--data", synth, "--imgsz", "100", "--out", tmp_path / "b"]
    assert_one_line_error(capsys, argv, message)
    assert not (tmp_path / "b").exists()


def test_detector_refuses_an_empty_image(tiny):
    from obbslim.inference.detector import Detector

    det = Detector(tiny, device="cpu", imgsz=64)
    for img in (np.zeros((0, 0, 3), np.uint8), np.zeros((0, 64, 3), np.uint8)):
        with pytest.raises(InputError, match="empty image array"):
            det.predict(img)


def test_default_gap_scales_with_the_tile_an_explicit_one_is_kept(tiny):
    from obbslim.inference.detector import Detector

    assert Detector(tiny, device="cpu", imgsz=128).gap == 25
    assert Detector(tiny, device="cpu", imgsz=512).gap == 100
    assert Detector(tiny, device="cpu", imgsz=128, gap=0).gap == 0
    assert Detector(tiny, device="cpu", imgsz=128, tile=512, gap=200).gap == 200


# ------------------------------------------------------------------------------ the --hyp file
HYP_CASES = [
    ("degrees: 90\nlr0: fast\n", "h.yaml:2: lr0: expected a number, got 'fast'"),
    ("lr: 0.01\n", "h.yaml:1: unknown hyperparameter 'lr' (did you mean 'lr0' or 'lrf'?)"),
    ("moasic: 0.5\n", "unknown hyperparameter 'moasic' (did you mean 'mosaic'?)"),
    ("box_loss: iou\n", "h.yaml:1: box_loss: expected one of ciou, rciou, probiou, kld, got 'iou'"),
    ("mosaic: 2\n", "h.yaml:1: mosaic: expected a value in [0, 1], got 2"),
    ("box_size: -0.5\n", "h.yaml:1: box_size: expected a value >= 0, got -0.5"),
    ("nbs: 6.5\n", "h.yaml:1: nbs: expected a whole number, got 6.5"),
    ("fliplr: true\n", "h.yaml:1: fliplr: expected a number, got True"),
    ("optimizer: 3\n", "h.yaml:1: optimizer: expected text, got 3"),
    ("assign: one\n", "h.yaml:1: assign: expected one of shared, unique, mixed, got 'one'"),
]


@pytest.mark.parametrize("text,message", HYP_CASES, ids=[t.split(":")[0] for t, _ in HYP_CASES])
def test_hyp_file_keys_and_types_are_checked(capsys, tmp_path, synth, tiny, text, message):
    (tmp_path / "h.yaml").write_text(text)
    runs = tmp_path / "runs"
    assert_one_line_error(
        capsys,
        [
            "train",
            "--data",
            synth,
            "--model",
            tiny,
            "--epochs",
            "1",
            "--imgsz",
            "64",
            "--hyp",
            tmp_path / "h.yaml",
            "--project",
            runs,
        ],
        message,
    )
    assert not runs.exists()  # no empty run folder


def test_hyp_dicts_are_checked_and_checkpoint_hyps_taken_as_stored():
    from obbslim.cfg import load_hyp

    with pytest.raises(InputError, match="unknown hyperparameter 'moasic'"):
        load_hyp({"moasic": 1.0})
    assert load_hyp({"nbs": 8.0})["nbs"] == 8 and isinstance(load_hyp({"nbs": 8.0})["nbs"], int)
    stored = load_hyp({"mosaic": 0.5, "an_old_key": 1}, stored=True)  # from an older version's checkpoint
    assert stored["mosaic"] == 0.5 and "an_old_key" not in stored


# ------------------------------------------------------------------------------ scans and class names
@pytest.fixture(scope="module")
def dirty(synth, tmp_path_factory) -> Path:
    """The synthetic set with a NaN polygon, a 3-point line (image skipped) and an orphan label in val."""
    root = tmp_path_factory.mktemp("dirty") / "ds"
    shutil.copytree(synth.parent, root)
    lab = sorted((root / "labelTxt" / "val").glob("*.txt"))
    with open(lab[0], "a") as f:
        f.write("nan 1 2 3 4 5 6 7 ship 0\n")
    with open(lab[1], "a") as f:
        f.write("1 1 20 1 20 20 ship 0\n")
    (root / "labelTxt" / "val" / "orphan.txt").write_text("1 1 9 1 9 9 1 9 ship 0\n")
    return root / "data.yaml"


def test_val_prints_what_its_scan_skipped(capsys, dirty, tiny, tmp_path):
    rc, out, err = cli(
        capsys,
        [
            "val",
            "--weights",
            tiny,
            "--data",
            dirty,
            "--imgsz",
            "64",
            "--batch",
            "2",
            "--device",
            "cpu",
            "--project",
            tmp_path,
            "--noplots",
        ],
    )
    assert rc == 0, err
    head = next(ln for ln in err.splitlines() if ln.startswith("val: "))
    assert "2 images found, 1 used" in head and "1 skipped as bad" in head
    assert "1 degenerate polygon dropped" in head and "1 orphan label file;" in head
    assert "expected 'x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]'" in err and "orphan.txt" in err
    assert "NaN/inf coordinate" in err
    assert out.splitlines()[2].split()[:2] == ["all", "1"]  # scored on the one usable image, and it says so


def test_show_prints_its_scan_report(capsys, dirty, tmp_path):
    rc, out, err = cli(
        capsys, ["show", dirty, "--split", "val", "--out", tmp_path / "o", "--n", "1", "--imgsz", "64"]
    )
    assert rc == 0 and "val: 2 images found, 1 used" in err and "orphan.txt" in err


def test_val_refuses_a_checkpoint_for_another_number_of_classes(capsys, synth, tmp_path):
    from obbslim.model import save

    three = tmp_path / "three.pt"
    save(tiny_model(3, ["a", "b", "c"]), three)
    assert_one_line_error(
        capsys,
        [
            "val",
            "--weights",
            three,
            "--data",
            synth,
            "--imgsz",
            "64",
            "--device",
            "cpu",
            "--project",
            tmp_path / "runs",
        ],
        "three.pt predicts 3 classes but the dataset",
    )


def test_val_refuses_labels_whose_class_names_the_yaml_does_not_list(capsys, synth, tiny, tmp_path):
    """data.yaml says 'tank' where the labels say 'storage-tank' (or any other name): the images with
    that class would be dropped and the mAP taken on the rest; refuse, naming the classes."""
    from obbslim.data.labeltxt import read_labeltxt

    root = tmp_path / "ds"
    shutil.copytree(synth.parent, root)
    present = sorted({n for p in (root / "labelTxt" / "val").glob("*.txt") for n in read_labeltxt(p).names})
    renamed = present[0]
    text = (root / "data.yaml").read_text().replace(f": {renamed}\n", f": {renamed}s\n")
    (root / "data.yaml").write_text(text)
    assert_one_line_error(
        capsys,
        [
            "val",
            "--weights",
            tiny,
            "--data",
            root / "data.yaml",
            "--imgsz",
            "64",
            "--device",
            "cpu",
            "--project",
            tmp_path / "runs",
        ],
        f"the val labels name classes that 'names' does not list: '{renamed}' ",
    )
    rc, _, err = cli(
        capsys,
        [
            "val",
            "--weights",
            tiny,
            "--data",
            root / "data.yaml",
            "--imgsz",
            "64",
            "--device",
            "cpu",
            "--project",
            tmp_path / "runs",
        ],
    )
    assert f"nearest listed: '{renamed}s'" in err


# ------------------------------------------------------------------------------ prune
def test_prune_says_when_the_ratio_cannot_be_met_and_keeps_both_reports(capsys, tiny, synth, tmp_path):
    out99 = tmp_path / "p" / "p99.pt"
    rc, out, err = cli(
        capsys,
        [
            "prune",
            "--weights",
            tiny,
            "--out",
            out99,
            "--ratio",
            "0.99",
            "--imgsz",
            "64",
            "--data",
            synth,
            "--batch",
            "2",
        ],
    )
    assert rc == 0
    assert "prune: warning: --ratio 0.99 could not be met" in err and "were removed instead" in err
    assert sum(ln.startswith("val: ") for ln in err.splitlines()) == 1  # the scan report, once
    assert out.rstrip().splitlines()[-1].startswith(f"Pruned model saved to {out99}")
    assert "could not be met" in (tmp_path / "p" / "p99_report.md").read_text()
    rc, out, err = cli(
        capsys,
        ["prune", "--weights", tiny, "--out", tmp_path / "p" / "p100.pt", "--ratio", "1.0", "--imgsz", "64"],
    )
    assert rc == 0 and "--ratio 1 could not be met" in err
    rc, out, err = cli(
        capsys,
        ["prune", "--weights", tiny, "--out", tmp_path / "p" / "p30.pt", "--ratio", "0.3", "--imgsz", "64"],
    )
    assert rc == 0 and "warning" not in err
    names = sorted(p.name for p in (tmp_path / "p").iterdir())
    for stem in ("p99", "p100", "p30"):  # one folder, three prunes, three reports
        assert f"{stem}_report.md" in names and f"{stem}_widths.png" in names


# ------------------------------------------------------------------------------ evaluate
@pytest.fixture()
def eval_case(tmp_path) -> tuple[Path, Path]:
    """Ground truth of two images (small-vehicle, ship) and perfect detections in files spelled as other
    tools spell them, plus a file of a class the ground truth does not have."""
    from obbslim.data.labeltxt import write_labeltxt

    ann, det = tmp_path / "ann", tmp_path / "det"
    ann.mkdir()
    det.mkdir()
    sv = np.array([[10, 10, 30, 10, 30, 20, 10, 20], [50, 50, 70, 50, 70, 60, 50, 60]], float)
    ship = np.array([[100, 100, 160, 100, 160, 120, 100, 120]], float)
    write_labeltxt(ann / "img1.txt", np.concatenate([sv, ship]), ["small-vehicle"] * 2 + ["ship"])
    write_labeltxt(ann / "img2.txt", sv + 5, ["small-vehicle"] * 2)

    def line(img, score, poly):
        return f"{img} {score} " + " ".join(str(v) for v in poly) + "\n"

    (det / "Task1_small_vehicle.txt").write_text(
        "".join(line("img1", 0.9, p) for p in sv) + "".join(line("img2", 0.8, p) for p in sv + 5)
    )
    (det / "Task1_Ship.txt").write_text(line("img1", 0.7, ship[0]))
    (det / "Task1_boat.txt").write_text(line("img1", 0.5, ship[0]))
    return det, ann


def test_evaluate_matches_class_files_loosely_and_names_the_unmatched(capsys, eval_case, tmp_path):
    det, ann = eval_case
    js = tmp_path / "m.json"
    rc, out, err = cli(capsys, ["evaluate", det, ann, "--json", js])
    assert rc == 0
    result = json.loads(js.read_text())
    assert result["per_class"] == pytest.approx({"ship": 1.0, "small-vehicle": 1.0})  # 0 without the match
    assert "warning: 1 detection file of no class in the ground truth ignored: Task1_boat.txt" in err
    assert f"JSON summary written to {js}" in out
    rc, out, err = cli(capsys, ["evaluate", det, ann, "--classes", "Small Vehicle,helicopter"])
    assert rc == 0 and "small-vehicle" in out and "1 class not in the ground truth (AP 0): helicopter" in err


def test_evaluate_warns_on_an_empty_folder_and_on_images_outside_the_set(capsys, eval_case, tmp_path):
    det, ann = eval_case
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, err = cli(capsys, ["evaluate", empty, ann])
    assert rc == 0 and f"no Task1_<class>.txt files in {empty}: every class scores 0" in err
    (tmp_path / "set.txt").write_text("img1\n")
    rc, out, err = cli(capsys, ["evaluate", det, ann, "--imageset", tmp_path / "set.txt"])
    assert rc == 0 and "2 detections on 1 image outside the evaluated set ignored (img2)" in err


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_evaluate_refuses_non_finite_scores_and_coordinates(capsys, eval_case, bad):
    det, ann = eval_case
    with open(det / "Task1_Ship.txt", "a") as f:
        f.write(f"img1 {bad} 1 1 5 1 5 5 1 5\n")
    assert_one_line_error(
        capsys, ["evaluate", det, ann], "Task1_Ship.txt:2: score and coordinates must be finite"
    )
    (det / "Task1_Ship.txt").write_text(f"img1 0.5 1 1 5 1 5 5 1 {bad}\n")
    assert_one_line_error(
        capsys, ["evaluate", det, ann], "Task1_Ship.txt:1: score and coordinates must be finite"
    )


# ------------------------------------------------------------------------------ detect: ids, bad images
@pytest.fixture()
def images(synth, tmp_path) -> Path:
    """src/a/x.png, src/b/x.png (same stem), src/a/y.png and src/a/y.jpg (same stem, same folder)."""
    val = sorted((synth.parent / "images" / "val").glob("*.png"))
    src = tmp_path / "src"
    for sub, name, k in (("a", "x.png", 0), ("b", "x.png", 1), ("a", "y.png", 0)):
        (src / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(val[k], src / sub / name)
    cv2.imwrite(str(src / "a" / "y.jpg"), cv2.imread(str(val[1])))
    return src


def test_detect_gives_files_with_the_same_stem_their_own_ids(capsys, images, tiny, tmp_path):
    from obbslim.inference.detect import image_ids, list_sources

    files = list_sources([images / "a", images / "b", images / "a" / "x.png", f"{images}/a/./x.png"])
    assert len(files) == 4  # the same file reached three ways is detected once
    assert image_ids(files) == ["a_x", "y_jpg", "y_png", "b_x"]
    rc, out, err = cli(
        capsys,
        [
            "detect",
            "--weights",
            tiny,
            "--source",
            images / "a",
            images / "b",
            "--imgsz",
            "64",
            "--conf",
            "0.001",
            "--max-det",
            "5",
            "--device",
            "cpu",
            "--save-txt",
            "--save-dota",
            tmp_path / "dota",
            "--project",
            tmp_path / "runs",
            "--name",
            "e",
        ],
    )
    assert rc == 0 and "share a file stem" in err
    labels = sorted(p.stem for p in (tmp_path / "runs" / "e" / "labels").iterdir())
    assert labels == ["a_x", "b_x", "y_jpg", "y_png"]
    ids = {
        ln.split()[0] for p in (tmp_path / "dota").glob("Task1_*.txt") for ln in p.read_text().splitlines()
    }
    assert ids == {"a_x", "b_x", "y_jpg", "y_png"}  # 5 detections each, four images, none mixed


def test_detect_skips_and_counts_an_unreadable_image(capsys, images, tiny, tmp_path):
    data = (images / "a" / "x.png").read_bytes()
    (images / "a" / "z.png").write_bytes(data[: len(data) // 2])  # truncated
    rc, out, err = cli(
        capsys,
        [
            "detect",
            "--weights",
            tiny,
            "--source",
            images / "a",
            "--imgsz",
            "96",
            "--conf",
            "0.001",
            "--device",
            "cpu",
            "--save-dota",
            tmp_path / "dota",
        ],
    )
    assert rc == 0
    assert f"detect: skipped {images / 'a' / 'z.png'}: cannot read image" in err
    assert "4 images (0 tiled, 3 windows, 1 skipped as unreadable)" in out
    ids = {
        ln.split()[0] for p in (tmp_path / "dota").glob("Task1_*.txt") for ln in p.read_text().splitlines()
    }
    assert ids == {"x", "y_jpg", "y_png"}
    (images / "b" / "x.png").write_bytes(b"not an image")
    assert_one_line_error(
        capsys,
        ["detect", "--weights", tiny, "--source", images / "b", "--imgsz", "64", "--device", "cpu"],
        "no image could be read",
    )


# ------------------------------------------------------------------------------ detect: resume
def test_interrupted_detect_resumes_and_writes_the_same_task1_files(synth, tiny, tmp_path, capsys):
    from obbslim.inference.detect import detect
    from obbslim.inference.detector import Detector

    src = synth.parent / "images" / "val"
    opts = dict(imgsz=64, conf=0.001, max_det=20, batch=1, device="cpu", progress=False)

    class Counting(Detector):
        calls, stop_at = 0, None

        def predict_batch(self, sources):
            Counting.calls += 1
            if Counting.calls == Counting.stop_at:
                raise KeyboardInterrupt
            return super().predict_batch(sources)

    whole = detect(tiny, src, save_dota=tmp_path / "whole", **opts)
    assert whole["n_images"] == 2 and whole["n_det"] > 0
    out = tmp_path / "dota"
    Counting.calls, Counting.stop_at = 0, 2
    with pytest.raises(KeyboardInterrupt):
        detect(
            tiny,
            src,
            save_dota=out,
            detector=Counting(tiny, device="cpu", imgsz=64, conf=0.001, max_det=20, batch=1),
            **opts,
        )
    assert "1 finished image kept in" in capsys.readouterr().err
    assert len(list((out / ".detect").glob("*.txt"))) == 1 and not list(out.glob("Task1_*.txt"))
    Counting.calls, Counting.stop_at = 0, None
    r = detect(
        tiny,
        src,
        save_dota=out,
        detector=Counting(tiny, device="cpu", imgsz=64, conf=0.001, max_det=20, batch=1),
        save_txt=True,
        project=tmp_path / "runs",
        **opts,
    )
    assert Counting.calls == 1 and r["n_resumed"] == 1 and r["n_det"] == whole["n_det"]
    assert "resuming: 1 image of 2 already done" in capsys.readouterr().err
    labels = sorted((Path(r["run_dir"]) / "labels").glob("*.txt"))  # the resumed image's too
    assert len(labels) == 2 and sum(len(p.read_text().splitlines()) for p in labels) == whole["n_det"]
    for p in sorted((tmp_path / "whole").glob("Task1_*.txt")):
        assert (out / p.name).read_bytes() == p.read_bytes()  # byte for byte what an uninterrupted run writes
    assert not (out / ".detect").exists()
    # results of other settings are not mixed in: they are discarded, with a note
    Counting.calls, Counting.stop_at = 0, 2
    with pytest.raises(KeyboardInterrupt):
        detect(
            tiny,
            src,
            save_dota=out,
            detector=Counting(tiny, device="cpu", imgsz=64, conf=0.001, max_det=20, batch=1),
            **opts,
        )
    r = detect(tiny, src, save_dota=out, **{**opts, "conf": 0.5})
    assert r["n_resumed"] == 0 and "discarded; starting over" in capsys.readouterr().err


def test_detect_resume_settings_name_what_changes_the_detections(tiny):
    """Kept results of another scoring, merge or test-time augmentation are discarded, not mixed in."""
    from obbslim.inference.detect import _settings
    from obbslim.inference.detector import Detector
    from obbslim.options import DetectConfig

    def settings(**kw):
        cfg = DetectConfig.of(weights=tiny, source=["x"], imgsz=64, device="cpu", **kw)
        return _settings(cfg, Detector(tiny, device="cpu", imgsz=64, **kw))

    base = settings()
    for kw in ({"theta_conf": 0.5}, {"merge": False}, {"rates": (0.5, 1.0)}, {"flip": True}):
        assert settings(**kw) != base, kw
    assert settings() == base


# ------------------------------------------------------------------------------ split: Ctrl-C leftovers
def test_interrupted_split_leaves_no_temporary_files(shared_data, tmp_path, monkeypatch):
    """The pool's workers are killed mid-write on Ctrl-C; their hidden temp files are removed (and a
    killed earlier run's are removed when the split starts again)."""
    from obbslim.data import split as split_mod

    src, dst = shared_data / "dota_demo", tmp_path / "dst"
    (dst / "images").mkdir(parents=True)
    stale = dst / "images" / ".P0003__1.0__0___0.png.abc123.tmp"
    stale.write_bytes(b"half a tile")

    def interrupted(results, summary, bar):
        assert not stale.exists()  # swept at the start
        (dst / "labelTxt" / ".P0004__1.0__0___0.txt.xyz.tmp").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(split_mod, "_collect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        split_mod.split_dataset(src, dst, size=1024, gap=200, workers=1, progress=False)
    assert [p for p in dst.rglob(".*.tmp")] == []


# ------------------------------------------------------------------------------ threads and workers
def test_threads_default_to_the_environment_or_cores_minus_one(monkeypatch):
    from obbslim.utils import threads

    monkeypatch.setattr(threads, "cpu_count", lambda: 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.default_threads() == 7 and threads.default_threads(reserve=0) == 8
    assert threads.default_workers() == 7 and threads.default_workers(2) == 2
    monkeypatch.setattr(threads, "cpu_count", lambda: 1)
    assert threads.default_threads() == 1 and threads.default_workers() == 0
    before = torch.get_num_threads()
    with threads.use_threads(2) as n:
        assert n == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


def test_every_computing_command_takes_threads():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    computing = "train distill val detect export prune benchmark compress demo evaluate show".split()
    for name in computing:
        assert "--threads" in sub.choices[name]._option_string_actions, name
    assert "%%" not in sub.choices["benchmark"].format_help()


def test_resume_keeps_the_runtime_options_given_now(synth, tiny, tmp_path):
    """``train --resume RUN --workers 1`` uses 1 worker, not the stored number."""
    from obbslim.engine.train import _resolve_run, train
    from obbslim.options import TrainConfig

    r = train(
        data=synth,
        model=str(tiny),
        epochs=2,
        stop_after=1,
        imgsz=64,
        batch=2,
        device="cpu",
        workers=0,
        project=tmp_path,
        verbose=False,
        noplots=True,
        noval=True,
    )
    assert r["stopped"] == "stop_after"
    for workers in (1, None):
        cfg, ckpt, _ = _resolve_run(TrainConfig(resume=r["last"], workers=workers, threads=1), [], print)
        assert cfg.workers == workers and cfg.threads == 1 and cfg.epochs == 2 and cfg.imgsz == 64


# ------------------------------------------------------------------------------ wording
def test_messages_count_and_name_flags(capsys, synth, tmp_path):
    from obbslim.utils.text import plural

    assert (plural(1, "image"), plural(2, "image"), plural(0, "epoch")) == ("1 image", "2 images", "0 epochs")
    assert plural(1, "class", "classes") == "1 class" and plural(3, "class", "classes") == "3 classes"
    rc, out, err = cli(capsys, ["synth", tmp_path / "s", "--images", "3", "--size", "64"])
    assert rc == 0 and "3 images of 64 px (2 train, 1 val) written to" in err
    assert_one_line_error(capsys, ["synth", tmp_path / "s", "--images", "3"], "--overwrite")
    (tmp_path / "t" / "images").mkdir(parents=True)
    assert_one_line_error(capsys, ["split", tmp_path / "t", tmp_path / "u"], "--images-only")


def test_val_json_says_where_it_went(capsys, synth, tiny, tmp_path):
    js = tmp_path / "v.json"
    rc, out, err = cli(
        capsys,
        [
            "val",
            "--weights",
            tiny,
            "--data",
            synth,
            "--imgsz",
            "64",
            "--device",
            "cpu",
            "--project",
            tmp_path,
            "--noplots",
            "--json",
            js,
        ],
    )
    assert (
        rc == 0
        and f"Metrics (JSON) written to {js}" in out
        and json.loads(js.read_text())["metric"] == "voc07"
    )
