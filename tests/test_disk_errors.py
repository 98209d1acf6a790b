"""Disk full, read-only folder, permission denied, Ctrl-C and SIGTERM: one clear line naming the path,
a non-zero exit, no traceback, and no partial file left behind that looks complete (0-byte plots
included): atomic writes remove their temp file on every exit path.

Errors are injected where the operating system would raise them (``os.write`` on the temp file of an
atomic write, ``os.mkdir``, ``os.open``), since the tests run as root, where chmod does not stop writes.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from obbslim.cli import main
from obbslim.errors import describe_os_error
from obbslim.utils.io import atomic_torch_save, atomic_write_bytes
from obbslim.utils.lock import TEMP_RE

OLD = Path(__file__).resolve().parent / "fixtures" / "old_pruned_tiny.pt"
REAL_WRITE, REAL_MKDIR = os.write, os.mkdir

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd (Linux)")


def fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def fail_writes(monkeypatch, err: int | type, match: str | None = None) -> list[str]:
    """From now on, writing to an atomic write's temp file (whose target name contains ``match``)
    raises ``OSError(err)`` (or ``err()`` for an exception class): the disk fills up mid-write."""
    hits: list[str] = []

    def write(fd, data):
        base = os.path.basename(fd_path(fd))
        if TEMP_RE.match(base) and (match is None or match in base):
            hits.append(base)
            if isinstance(err, int):
                raise OSError(err, os.strerror(err))
            raise err()
        return REAL_WRITE(fd, data)

    monkeypatch.setattr(os, "write", write)
    return hits


def leftovers(root: Path) -> list[str]:
    """Temp files and empty files under ``root`` (what a failed write must not leave)."""
    def bad(p: Path) -> bool:
        return bool(TEMP_RE.match(p.name)) or (p.stat().st_size == 0 and p.suffix in (".png", ".pt", ".onnx"))

    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and bad(p))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny synthetic dataset (4 images, 64 px) and a DOTA-style folder of one image."""
    from obbslim.data.labeltxt import write_labeltxt
    from obbslim.data.synth import make_synthetic

    root = tmp_path_factory.mktemp("disk")
    data = make_synthetic(root / "ds", n_images=4, size=64, seed=0, val_frac=0.5)
    dota = root / "dota"
    (dota / "images").mkdir(parents=True)
    (dota / "labelTxt").mkdir()
    cv2.imwrite(str(dota / "images" / "P0001.png"), np.full((96, 96, 3), 100, np.uint8))
    write_labeltxt(dota / "labelTxt" / "P0001.txt", np.array([[10, 10, 40, 10, 40, 30, 10, 30.0]]), ["plane"])
    (root / "hyp.yaml").write_text("warmup_epochs: 0.0\nnbs: 2\nmosaic: 0.0\n")
    return root, data, dota


def commands(root: Path, data: Path, dota: Path, out: Path) -> dict[str, tuple[list[str], str | None, Path]]:
    """command -> (argv, the file whose write fails (None: the first one), what must not exist after)."""
    imgs = str(dota / "images")
    return {
        "detect": (["detect", "--weights", str(OLD), "--source", imgs, "--imgsz", "64", "--device", "cpu",
                    "--conf", "0.0001", "--save-dota", str(out / "task1")], "Task1_",
                   out / "task1" / "Task1_*.txt"),
        "val": (["val", "--weights", str(OLD), "--data", str(data), "--imgsz", "64", "--batch", "2",
                 "--device", "cpu", "--workers", "0", "--project", str(out), "--name", "v"], "PR_curve.png",
                out / "v" / "PR_curve.png"),
        "train": (["train", "--data", str(data), "--model", str(OLD), "--epochs", "1", "--imgsz", "64",
                   "--batch", "2", "--device", "cpu", "--workers", "0", "--hyp", str(root / "hyp.yaml"),
                   "--project", str(out), "--name", "t", "--noplots", "--noautoanchor"], "last.pt",
                  out / "t" / "weights" / "last.pt"),
        "split": (["split", str(dota), str(out / "split"), "--size", "64", "--gap", "16", "--workers", "1"],
                  None, out / "split" / "labelTxt" / "P0001__1.0__*.txt"),
        "export": (["export", "--weights", str(OLD), "--imgsz", "64", "--out", str(out / "m.onnx")], None,
                   out / "m.onnx"),
    }  # fmt: skip


@pytest.mark.parametrize("command", ["detect", "val", "train", "split", "export"])
def test_disk_full_is_one_line_and_leaves_no_partial_file(work, tmp_path, monkeypatch, capsys, command):
    """The issue's case: errno 28 ended in raw tracebacks, val left a 0-byte PR_curve.png."""
    root, data, dota = work
    argv, match, target = commands(root, data, dota, tmp_path)[command]
    torch.set_num_threads(1)
    hits = fail_writes(monkeypatch, errno.ENOSPC, match)
    rc = main(argv)
    err = capsys.readouterr().err
    assert hits, "the injected failure was never reached"
    line = [ln for ln in err.splitlines() if ln.startswith(f"obbslim {command}: error:")]
    assert rc == 1 and "Traceback" not in err and len(line) == 1, err
    failed = target.parent / hits[0][1:-13]  # .NAME.XXXXXXXX.tmp -> NAME
    assert failed.match(target.name)
    assert f"{failed}: No space left on device (the disk is full" in line[0]  # names the file
    assert not failed.exists()
    assert leftovers(tmp_path) == [] and leftovers(root) == []


