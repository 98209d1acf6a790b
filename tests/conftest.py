from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real DOTA samples beside the repo (never copied into it). Skips with a clear message if absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared DOTA samples not found at {SHARED}")
    return SHARED
