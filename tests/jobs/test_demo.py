"""`fedmrg demo` end to end on tiny settings: simulator run with an evaluation-only unseen site, printed tables."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fedmrg.job import TINY_MODEL_OVERRIDES

TINY = TINY_MODEL_OVERRIDES
SYNTHETIC = {"num_studies": 48, "sites": 2, "unseen_sites": 1, "image_size": 32, "seed": 0}


@pytest.mark.slow
def test_demo_runs_cross_site_with_personalized_generic_and_unseen(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMRG_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "fedmrg.cli", "demo", "--out", str(out), "--rounds", "1", "--local-steps", "2",
           "--set", "min_clients=2", "--set", f"learner.overrides={json.dumps(TINY)}",
           "--set", f"learner.synthetic={json.dumps(SYNTHETIC)}", "--set", "learner.validate_max_studies=2"]  # fmt: skip
    # stderr merged into stdout: the order of the lines is the order they were printed in
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:]
    # the round's row is printed while the simulator runs (before the "simulator done" line), not all at the end
    row = proc.stdout.index("\n| 0 | ")
    assert row < proc.stdout.index("simulator done in")
    assert proc.stdout.count("\n| 0 | ") == 1

    summary = json.loads((out / "workspace/server/simulate_job/app_server/summary/summary.json").read_text())
    # the unseen site was never sent the train task (the demo names it in `evaluation_sites`); the two training sites
    # were aggregated
    sites = summary["rounds"][0]["sites"]
    assert {s for s, v in sites.items() if v.get("accepted")} == {"site-1", "site-2"}
    assert "unseen-1" not in sites  # no train task down, no update up
    server_log = (out / "workspace" / "server" / "log.txt").read_text()
    assert "round 0: train sent to ['site-1', 'site-2']; evaluation-only: ['unseen-1']" in server_log
    cross = summary["cross_site"]
    assert set(cross) == {"site-1", "site-2", "unseen-1"}
    for site in ("site-1", "site-2"):
        metrics = cross[site]["SRV_FL_global_model"]
        assert {"bleu4", "ce_f1", "personalized_bleu4", "personalized_ce_f1"} <= set(metrics)
        assert all(math.isfinite(v) for v in metrics.values())
    unseen = cross["unseen-1"]["SRV_FL_global_model"]
    assert "bleu4" in unseen and not any(k.startswith("personalized_") for k in unseen)  # no specialized adapter
    assert "train declined" not in (out / "workspace" / "unseen-1" / "log.txt").read_text()
    # the printed tables name every site, the unseen one marked
    assert "| unseen-1 (unseen) |" in proc.stdout and "| site-2 |" in proc.stdout
    assert "summary.png" in proc.stdout
    # closing lines: the data folder (a link into the cache), a model folder per training site, a generate command
    data = out / "data"
    assert data.is_symlink() and (data / "manifest.json").is_file() and f"data:         {data}" in proc.stdout
    for site in ("site-1", "site-2"):
        assert (out / "models" / site).is_dir() and f"model:        {out / 'models' / site}" in proc.stdout
    assert not (out / "models" / "unseen-1").exists()
    generate = proc.stdout.split("write a report:\n", 1)[1].splitlines()[0].split()
    assert generate[:3] == ["fedmrg", "generate", "--model"] and Path(generate[3]) == out / "models" / "site-1"
    assert Path(generate[4]).is_file() and Path(generate[4]).resolve().is_relative_to(data.resolve())


def test_a_failing_preparation_stops_the_demo_with_an_error(tmp_path):
    """The built-in models and data are prepared in a child process; its failure must stop the demo, not pass."""
    from fedmrg.demo import _prefetch_in_child
    from fedmrg.errors import FedMRGError

    job = tmp_path / "job"
    (job / "app" / "config").mkdir(parents=True)  # no config_fed_client.json: the child cannot read the learner
    with pytest.raises(FedMRGError, match="exit code 1"):
        _prefetch_in_child(job)


@pytest.mark.slow
def test_the_demo_with_head_calibration_ends_with_the_calibrated_head(tmp_path, monkeypatch):
    """`fedmrg demo --set learner.overrides.training.head_calibration=lda`: the job's statistics round refits the
    head of the final global model, which the exported models carry."""
    import numpy as np

    from fedmrg.inference.sources import open_source
    from fedmrg.report.head_calibration import ABSENT_STATE_BIAS

    monkeypatch.setenv("FEDMRG_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "fedmrg.cli", "demo", "--out", str(out), "--rounds", "1", "--local-steps", "2",
           "--set", "min_clients=2", "--set", f"learner.overrides={json.dumps(TINY)}",
           "--set", "learner.overrides.training.head_calibration=lda",
           "--set", f"learner.synthetic={json.dumps(SYNTHETIC)}", "--set", "learner.validate_max_studies=2"]  # fmt: skip
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "statistics round: 2 sites" in (out / "workspace" / "server" / "log.txt").read_text()
    bias = open_source(out / "models" / "site-1").shared_state()["diagnosis_head.linear.bias"]
    # a head fitted from statistics: states no training study had are never predicted (a trained head's biases are
    # never -1e4)
    bias = bias.detach().numpy() if hasattr(bias, "detach") else np.asarray(bias)
    assert (bias == np.float32(ABSENT_STATE_BIAS)).any()
