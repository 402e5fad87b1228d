"""Shared test fixtures: the shared real-data folder, and the rule for real-data tests when it is absent.

Real-data tests (marker ``shared_data``, given automatically to every test that uses the ``shared_data`` fixture) skip
with the reason when ``../shared/data`` (or ``$FEDMRG_SHARED_DATA``) is absent on a developer's machine, and FAIL when
``CI=true``: the CI machine always has the data, so a missing folder there is a broken setup, not a reason to skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedmrg.paths import shared_data_dir


def running_in_ci() -> bool:
    """``CI=true`` (GitHub Actions, GitLab CI and most CI services set it)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def missing_real_data(reason: str) -> None:
    """Skip the test with ``reason``, or fail it when running in CI."""
    if running_in_ci():
        pytest.fail(f"{reason}; CI=true, where real-data tests must run: provide the data, do not skip", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the shared data (directly or through a fixture) ``shared_data``, then run the modules
    with the most ``slow`` tests first (see :func:`slow_modules_first`)."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()) and item.get_closest_marker("shared_data") is None:
            item.add_marker(pytest.mark.shared_data)
    items[:] = slow_modules_first(items)


def slow_modules_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """``items`` grouped by module, the modules with more ``slow`` tests first; ties, and the tests inside a module,
    keep the collection order.

    With ``pytest -n 2 --dist loadscope`` (README) each module runs whole on one worker and the workers take modules in
    this order, so the long simulator and POC modules start first and the many quick modules fill the end of the run
    instead of one worker finishing a long module alone. Serially, only the order changes.
    """
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    slow = {m: sum(i.get_closest_marker("slow") is not None for i in its) for m, its in modules.items()}
    order = sorted(modules, key=lambda m: -slow[m])  # stable: ties keep the collection order
    return [item for m in order for item in modules[m]]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A ``shared_data`` test without the shared-data folder: skipped, or failed in CI."""
    if item.get_closest_marker("shared_data") is not None:
        d = shared_data_dir()
        if not d.is_dir():
            missing_real_data(f"shared data not found at {d} (set FEDMRG_SHARED_DATA)")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$FEDMRG_SHARED_DATA``); absent: skipped, or failed when ``CI=true``."""
    d = shared_data_dir()
    if not d.is_dir():
        missing_real_data(f"shared data not found at {d} (set FEDMRG_SHARED_DATA)")
    return d


@pytest.fixture(scope="session")
def iu_dir(shared_data: Path) -> Path:
    d = shared_data / "iu_xray"
    if not (d / "indiana_reports.csv").is_file():
        missing_real_data(f"IU X-ray reports not found in {d}")
    return d
