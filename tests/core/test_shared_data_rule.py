"""The rule of tests/conftest.py for real-data tests: skipped with a reason without ``../shared/data``, failed when
``CI=true``, run when the data is there. Runs pytest on a small test file with a copy of that conftest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
TESTS = """
import pytest

@pytest.mark.shared_data
def test_marked():
    pass

def test_by_fixture(shared_data):
    assert shared_data.is_dir()

def test_iu(iu_dir):
    assert (iu_dir / "indiana_reports.csv").is_file()

def test_plain():
    pass
"""


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("shared_data_rule")
    shutil.copy(CONFTEST, d / "conftest.py")
    (d / "test_real.py").write_text(TESTS)
    data = d / "data"
    (data / "iu_xray").mkdir(parents=True)
    (data / "iu_xray" / "indiana_reports.csv").write_text("uid,findings\n")
    return d


def run(suite: Path, *, data: Path, ci: str | None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"FEDMRG_SHARED_DATA": str(data)}
    if ci is not None:
        env["CI"] = ci
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--rootdir", str(suite), str(suite)],
        capture_output=True, text=True, env=env, timeout=300, cwd=suite,
    )  # fmt: skip
    return out.returncode, out.stdout + out.stderr


def test_missing_data_skips_locally_with_the_reason(suite):
    rc, out = run(suite, data=suite / "absent", ci=None)
    assert rc == 0 and "1 passed" in out and "3 skipped" in out, out
    assert "shared data not found at" in out and "absent" in out


@pytest.mark.parametrize("ci", ["true", "TRUE"])
def test_missing_data_fails_in_ci(suite, ci):
    rc, out = run(suite, data=suite / "absent", ci=ci)
    assert rc != 0 and "1 passed" in out and "3 errors" in out, out  # failed in setup: the run fails
    for name in ("marked", "by_fixture", "iu"):
        assert f"ERROR test_real.py::test_{name} - Failed: shared data not found" in out, out
    assert "CI=true, where real-data tests must run" in out


def test_present_data_runs_the_tests_in_ci(suite):
    rc, out = run(suite, data=suite / "data", ci="true")
    assert rc == 0 and "4 passed" in out, out
