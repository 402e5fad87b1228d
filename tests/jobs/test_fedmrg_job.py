"""End to end: `nvflare simulator` on a 2-site, 2-round variant of jobs/fedmrg with the tiny built-in models.

The variant is written by ``fedmrg job variant`` (the documented way to change a job); it carries ``app/custom/`` like
the base job, so FLARE builds the test-only wire recorder of ``tests/fl/sim_plugins`` (on ``PYTHONPATH``) with no
allow-list step. ``-t 1`` makes the simulator recreate each client process between tasks, so round 1 can only use a
site's specialized adapter by reloading it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fedmrg.fl.state_files import load_state
from fedmrg.job import TINY_MODEL_OVERRIDES, simulator_command, write_variant
from fedmrg.paths import REPO_ROOT

SITES = ["site-1", "site-2"]
PLUGINS = Path(REPO_ROOT) / "tests" / "fl" / "sim_plugins"
RECORDER = "wire_recorder.WireRecorder"
TINY = TINY_MODEL_OVERRIDES
SYNTHETIC = {"num_studies": 40, "sites": 2, "unseen_sites": 0, "image_size": 32, "seed": 0}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _add_recorder_drop_cross_site(job: Path, out_dir: Path) -> None:
    server = job / "app" / "config" / "config_fed_server.json"
    cfg = json.loads(server.read_text())
    cfg["workflows"] = [w for w in cfg["workflows"] if w["id"] != "cross_site_validate"]  # -t 1: a process per task
    server.write_text(json.dumps(cfg))
    path = job / "app" / "config" / "config_fed_client.json"
    cfg = json.loads(path.read_text())
    recorder = {"path": RECORDER, "args": {"out_dir": str(out_dir)}}
    tasks = ["train", "validate", "submit_model"]
    cfg["task_result_filters"] = [{"tasks": tasks, "filters": [recorder]}]
    cfg["task_data_filters"] = [{"tasks": tasks, "filters": [recorder]}]
    path.write_text(json.dumps(cfg))


@pytest.mark.slow
def test_fedmrg_job_two_sites_two_rounds(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMRG_CACHE", str(tmp_path / "cache"))  # the tiny models and the data are built here
    sets = [
        "rounds=2",
        "min_clients=2",
        f"learner.overrides={json.dumps(TINY)}",
        f"learner.synthetic={json.dumps(SYNTHETIC)}",
        "learner.local_steps=2",
        "learner.validate_max_studies=2",
        # the recorder replaces the client's filters (codec ones included): float32 both ways, so what it records is
        # what the learner sent (the codecs through the simulator: tests/fl/test_wire_codec_simulator.py)
        "wire.up=float32",
        "wire.down=float32",
    ]
    job = write_variant(Path(REPO_ROOT) / "jobs" / "fedmrg", tmp_path / "fedmrg-test", sets)
    _add_recorder_drop_cross_site(job, tmp_path / "wire")
    ws = tmp_path / "ws"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"
    cmd = simulator_command(job, ws, sites=2, threads=1)
    # 170-250 s on 2 cores (a fresh client process per task), more beside a second pytest worker
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    from fedmrg.report.fl_job_learner import JobFedMRGLearner

    learner = JobFedMRGLearner(overrides=json.loads(json.dumps(TINY)) | {"training": TINY["training"] | {"rounds": 2}})
    keys = sorted(learner.shared_keys())
    init = learner.initial_shared_state()
    assert keys and not any(k.startswith("specialized.") for k in keys)

    # the global model changed from round 0 and holds exactly the shared keys
    app = ws / "server" / "simulate_job" / "app_server"
    final, meta = load_state(app / "FL_global_model.safetensors")
    assert sorted(final) == keys and meta["round"] == "1"
    assert any(not np.allclose(final[k], init[k]) for k in keys)

    for site in SITES:
        wire = _jsonl(tmp_path / "wire" / f"{site}.jsonl")
        ups = [r for r in wire if r["direction"] == "up" and r["task"] == "train"]
        # every upload: WEIGHT_DIFF, exactly the shared keys, nothing of the specialized adapter
        assert [r["round"] for r in ups] == [0, 1]
        for r in ups:
            assert (r["kind"], r["keys"], r["dtypes"], r["rc"]) == ("WEIGHT_DIFF", keys, ["float32"], "OK")
            assert not any("specialized" in k for k in r["keys"])
        # the specialized adapter S2 was saved and, in the fresh process of round 1, reloaded
        priv = ws / site / "simulate_job" / f"app_{site}" / "fedmrg_private" / "private"
        saved = list(priv.glob("*.safetensors"))
        assert saved, f"{site}: no private state in {priv}"
        from safetensors.numpy import load_file

        assert all(k.startswith("specialized.") for k in load_file(str(saved[0])))
        assert "(saved after round 0)" in (ws / site / "log.txt").read_text()

    summary = json.loads((app / "summary" / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    for r in summary["rounds"]:
        assert set(r["sites"]) == set(SITES) and all(s["accepted"] for s in r["sites"].values())
        assert all(math.isfinite(r["val"][m]) for m in ("bleu4", "rouge_l", "ce_f1"))
        assert math.isfinite(r["train"]["g/total"]) and r["param_bytes_up"] == 2 * sum(v.nbytes for v in init.values())
    assert (app / "summary" / "summary.md").is_file() and (app / "summary" / "summary.png").is_file()
