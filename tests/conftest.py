"""Shared test settings: hypothesis profiles and the path to the real data in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Feature extraction and RNN steps take milliseconds; wall-clock deadlines would flake on a loaded 2-core CI box.
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("RNNSTREAM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$RNNSTREAM_SHARED_DATA``); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set RNNSTREAM_SHARED_DATA to its path)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fsdd_dir(shared_data: Path) -> Path:
    path = shared_data / "fsdd" / "recordings"
    if not path.is_dir():
        pytest.skip(f"FSDD recordings not found at {path}")
    return path


@pytest.fixture(scope="session")
def etth1_csv(shared_data: Path) -> Path:
    path = shared_data / "ett" / "ETTh1.csv"
    if not path.is_file():
        pytest.skip(f"ETTh1 not found at {path}")
    return path
