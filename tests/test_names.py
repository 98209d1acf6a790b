"""Names that become file names (classes, image ids, run names) are refused where they enter, and
nothing is ever written outside an output folder, whatever the names in a dataset YAML, a checkpoint,
an ONNX export's metadata or a detection file say."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from obbslim.errors import InputError, ObbslimError
from obbslim.utils.names import check_image_id, check_name, inside, name_problem, safe_join

OLD = Path(__file__).resolve().parent / "fixtures" / "old_pruned_tiny.pt"  # 5 classes, tiny, 64 px
ESCAPE = "/../../../ESCAPED_OUTSIDE"

# (name, the reason the rule gives)
HOSTILE = [
    (ESCAPE, "path separator"),
    ("../../x", "path separator"),
    ("a/b", "path separator"),
    ("a\\b", "path separator"),
    ("..", "'..'"),
    ("a..b", "'..'"),
    (".hidden", "starts with a dot"),
    (" .x", "starts with a dot"),
    ("a\nb", "control character"),
    ("a\rb", "control character"),
    ("a\x00b", "control character"),
    ("a\x1bb", "control character"),
    ("a\x85b", "control character"),
    ("a\u2028b", "control character"),  # str.splitlines() breaks lines here
    ("a\u202eb", "control character"),  # right-to-left override: a name that reads differently
    ("a\tb", "control character"),
    ("a\u3000b", "whitespace"),  # ideographic space: a Task1 line split on whitespace would break
    ("", "empty"),
    ("   ", "empty"),
    ("x" * 201, "longer than 200 bytes"),
    (3, "not a string"),
]
FINE = ["plane", "small vehicle", "small-vehicle", "storage_tank", "0", "Ünïcode-名前", "a.b", "x" * 200]


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (files and folders), relative, to compare before and after a run."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name,why", HOSTILE)
def test_the_name_rule_refuses_hostile_names(name, why):
    assert why in name_problem(name)
    with pytest.raises(InputError, match="class name") as e:
        check_name(name, "class name", "data.yaml")
    assert "data.yaml" in str(e.value) and "\n" not in str(e.value)  # one line, even for 'a\nb'


@pytest.mark.parametrize("name", FINE)
def test_the_name_rule_keeps_ordinary_names(name):
    assert name_problem(name) is None and check_name(name, "class name") == name


def test_image_ids_also_refuse_whitespace():
    for bad in ("P 0001", "P\t0001", "P0001\n", "../P0001", ".P0001"):
        with pytest.raises(InputError, match="image id"):
            check_image_id(bad)
    assert check_image_id("P0001__1.0__0___0") == "P0001__1.0__0___0"


def test_safe_join_and_inside(tmp_path):
    assert safe_join(tmp_path, "Task1_plane.txt") == tmp_path / "Task1_plane.txt"
    for bad in ("../x.txt", "a/../../x", "/etc/passwd", ".."):
        with pytest.raises(InputError):
            safe_join(tmp_path, bad)
    assert inside(tmp_path, tmp_path / "a" / "b") and not inside(tmp_path, tmp_path / ".." / "x")
    assert not inside(tmp_path, tmp_path) and not inside(tmp_path / "a", tmp_path / "ab")


# ------------------------------------------------------------------------------------ where names enter


def write_yaml(tmp_path: Path, names) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    p = tmp_path / "data.yaml"
    p.write_text(yaml.safe_dump({"path": str(tmp_path), "train": "images", "val": "images", "names": names}))
    return p


@pytest.mark.parametrize("name,why", HOSTILE[:-1])  # YAML names are read as str()
def test_dataset_yaml_refuses_hostile_class_names(tmp_path, name, why):
    from obbslim.data.labels import load_data_yaml

    for names in (["plane", name], {0: "plane", 1: name}):
        with pytest.raises(InputError, match="class name") as e:
            load_data_yaml(write_yaml(tmp_path, names))
        assert str(tmp_path / "data.yaml") in str(e.value) and why in str(e.value)


def test_write_task1_writes_nothing_outside_its_folder(tmp_path):
    """The issue's case: a class called /../../../ESCAPED_OUTSIDE made write_task1 replace a file two
    levels up (an empty class empties it). Now refused before the first file is written."""
    from obbslim.data.labeltxt import write_task1

    out = tmp_path / "a" / "b" / "task1"
    out.mkdir(parents=True)
    victim = tmp_path / "ESCAPED_OUTSIDE.txt"
    victim.write_text("precious\n")
    before = tree(tmp_path)
    poly = np.arange(8.0)
    for name in (ESCAPE, "../../../ESCAPED_OUTSIDE", "..", ".bashrc", "a/b"):
        for dets in ({"plane": [("P1", 0.9, poly)], name: []}, {name: [("P1", 0.5, poly)]}):
            with pytest.raises(InputError, match="class name"):
                write_task1(out, dets)
    assert tree(tmp_path) == before and victim.read_text() == "precious\n"
    assert list(out.iterdir()) == []  # not even the good class: every name is checked first


def test_write_task1_refuses_image_ids_that_would_break_lines(tmp_path):
    """Image names with spaces gave 11-field Task1 lines that evaluate cannot read."""
    from obbslim.data.labeltxt import read_task1, write_task1

    poly = np.arange(8.0)
    for bad in ("P 0001", "P0001\nP0002 0.9 0 0 0 0 0 0 0 0", "P\u20280001"):
        with pytest.raises(InputError, match="image id"):
            write_task1(tmp_path, {"plane": [(bad, 0.9, poly)]})
    assert list(tmp_path.iterdir()) == []
    (path,) = write_task1(tmp_path, {"small vehicle": [("P0001", 0.9, poly)]})
    assert path.name == "Task1_small-vehicle.txt" and read_task1(path)[0] == ["P0001"]


def test_labeltxt_writer_refuses_line_breaking_fields(tmp_path):
    from obbslim.data.labeltxt import write_labeltxt

    with pytest.raises(ValueError, match="class name"):
        write_labeltxt(tmp_path / "a.txt", np.zeros((1, 8)), ["car\nx"])
    with pytest.raises(ValueError, match="header value"):
        write_labeltxt(tmp_path / "a.txt", np.zeros((1, 8)), ["car"], meta={"gsd": "0.5\n1 2 3 4 5 6 7 8 x"})
    with pytest.raises(ValueError, match="header key"):
        write_labeltxt(tmp_path / "a.txt", np.zeros((1, 8)), ["car"], meta={"1 2 3 4 5 6 7 8 car": "x"})
    assert not (tmp_path / "a.txt").exists()


def tampered_checkpoint(tmp_path: Path, names: list) -> Path:
    ck = torch.load(OLD, map_location="cpu", weights_only=True)
    ck["names"] = names
    p = tmp_path / "tampered.pt"
    torch.save(ck, p)
    return p


def test_checkpoint_class_names_are_checked_where_they_enter(tmp_path):
    from obbslim.model import load

    for bad in (ESCAPE, "..", "a\nb", ".x"):
        p = tampered_checkpoint(tmp_path, ["plane", "ship", bad, "car", "bus"])
        with pytest.raises(ObbslimError, match="invalid checkpoint field 'names'") as e:
            load(p)
        assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_detect_with_a_tampered_checkpoint_writes_nothing_outside(tmp_path, capsys):
    """End to end through the CLI: the traversal name never reaches a file name, the command fails
    with one line, and the folders above the output folder are unchanged."""
    import cv2

    from obbslim.cli import main

    work = tmp_path / "w"
    (work / "imgs").mkdir(parents=True)
    cv2.imwrite(str(work / "imgs" / "P0001.png"), np.full((64, 64, 3), 90, np.uint8))
    ckpt = tampered_checkpoint(tmp_path, ["plane", "ship", ESCAPE, "car", "bus"])
    out = work / "sub" / "task1"
    before = tree(tmp_path)
    rc = main(["detect", "--weights", str(ckpt), "--source", str(work / "imgs"), "--imgsz", "64",
               "--save-dota", str(out), "--device", "cpu", "--project", str(work / "runs")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "names" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert tree(tmp_path) == before  # nothing created anywhere, ESCAPED_OUTSIDE above all


def test_detector_object_with_hostile_names_is_refused_before_any_work(tmp_path):
    """A Python caller's model object may carry any names: detect checks them before the first image."""
    import cv2

    from obbslim.inference.detect import detect
    from obbslim.inference.detector import Detector

    cv2.imwrite(str(tmp_path / "P0001.png"), np.full((64, 64, 3), 90, np.uint8))
    calls = []

    def model(x):
        calls.append(1)
        return torch.zeros(x.shape[0], 0, 8)

    det = Detector(model, names=["plane", "../../evil"], device="cpu", imgsz=64)
    with pytest.raises(InputError, match="evil"):
        detect(weights=None, source=str(tmp_path / "P0001.png"), save_dota=str(tmp_path / "t"), detector=det)
    assert calls == [] and not (tmp_path / "t").exists() and not (tmp_path.parent / "evil").exists()


