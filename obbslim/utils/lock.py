"""The run-folder lock: one run writes into a folder at a time.

Two runs into one folder (two ``train --exist-ok`` with the same ``--name``, a ``--resume`` while the
run still goes on) would interleave their results.csv rows and overwrite each other's checkpoints. A
run takes ``<folder>/.obbslim.lock`` for its whole duration: an advisory ``flock`` on that file, held
by the open file, which the operating system drops when the process ends however it ends (kill -9,
a crash, a power cut). The file also says who holds it (pid, host, start time, command), so a second
run stops with a message naming the holder. A lock file left by a dead run is not held by anyone: the
next run takes it over (and says so). While it holds the lock a run is the folder's only writer, so
it also removes the temporary files (``.NAME.XXXXXXXX.tmp``) an earlier run killed mid-write left.

``flock`` works on local file systems and on NFSv4; where the platform has no ``fcntl`` (Windows) the
lock is a no-op.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Callable

from obbslim.errors import RunLockedError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".obbslim.lock"
TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # what utils.io's atomic writes name their temp files


def holder_info() -> dict:
    """What this process writes into a lock it takes."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else "",
    }


def describe_holder(info: dict) -> str:
    if not info:
        return "another process (it has not written its details yet)"
    me = (
        " (this process)"
        if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname()
        else ""
    )
    cmd = f", command: {info['command']}" if info.get("command") else ""
    return f"pid {info.get('pid')}{me} on {info.get('host')}, started {info.get('started')}{cmd}"


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 65536)
        info = json.loads(data.decode("utf-8")) if data.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


class RunLock:
    """``with RunLock(folder):`` the folder is this run's; raises :class:`~obbslim.errors.RunLockedError`
    naming the holder when another live run has it. ``log`` receives the one line said when a stale
    lock is taken over; leftover temp files are removed down to ``clean_depth`` folders (0: none)."""

    def __init__(self, folder: str | Path, log: Callable[[str], None] | None = None, clean_depth: int = 2):
        self.folder = Path(folder)
        self.clean_depth = clean_depth
        self.path = self.folder / LOCK_NAME
        self.log = log
        self.fd: int | None = None
        self.previous: dict = {}  # the dead holder's details when a stale lock was taken over

    def acquire(self) -> RunLock:
        if self.fd is not None:
            raise RuntimeError(f"{self.path}: already held by this RunLock")
        self.folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return self
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _read(fd)
                os.close(fd)
                raise RunLockedError(
                    f"{self.folder} is in use by another run: {describe_holder(info)}. Wait for it to end, "
                    "or write elsewhere (another --name or --project)"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            try:  # the previous holder may have unlinked the file between our open and our flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self.fd = fd
            break
        else:
            raise RunLockedError(f"{self.path}: could not take the lock (it keeps being replaced)")
        try:
            self.previous = _read(self.fd)
            data = json.dumps(holder_info()).encode("utf-8")
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
            os.write(self.fd, data)
        except OSError as e:  # a full disk: say which file
            self.release()
            raise type(e)(e.errno, e.strerror, str(self.path)) from None
        except BaseException:
            self.release()
            raise
        if self.previous and self.log:
            self.log(f"{self.folder}: took over the lock of a run that is no longer running "
                     f"({describe_holder(self.previous)})")  # fmt: skip
        remove_temp_files(self.folder, self.clean_depth)
        return self

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            os.unlink(self.path)  # unlinked while still held: a waiting opener re-checks the inode
        except OSError:
            pass
        os.close(fd)  # drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_temp_files(folder: str | Path, depth: int = 2) -> list[Path]:
    """Remove the atomic writes' leftover temp files in ``folder`` and its sub-folders down to ``depth``
    (call only while holding the folder's lock: a live writer's temp file looks the same)."""
    removed: list[Path] = []
    if depth < 1:
        return removed
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        try:
            if e.is_file(follow_symlinks=False) and TEMP_RE.match(e.name):
                os.unlink(e.path)
                removed.append(Path(e.path))
            elif depth > 1 and e.is_dir(follow_symlinks=False):
                removed += remove_temp_files(e.path, depth - 1)
        except OSError:
            pass
    return removed
