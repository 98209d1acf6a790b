"""One run writes into a run folder at a time: a second run into a locked folder stops with a message
naming the holder, a lock left by a killed run is taken over, and two runs started together without
--exist-ok get two folders."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from obbslim.errors import RunLockedError
from obbslim.utils.io import claim_run_dir
from obbslim.utils.lock import LOCK_NAME, RunLock

REPO = Path(__file__).resolve().parents[1]
OLD = Path(__file__).resolve().parent / "fixtures" / "old_pruned_tiny.pt"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="advisory locks need fcntl")

HOLD = """
import sys, time
from obbslim.utils.lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


class Holder:
    """Another process that holds a folder's lock until killed (the other run)."""

    def __init__(self, folder: Path):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-c", HOLD, str(folder)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
        assert self.proc.stdout.readline().strip() == "held"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)  # no cleanup at all: the lock file stays behind
        self.proc.wait(10)


@pytest.fixture
def holder(tmp_path):
    procs = []

    def start(folder: Path) -> Holder:
        h = Holder(folder)
        procs.append(h)
        return h

    yield start
    for h in procs:
        if h.proc.poll() is None:
            h.kill()


def test_a_second_run_is_refused_with_the_holders_details(tmp_path, holder):
    run = tmp_path / "exp"
    h = holder(run)
    with pytest.raises(RunLockedError) as e:
        RunLock(run).acquire()
    msg = str(e.value)
    assert f"pid {h.proc.pid} on {socket.gethostname()}, started 20" in msg and str(run) in msg
    assert "\n" not in msg


def test_a_stale_lock_from_a_killed_run_is_taken_over(tmp_path, holder):
    run = tmp_path / "exp"
    h = holder(run)
    h.kill()
    assert (run / LOCK_NAME).exists()  # kill -9 left the file, but nobody holds it
    said = []
    with RunLock(run, log=said.append) as lock:
        assert lock.previous["pid"] == h.proc.pid
        assert said and "no longer running" in said[0] and str(h.proc.pid) in said[0]
        with pytest.raises(RunLockedError, match=r"\(this process\)"):  # not re-entrant
            RunLock(run).acquire()
    assert not (run / LOCK_NAME).exists()  # released and removed
    with RunLock(run, log=said.append):  # a clean release leaves nothing to take over
        pass
    assert len(said) == 1


def test_taking_the_lock_removes_temp_files_a_killed_write_left(tmp_path):
    run = tmp_path / "exp"
    (run / "weights").mkdir(parents=True)
    left = [run / ".results.csv.abcd1234.tmp", run / "weights" / ".last.pt.x_9y8z7w.tmp"]
    kept = [run / "weights" / "last.pt", run / "notes.tmp", run / ".hidden"]
    for p in left + kept:
        p.write_bytes(b"x")
    with RunLock(run):
        pass
    assert not any(p.exists() for p in left) and all(p.exists() for p in kept)


def test_runs_started_together_get_their_own_folders(tmp_path):
    got: list[Path] = []
    barrier = threading.Barrier(8)

    def claim():
        barrier.wait()
        got.append(claim_run_dir(tmp_path / "runs" / "exp"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in got) == sorted(["exp"] + [f"exp{i}" for i in range(2, 9)])
    assert claim_run_dir(tmp_path / "runs" / "exp", exist_ok=True) == tmp_path / "runs" / "exp"


def tiny_data(tmp_path: Path) -> Path:
    from obbslim.data.synth import make_synthetic

    return make_synthetic(tmp_path / "ds", n_images=4, size=64, seed=0, val_frac=0.25)


def test_train_into_a_locked_folder_stops_before_writing(tmp_path, holder, capsys):
    """The issue's case: two `train --exist-ok` runs with the same --project/--name both exited 0 and
    results.csv got epoch 1 twice. The second now stops at once, naming the first."""
    from obbslim.cli import main

    data = tiny_data(tmp_path)
    run = tmp_path / "runs" / "same"
    h = holder(run)
    before = sorted(os.listdir(run))
    rc = main(["train", "--data", str(data), "--model", str(OLD), "--epochs", "1", "--imgsz", "64",
               "--batch", "2", "--device", "cpu", "--workers", "0", "--project", str(tmp_path / "runs"),
               "--name", "same", "--exist-ok", "--noplots", "--noautoanchor"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"is in use by another run: pid {h.proc.pid}" in err
    assert sorted(os.listdir(run)) == before  # no weights/, args.yaml or results.csv


@pytest.mark.parametrize("command", ["val", "detect", "resume"])
def test_other_commands_into_a_locked_folder_stop(tmp_path, holder, command):
    import cv2
    import numpy as np

    from obbslim.engine.train import train
    from obbslim.eval.val import val
    from obbslim.inference.detect import detect

    run = tmp_path / "runs" / "exp"
    if command == "resume":  # a --resume while the run still goes on
        data = tiny_data(tmp_path)
        hyp = {"warmup_epochs": 0.0, "nbs": 2, "mosaic": 0.0}
        r = train(data=data, model=str(OLD), epochs=2, stop_after=1, imgsz=64, batch=2, device="cpu",
                  workers=0, hyp=hyp, project=tmp_path / "runs", verbose=False, noplots=True,
                  noautoanchor=True)  # fmt: skip
        assert not (run / LOCK_NAME).exists()  # released when the run ended
        h = holder(run)
        with pytest.raises(RunLockedError, match=f"pid {h.proc.pid}"):
            train(resume=r["last"], device="cpu", workers=0, verbose=False)
        return
    h = holder(run)
    with pytest.raises(RunLockedError, match=f"pid {h.proc.pid}"):
        if command == "val":
            val(weights=str(OLD), data=str(tmp_path / "none.yaml"), project=tmp_path / "runs", exist_ok=True)
        else:
            cv2.imwrite(str(tmp_path / "a.png"), np.zeros((64, 64, 3), np.uint8))
            detect(weights=str(OLD), source=str(tmp_path / "a.png"), imgsz=64, save_txt=True,
                   project=tmp_path / "runs", exist_ok=True, device="cpu")  # fmt: skip
    assert sorted(os.listdir(run)) == [LOCK_NAME]
    # without --exist-ok the run goes to exp2 instead, and its lock is gone when it ends
    r = detect(weights=str(OLD), source=str(tmp_path / "a.png"), imgsz=64, save_txt=True, device="cpu",
               project=tmp_path / "runs", verbose=False) if command == "detect" else None  # fmt: skip
    if r is not None:
        assert Path(r["run_dir"]).name == "exp2" and not (Path(r["run_dir"]) / LOCK_NAME).exists()
