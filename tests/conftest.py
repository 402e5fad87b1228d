"""Shared test fixtures: the shared real-data folder (skipped with a reason when absent) and temp dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmrg.paths import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$FEDMRG_SHARED_DATA``); tests using it skip when it is absent."""
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"shared data not found at {d} (set FEDMRG_SHARED_DATA)")
    return d


@pytest.fixture(scope="session")
def iu_dir(shared_data: Path) -> Path:
    d = shared_data / "iu_xray"
    if not (d / "indiana_reports.csv").is_file():
        pytest.skip(f"IU X-ray reports not found in {d}")
    return d
