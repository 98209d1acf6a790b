"""Atomic file writes: a crash, Ctrl-C or a full disk never leaves a half-written checkpoint, report or
plot that looks complete.

Every write goes to a temp file ``.NAME.XXXXXXXX.tmp`` in the target's folder, is flushed to disk and
renamed over the target. The temp file is removed on every exit path Python sees (an error, a full
disk, KeyboardInterrupt); one left by kill -9 or a power cut is removed by the next run that takes the
folder's lock (:mod:`obbslim.utils.lock`). An ``OSError`` (disk full, read-only, permission denied)
is re-raised with the target's path, which the CLI prints as one line.

Run folders: :func:`increment_path` picks ``exp``, ``exp2``, ...; :func:`open_run_dir` also claims the
folder (created atomically, so two runs started together get two folders) and takes its lock.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch

from obbslim.errors import ObbslimError
from obbslim.utils.lock import TEMP_RE, RunLock
from obbslim.utils.names import check_name


def _with_path(e: OSError, path: Path) -> OSError:
    """The same error (same class and errno) naming the target ``path`` when it names no file or only
    the temp file (a folder that cannot be created keeps its own name)."""
    if e.filename is not None and not TEMP_RE.match(os.path.basename(str(e.filename))):
        return e
    try:
        return type(e)(e.errno, e.strerror or str(e), str(path))
    except Exception:  # an OSError subclass with another constructor
        return e


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync'd, then renamed over."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the normal mode
            view = memoryview(data)
            while len(view):
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise _with_path(e, path) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, then rename over the target."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getbuffer())


def atomic_savefig(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """``fig.savefig`` drawn in memory, then written atomically: no 0-byte PR_curve.png on a full disk.
    The format follows the suffix (png when there is none)."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix[1:].lower() or "png", **kwargs)
    atomic_write_bytes(path, buf.getbuffer())
    return path


def atomic_imwrite(path: str | Path, img: np.ndarray, params: list[int] | tuple[int, ...] = ()) -> Path:
    """``cv2.imwrite`` that raises instead of returning False, and writes atomically."""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", img, list(params))
    if not ok:
        raise ObbslimError(f"{path}: OpenCV cannot encode an image as {path.suffix or '.png'}")
    atomic_write_bytes(path, buf.tobytes())
    return path


def run_path(project: str | Path, name: str) -> Path:
    """``project / name`` for a run folder; ``name`` must obey the name rule (``utils.names``), so
    ``--name ../../x`` cannot put a run outside ``--project``."""
    return Path(project) / check_name(name, "run name")


def increment_path(path: str | Path, exist_ok: bool = False) -> Path:
    """runs/train/exp -> runs/train/exp2, exp3, ... unless exist_ok (then the path itself). The last
    part (the run name) must obey the name rule (:mod:`obbslim.utils.names`)."""
    path = Path(path)
    check_name(path.name, "run name")
    if exist_ok or not path.exists():
        return path
    n = 2
    while (path.parent / f"{path.name}{n}").exists():
        n += 1
    return path.parent / f"{path.name}{n}"


def claim_run_dir(path: str | Path, exist_ok: bool = False) -> Path:
    """Like :func:`increment_path`, and creates the folder: without ``exist_ok`` the creation is atomic
    (``mkdir`` fails on an existing folder), so two runs started together get ``exp`` and ``exp2``."""
    path = Path(path)
    check_name(path.name, "run name")
    path.parent.mkdir(parents=True, exist_ok=True)
    if exist_ok:
        path.mkdir(exist_ok=True)
        return path
    candidate, n = path, 2
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            candidate = path.parent / f"{path.name}{n}"
            n += 1


def open_run_dir(
    path: str | Path, exist_ok: bool = False, log: Callable[[str], None] | None = None
) -> RunLock:
    """Claim a run folder (:func:`claim_run_dir`) and take its lock: ``with open_run_dir(p) as lock:``
    (``lock.folder`` is the folder). A folder another live run holds raises ``RunLockedError``."""
    return RunLock(claim_run_dir(path, exist_ok), log=log)


__all__ = [
    "RunLock",
    "atomic_imwrite",
    "atomic_savefig",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "claim_run_dir",
    "increment_path",
    "open_run_dir",
    "run_path",
]
