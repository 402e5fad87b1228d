"""The job folders as FLARE sees them: BYOC (so `nvflare simulator` needs no allow-list step), one Python definition
of jobs/fedmrg that its committed JSON is exported from, and the code-free path for sites that refuse custom code."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedmrg.job import CUSTOM_DIR, check_job, is_byoc, write_variant
from fedmrg.paths import REPO_ROOT

JOBS = Path(REPO_ROOT) / "jobs"
JOB_FOLDERS = sorted(p for p in JOBS.iterdir() if (p / "meta.json").is_file())


def _definition():
    spec = importlib.util.spec_from_file_location("fedmrg_job_definition", JOBS / "fedmrg" / "job.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(root: Path) -> dict[str, object]:
    """Every file of a job folder but the Python definition: parsed JSON, else text."""
    out: dict[str, object] = {}
    for path in sorted(
        p for p in root.rglob("*") if p.is_file() and p.name != "job.py" and "__pycache__" not in p.parts
    ):
        text = path.read_text()
        out[str(path.relative_to(root))] = json.loads(text) if path.suffix == ".json" else text
    return out


def test_every_job_folder_is_byoc_for_flare_and_valid():
    assert {p.name for p in JOB_FOLDERS} >= {"fedmrg", "toy"}
    for job in JOB_FOLDERS:
        assert is_byoc(job), f"{job}: FLARE would enforce the class allow-list (no {CUSTOM_DIR})"
        check_job(job)  # every component's arguments are ones its class takes


def test_committed_json_is_the_export_of_the_python_definition(tmp_path):
    exported = _definition().export(tmp_path)
    assert _files(exported) == _files(JOBS / "fedmrg"), "run `python jobs/fedmrg/job.py --write-json` and commit"


def test_code_free_variant_and_export_carry_no_custom_folder(tmp_path):
    variant = write_variant(JOBS / "fedmrg", tmp_path / "plain", [], code_free=True)
    assert not (variant / CUSTOM_DIR).exists() and not is_byoc(variant)
    assert not (variant / "job.py").exists()  # the definition describes the base job, not the variant
    assert is_byoc(write_variant(JOBS / "fedmrg", tmp_path / "byoc", []))
    # FLARE's own --export flag through the recipe, code-free
    proc = subprocess.run([sys.executable, str(JOBS / "fedmrg" / "job.py"), "--export", "--export-dir", str(tmp_path / "x"),
                           "--code-free"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exported = tmp_path / "x" / "fedmrg"
    assert not is_byoc(exported)
    files = _files(exported)
    assert set(files) == {k for k in _files(JOBS / "fedmrg") if not k.startswith(str(CUSTOM_DIR))}
    assert files["meta.json"] == json.loads((JOBS / "fedmrg" / "meta.json").read_text())


@pytest.mark.slow
def test_nvflare_simulator_as_typed_on_a_fresh_workspace(tmp_path):
    """`nvflare simulator jobs/toy -w W -n 2 -t 2` from the repository root, no resources.json, no prior step."""
    ws = tmp_path / "ws"
    cmd = [sys.executable, "-m", "nvflare.cli", "simulator", "jobs/toy", "-w", str(ws), "-n", "2", "-t", "2"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=400,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (ws / "local" / "resources.json").exists()
    summary = json.loads((ws / "server/simulate_job/app_server/summary/summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert all(r["sites"]["site-1"]["accepted"] and r["sites"]["site-2"]["accepted"] for r in summary["rounds"])


@pytest.mark.slow
def test_code_free_job_is_refused_without_the_allow_list(tmp_path):
    """The trade-off: without app/custom/, FLARE enforces its default allow-list (NVFlare classes only)."""
    job = write_variant(JOBS / "toy", tmp_path / "toy", [], code_free=True)
    ws = tmp_path / "ws"
    cmd = [sys.executable, "-m", "nvflare.cli", "simulator", str(job), "-w", str(ws), "-n", "1", "-t", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    logs = proc.stdout + proc.stderr + "".join(p.read_text(errors="replace") for p in ws.rglob("log.txt"))
    assert "is not in allow_list" in logs and "fedmrg." in logs