@pytest.mark.parametrize(
    "err,where,text",
    [
        (errno.ENOSPC, "write", "the disk is full"),
        (errno.EDQUOT, "write", "quota"),
        (errno.EROFS, "write", "read-only"),
        (errno.EROFS, "mkdir", "read-only"),
        (errno.EACCES, "mkdir", "permission denied"),
        (errno.EPERM, "open", "not permitted"),
    ],
)
def test_each_os_error_is_one_line_naming_the_path(work, tmp_path, monkeypatch, capsys, err, where, text):
    root, data, dota = work
    out = tmp_path / "ro" / "task1"
    if where == "write":
        fail_writes(monkeypatch, err)
    elif where == "mkdir":

        def mkdir(path, mode=0o777, *a, **k):
            if str(path).startswith(str(tmp_path / "ro")):
                raise OSError(err, os.strerror(err), str(path))
            return REAL_MKDIR(path, mode, *a, **k)

        monkeypatch.setattr(os, "mkdir", mkdir)
    else:
        real_mkstemp = __import__("tempfile").mkstemp

        def mkstemp(*a, dir=None, prefix="", suffix="", **k):
            if dir is not None and str(dir).startswith(str(out)):
                raise PermissionError(err, os.strerror(err), str(Path(dir) / f"{prefix}abcd1234{suffix}"))
            return real_mkstemp(*a, dir=dir, prefix=prefix, suffix=suffix, **k)

        monkeypatch.setattr("obbslim.utils.io.tempfile.mkstemp", mkstemp)
    rc = main(["detect", "--weights", str(OLD), "--source", str(dota / "images"), "--imgsz", "64",
               "--device", "cpu", "--conf", "0.0001", "--save-dota", str(out)])  # fmt: skip
    got = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in got and len(got.strip().splitlines()) == 1
    assert os.strerror(err) in got and text in got and str(tmp_path / "ro") in got
    assert ".tmp" not in got  # the target is named, not the temp file
    assert leftovers(tmp_path) == [] and not list(tmp_path.rglob("Task1_*"))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_real_read_only_folder(work, tmp_path, capsys):
    root, data, dota = work
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc = main(["detect", "--weights", str(OLD), "--source", str(dota / "images"), "--imgsz", "64",
                   "--device", "cpu", "--save-dota", str(ro / "task1")])  # fmt: skip
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err
    assert rc == 1 and "Permission denied" in err and "Traceback" not in err


def test_an_atomic_write_that_fails_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_torch_save({"epoch": 1}, target)
    old = target.read_bytes()
    for err in (errno.ENOSPC, KeyboardInterrupt, MemoryError):  # disk full, Ctrl-C, anything else
        hits = fail_writes(monkeypatch, err)
        with pytest.raises(OSError if err == errno.ENOSPC else err) as e:
            atomic_torch_save({"epoch": 2, "w": torch.zeros(1000)}, target)
        monkeypatch.undo()
        assert hits and target.read_bytes() == old and os.listdir(tmp_path) == ["last.pt"]
        if err == errno.ENOSPC:
            assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
            hint = "(the disk is full: free some space or write elsewhere)"
            assert describe_os_error(e.value) == f"{target}: No space left on device {hint}"


def test_sigterm_mid_write_cleans_up_and_exits_143(work, tmp_path, monkeypatch, capsys):
    """SIGTERM (a scheduler's kill) is raised like Ctrl-C: the temp file is removed, the lock released."""
    root, data, dota = work

    def write(fd, data):
        if TEMP_RE.match(os.path.basename(fd_path(fd))):
            os.kill(os.getpid(), signal.SIGTERM)
        return REAL_WRITE(fd, data)

    monkeypatch.setattr(os, "write", write)
    before = signal.getsignal(signal.SIGTERM)
    rc = main(["detect", "--weights", str(OLD), "--source", str(dota / "images"), "--imgsz", "64",
               "--device", "cpu", "--conf", "0.0001", "--save-dota", str(tmp_path / "task1")])  # fmt: skip
    assert rc == 143 and "terminated" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before  # the CLI's handler is gone again
    assert leftovers(tmp_path) == [] and sorted(os.listdir(tmp_path / "task1")) == []


def test_describe_os_error_without_a_path():
    assert describe_os_error(OSError(errno.ENOSPC, "No space left on device")).startswith("No space left")
    assert describe_os_error(FileNotFoundError("x.yaml: no such file")) == "x.yaml: no such file"
    e = OSError(errno.EXDEV, os.strerror(errno.EXDEV), "/a", None, "/b")
    assert describe_os_error(e).startswith("/a -> /b: ")


def test_atomic_write_names_the_path_of_mkdir_failures(tmp_path, monkeypatch):
    def mkdir(path, mode=0o777, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))  # some file systems give no path

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(OSError) as e:
        atomic_write_bytes(tmp_path / "new" / "x.txt", b"x")
    assert e.value.errno == errno.EROFS and e.value.filename == str(tmp_path / "new" / "x.txt")
    monkeypatch.undo()
    shutil.rmtree(tmp_path, ignore_errors=True)


if sys.platform == "win32":  # pragma: no cover
    pytest.skip("POSIX only", allow_module_level=True)
