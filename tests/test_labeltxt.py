from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obbslim.data.labeltxt import read_labeltxt, read_task1, task1_filename, write_labeltxt, write_task1
from obbslim.errors import InputError


def test_read_real_labeltxt(shared_data):
    lf = read_labeltxt(shared_data / "dota_demo" / "labelTxt" / "P0003.txt")
    assert len(lf) == 55 and lf.polys.shape == (55, 8) and lf.polys.dtype == np.float64
    assert (lf.difficult != 0).sum() == 13
    assert lf.meta == {"imagesource": "GoogleEarth", "gsd": "0.115726939386"}
    assert lf.names[0] == "small-vehicle" and lf.names[1] == "large-vehicle"
    assert lf.lines[:2].tolist() == [3, 4]  # after the two header lines
    np.testing.assert_array_equal(lf.polys[0], [937, 913, 921, 912, 923, 874, 940, 875])


def test_real_tile_keeps_degenerate_polygons(shared_data):
    lf = read_labeltxt(shared_data / "dota_demo" / "labelTxt" / "P1478__1__853___962.txt")
    assert len(lf) == 295 and lf.meta == {}
    # line 2 is a zero-area polygon with difficult 2 (truncated by the split): kept, as the devkit does
    assert lf.lines[1] == 2 and lf.difficult[1] == 2
    np.testing.assert_array_equal(lf.polys[1], [1, 187, 1, 187, 1, 219, 1, 219])


def test_optional_difficult_blank_lines_and_line_numbers(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("gsd:null\n\n0 0 4 0 4 2 0 2 plane\n  \n1 1 5 1 5 3 1 3 ship 1\r\n")
    lf = read_labeltxt(p)
    assert lf.names == ["plane", "ship"]
    assert lf.difficult.tolist() == [0, 1] and lf.difficult.dtype == np.int64
    assert lf.lines.tolist() == [3, 5]
    assert lf.meta == {"gsd": "null"}


def test_empty_labeltxt(tmp_path):
    p = tmp_path / "e.txt"
    p.write_text("")
    lf = read_labeltxt(p)
    assert lf.polys.shape == (0, 8) and lf.names == [] and lf.difficult.shape == (0,)


@pytest.mark.parametrize(
    "bad, why",
    [
        ("0 0 4 0 4 2 0 2", "9 or 10 fields"),
        ("0 0 4 0 4 2 0 2 plane 0 extra", "9 or 10 fields"),
        ("0 0 4 x 4 2 0 2 plane 0", "non-numeric"),
        ("0 0 4 0 4 2 0 2 plane hard", "difficult"),
    ],
)
def test_malformed_label_line_names_file_and_line(tmp_path, bad, why):
    p = tmp_path / "P9.txt"
    p.write_text(f"imagesource:x\n0 0 1 0 1 1 0 1 ship 0\n{bad}\n")
    with pytest.raises(InputError) as e:
        read_labeltxt(p)
    assert e.value.line == 3 and e.value.path == str(p)
    assert "P9.txt:3:" in str(e.value) and why in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_labeltxt(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_task1(tmp_path / "nope.txt")


finite = st.floats(-1e5, 1e5, allow_nan=False, allow_infinity=False)
name = st.sampled_from(["plane", "small-vehicle", "ground-track-field", "x"])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.lists(finite, min_size=8, max_size=8), name, st.integers(0, 2)), max_size=6))
def test_labeltxt_round_trip_is_exact(tmp_path_factory, objs):
    p = tmp_path_factory.mktemp("rt") / "r.txt"
    polys = np.array([o[0] for o in objs], np.float64).reshape(-1, 8)
    write_labeltxt(p, polys, [o[1] for o in objs], [o[2] for o in objs], meta={"imagesource": "GoogleEarth"})
    lf = read_labeltxt(p)
    np.testing.assert_array_equal(lf.polys, polys)  # exact: floats written in repr form
    assert lf.names == [o[1] for o in objs] and lf.difficult.tolist() == [o[2] for o in objs]
    assert lf.meta == {"imagesource": "GoogleEarth"}


def test_write_labeltxt_rejects_spaces_in_names(tmp_path):
    with pytest.raises(ValueError, match="whitespace"):
        write_labeltxt(tmp_path / "a.txt", np.zeros((1, 8)), ["small vehicle"], [0])


def test_read_real_task1(shared_data):
    ids, scores, polys = read_task1(
        shared_data / "dota_eval_example" / "result_classname" / "Task1_harbor.txt"
    )
    assert len(ids) == 55 and scores.shape == (55,) and polys.shape == (55, 8)
    assert ids[0] == "P0019" and scores[0] == 0.64
    np.testing.assert_array_equal(polys[0], [2390, 566, 2381, 380, 2439, 377, 2448, 563])


def test_task1_round_trip_both_input_forms(tmp_path):
    rng = np.random.default_rng(0)
    polys = rng.uniform(0, 1000, (5, 8))
    scores = rng.uniform(0, 1, 5)
    ids = ["P0001", "P0002", "P0001", "P0003__1__0___0", "P0002"]
    paths = write_task1(
        tmp_path,
        {
            "small vehicle": (ids, scores, polys),
            "ship": [(i, s, p) for i, s, p in zip(ids, scores, polys)],
            "plane": ([], [], []),
        },
    )
    assert sorted(p.name for p in paths) == ["Task1_plane.txt", "Task1_ship.txt", "Task1_small-vehicle.txt"]
    for name in ("Task1_small-vehicle.txt", "Task1_ship.txt"):
        rids, rscores, rpolys = read_task1(tmp_path / name)
        assert rids == ids
        np.testing.assert_array_equal(rscores, scores)
        np.testing.assert_array_equal(rpolys, polys)
    rids, rscores, rpolys = read_task1(tmp_path / "Task1_plane.txt")
    assert rids == [] and rscores.shape == (0,) and rpolys.shape == (0, 8)
    assert task1_filename("ground track field") == "Task1_ground-track-field.txt"


@pytest.mark.parametrize(
    "bad, why",
    [
        ("P1 0.9 0 0 1 0 1 1 0", "10 fields"),
        ("P1 high 0 0 1 0 1 1 0 1", "non-numeric"),
        ("P1 0.9 0 0 1 0 1 1 0 y", "non-numeric"),
    ],
)
def test_malformed_task1_line_names_file_and_line(tmp_path, bad, why):
    p = tmp_path / "Task1_ship.txt"
    p.write_text(f"P1 0.5 0 0 1 0 1 1 0 1\n\n{bad}\n")
    with pytest.raises(InputError) as e:
        read_task1(p)
    assert e.value.line == 3 and "Task1_ship.txt:3:" in str(e.value) and why in str(e.value)
