"""Small pieces of the training loop: seeds and RNG state, hyperparameters, signals, resume lookup."""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from obbslim.errors import ObbslimError


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; deterministic cuDNN/algorithms for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as plain data (loadable with torch.load(weights_only=True))."""
    np_state = np.random.get_state()
    state = {
        "python": _plain(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(x: Any) -> Any:
    return [_plain(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


class StopRequest:
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps, so last.pt is saved cleanly.

    A second SIGINT while stopping raises KeyboardInterrupt (the user insists).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None


def find_resume_checkpoint(resume: str | Path | bool, project: str | Path) -> Path:
    """RUN_DIR, RUN_DIR/weights or a last.pt path -> last.pt; True -> the newest last.pt in project."""
    if resume is True or resume == "":
        found = sorted(Path(project).glob("**/weights/last.pt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ObbslimError(f"--resume: no weights/last.pt found under {project}")
        return found[-1]
    path = Path(resume)
    for cand in (path, path / "last.pt", path / "weights" / "last.pt"):
        if cand.is_file():
            return cand
    raise ObbslimError(f"--resume: no checkpoint at {path} (expected a run dir or weights/last.pt)")