def test_detect_refuses_image_names_with_spaces_up_front(tmp_path):
    import cv2

    from obbslim.inference.detect import detect
    from obbslim.inference.detector import Detector

    src = tmp_path / "imgs"
    src.mkdir()
    for stem in ("P0001", "P 0002"):
        cv2.imwrite(str(src / f"{stem}.png"), np.full((64, 64, 3), 90, np.uint8))
    calls = []

    def model(x):
        calls.append(1)
        return torch.zeros(x.shape[0], 0, 8)

    det = Detector(model, names=["plane", "ship"], device="cpu", imgsz=64)
    with pytest.raises(InputError, match=r"P 0002\.png.*image id 'P 0002'.*whitespace"):
        detect(weights=None, source=str(src), save_dota=str(tmp_path / "t"), detector=det)
    assert calls == [] and not (tmp_path / "t").exists()
    # without Task1 output, spaces in file names are fine (labels/<stem>.txt)
    r = detect(weights=None, source=str(src), save_txt=True, project=str(tmp_path / "runs"), detector=det,
               verbose=False)  # fmt: skip
    assert sorted(p.name for p in Path(r["run_dir"], "labels").iterdir()) == ["P 0002.txt", "P0001.txt"]


def test_merge_refuses_tile_names_that_escape(tmp_path):
    """Tile detections are a stranger's files too: their image ids become <id>.txt in out_dir."""
    from obbslim.data.merge import merge_detections, read_tile_detections

    dets = tmp_path / "tiles"
    dets.mkdir()
    (dets / "Task1_plane.txt").write_text("../../../evil__1.0__0___0 0.9 0 0 10 0 10 5 0 5\n")
    out = tmp_path / "a" / "merged"
    out.mkdir(parents=True)
    before = tree(tmp_path)
    merge_detections(read_tile_detections(dets), out_dir=out)  # the folders of a tile name are dropped
    assert tree(tmp_path) - before == {"a/merged/evil.txt"}
    for bad in ("..", ".bashrc", "a..b"):
        (out / "evil.txt").unlink()
        (dets / "Task1_plane.txt").write_text(f"{bad}__1.0__0___0 0.9 0 0 10 0 10 5 0 5\n")
        with pytest.raises(InputError, match="image id"):
            merge_detections(read_tile_detections(dets), out_dir=out, task1_dir=tmp_path / "a" / "t1")
        assert tree(tmp_path) == before
        (out / "evil.txt").touch()


