"""Command options (obbslim.options): one dataclass per command gives the parser, the Python call, the
stored record and the printed command, consistently."""

from __future__ import annotations

import argparse

import pytest

from obbslim.errors import ObbslimError
from obbslim.options import CompressConfig, DistillConfig, PruneConfig, SparseTrainConfig, TrainConfig


def parse(cls, argv, **kw):
    p = argparse.ArgumentParser()
    cls.add_arguments(p, **kw)
    return cls.from_args(p.parse_args(argv))


def test_parser_defaults_are_the_fields_defaults():
    assert parse(SparseTrainConfig, []) == SparseTrainConfig()
    assert parse(DistillConfig, [], exclude=("model",)) == DistillConfig()
    assert parse(CompressConfig, []) == CompressConfig()


def test_flags_negations_and_renamed_options():
    c = parse(
        SparseTrainConfig,
        [
            "--no-amp",
            "--time",
            "0.5",
            "--resume",
            "--stop-after",
            "3",
            "--sparsity-schedule",
            "linear",
            "--exist-ok",
        ],
    )
    assert (c.amp, c.time_limit, c.resume, c.stop_after, c.sparsity_schedule, c.exist_ok) == (
        False,
        0.5,
        True,
        3,
        "linear",
        True,
    )
    with pytest.raises(SystemExit):  # choices come from the field
        parse(SparseTrainConfig, ["--sparsity-weighting", "params"])
    with pytest.raises(SystemExit):  # exactly one pruning criterion
        parse(PruneConfig, ["--weights", "a.pt", "--out", "b.pt", "--ratio", "0.5", "--threshold", "0.1"])
    assert (
        parse(PruneConfig, ["--weights", "a.pt", "--out", "b.pt", "--ratio", "0.5", "--no-fold"]).fold
        is False
    )


def test_auto_or_a_number():
    """--kd-output takes 'auto' (the default) or a number >= 0; anything else names the flag."""
    assert DistillConfig().kd_output == "auto"
    assert parse(DistillConfig, ["--kd-output", "auto"], exclude=("model",)).kd_output == "auto"
    assert parse(DistillConfig, ["--kd-output", "0.5"], exclude=("model",)).kd_output == 0.5
    assert DistillConfig(kd_output=0).kd_output == 0
    for bad, shown in ((-1.0, "-1"), ("often", "'often'"), (float("nan"), "nan")):
        with pytest.raises(ObbslimError, match=f"--kd-output must be 'auto' or >= 0, got {shown}"):
            DistillConfig(kd_output=bad)
    with pytest.raises(SystemExit):
        parse(DistillConfig, ["--kd-output", "often"], exclude=("model",))
    cmd = DistillConfig.command("obbslim distill", {"kd_output": 1.0})
    assert cmd == "obbslim distill --kd-output 1.0"


def test_output_terms_parse_and_print():
    """--kd-output-terms takes auto (the default) or some of the four output terms, and prints back."""
    assert DistillConfig().kd_output_terms == ("auto",)
    got = parse(DistillConfig, ["--kd-output-terms", "theta", "cls"], exclude=("model",))
    assert list(got.kd_output_terms) == ["theta", "cls"]
    with pytest.raises(SystemExit):
        parse(DistillConfig, ["--kd-output-terms", "angle"], exclude=("model",))
    cmd = DistillConfig.command("obbslim distill", {"kd_output": 1.0, "kd_output_terms": ("theta",)})
    assert cmd == "obbslim distill --kd-output 1.0 --kd-output-terms theta"


def test_command_line_round_trips_through_the_parser():
    args = dict(
        data="d.yaml",
        model="m.pt",
        epochs=3,
        sparsity=1e-3,
        sparsity_weighting=None,
        noautoanchor=True,
        amp=False,
        hyp="/a b/h.yaml",
        device=None,
        verbose=False,
        exist_ok=True,
    )
    cmd = SparseTrainConfig.command("obbslim train", args)
    assert cmd == (
        "obbslim train --data d.yaml --model m.pt --epochs 3 --sparsity 0.001 --noautoanchor --no-amp "
        "--hyp '/a b/h.yaml' --exist-ok"
    )
    import shlex

    back = parse(SparseTrainConfig, shlex.split(cmd)[2:])
    assert back == SparseTrainConfig.of(
        **{k: v for k, v in args.items() if k not in ("verbose", "sparsity_weighting", "device")}
    )


def test_python_calls_positional_config_and_errors():
    c = DistillConfig.of("s.pt", "t.pt", "d.yaml", 5, kd_temp=2.0)
    assert (c.student, c.teacher, c.data, c.epochs, c.kd_temp, c.project) == (
        "s.pt",
        "t.pt",
        "d.yaml",
        5,
        2.0,
        "runs/distill",
    )
    assert (
        TrainConfig.of(c) is not c and type(TrainConfig.of(c)) is DistillConfig
    )  # a subclass keeps its class
    assert TrainConfig.of(c, epochs=7).epochs == 7 and TrainConfig.of(c, epochs=7).kd_temp == 2.0
    with pytest.raises(ObbslimError, match="unknown option"):
        TrainConfig.of(sparsity=1e-3)  # the engine has no sparsity: obbslim.prune.sparsity.sparse_train has
    with pytest.raises(ObbslimError, match="given twice"):
        TrainConfig.of("d.yaml", data="e.yaml")


def test_records_of_the_first_release_load():
    """train_args as the first release stored them: sparsity flat, distillation under extra_args."""
    old = {
        "data": "d.yaml",
        "model": "s.pt",
        "epochs": 4,
        "imgsz": 64,
        "batch": 2,
        "device": "",
        "workers": 0,
        "hyp": None,
        "project": "runs/distill",
        "name": "exp",
        "exist_ok": False,
        "resume": None,
        "seed": 0,
        "val_every": 1,
        "patience": 100,
        "noval": False,
        "noautoanchor": True,
        "noplots": True,
        "amp": True,
        "channels_last": False,
        "sync_bn": False,
        "stop_after": 1,
        "time_limit": None,
        "verbose": False,
        "sparsity": 0.01,
        "sparsity_schedule": "linear",
        "sparsity_bias": False,
        "sparsity_weighting": "none",
        "extra_args": {
            "distill": {
                "teacher": "/t.pt",
                "student": "s.pt",
                "kd_output": 1.0,
                "kd_feature": 2.0,
                "kd_temp": 2.0,
                "kd_feature_type": "mimic",
                "kd_feature_temp": 1.0,
                "kd_cls": "bce",
                "kd_box_thresh": 0.5,
                "kd_gains": {},
            }
        },
    }
    t = TrainConfig.from_record(old)
    assert t.epochs == 4 and t.stop_after == 1 and not hasattr(t, "sparsity")
    s = SparseTrainConfig.from_record(old)
    assert (s.sparsity, s.sparsity_schedule) == (0.01, "linear")
    d = DistillConfig.from_record(old)
    assert (d.teacher, d.kd_feature, d.kd_feature_type, d.sparsity) == ("/t.pt", 2.0, "mimic", 0.01)
    assert DistillConfig.from_record(d.to_record()) == d
    assert "extra_args" not in d.to_record() and "resume" in d.to_record()
    assert "resume" not in CompressConfig().to_record() and "exist_ok" not in CompressConfig().to_record()