@pytest.mark.parametrize("name", ["../escaped", "a/b", "..", ".hidden", "run\n1"])
def test_run_names_follow_the_rule(tmp_path, name, capsys):
    from obbslim.cli import main
    from obbslim.utils.io import claim_run_dir, run_path

    with pytest.raises(InputError, match="run name"):
        run_path(tmp_path / "runs", name)
    if "/" not in name:
        with pytest.raises(InputError, match="run name"):
            claim_run_dir(tmp_path / "runs" / name)
    before = tree(tmp_path)
    rc = main(["val", "--weights", str(OLD), "--data", str(tmp_path / "none.yaml"), "--project",
               str(tmp_path / "runs"), "--name", name])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "run name" in err and "Traceback" not in err
    assert tree(tmp_path) == before


def test_a_leading_dot_image_is_refused_for_saved_outputs(tmp_path):
    import cv2

    from obbslim.inference.detect import detect
    from obbslim.inference.detector import Detector

    cv2.imwrite(str(tmp_path / ".P0001.png"), np.full((64, 64, 3), 90, np.uint8))
    det = Detector(lambda x: torch.zeros(x.shape[0], 0, 8), names=["a", "b"], device="cpu", imgsz=64)
    with pytest.raises(InputError, match="starts with a dot"):
        detect(weights=None, source=str(tmp_path / ".P0001.png"), save_img=True, project=str(tmp_path / "r"),
               detector=det)  # fmt: skip
    assert not (tmp_path / "r").exists()
    assert os.listdir(tmp_path) == [".P0001.png"]
