"""End to end: `nvflare simulator` on jobs/toy with secure aggregation switched on (3 sites, 2 rounds).

A test-only filter records each site's true delta (before the mask filter) and its masked upload (after it), so the
test can recompute the plain FedAvg and compare it with the model the server decoded from masked uploads only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fedmrg.fl.state_files import load_state
from fedmrg.fl.toy_learner import ToyLearner
from fedmrg.job import prepare_workspace, simulator_command
from fedmrg.paths import REPO_ROOT
from fedmrg.privacy.secure_aggregation import fixed_point
from fedmrg.privacy.secure_aggregation.job_variant import MASK_FILTER, enable_in_job

SITES = ["site-1", "site-2", "site-3"]
TOY = {"in_features": 16, "hidden": 64, "num_train": 32, "num_val": 16, "local_steps": 5, "seed": 0}
MAX_WEIGHT, CLIP = 64, 10.0
PLUGINS = Path(__file__).parent / "sim_plugins"


def _edit(path: Path, fn) -> None:
    cfg = json.loads(path.read_text())
    fn(cfg)
    path.write_text(json.dumps(cfg, indent=2))


def _make_job(tmp: Path, toy: dict, *, min_clients: int, wait: int) -> Path:
    job = tmp / "job"
    shutil.copytree(Path(REPO_ROOT) / "jobs" / "toy", job)
    cfg = job / "app" / "config"

    def server(c):
        c["workflows"] = c["workflows"][:1]  # no cross-site evaluation
        c["workflows"][0]["args"] |= {"num_rounds": 2, "min_clients": min_clients, "wait_time_after_min_received": wait}
        next(x for x in c["components"] if x["id"] == "persistor")["args"]["learner_args"] = toy

    _edit(cfg / "config_fed_server.json", server)
    _edit(cfg / "config_fed_client.json", lambda c: c["executors"][0]["executor"]["args"].update(learner_args=toy))
    enable_in_job(job, {"clip_norm": CLIP, "max_weight": MAX_WEIGHT})

    def recorders(c):
        group = next(g for g in c["task_result_filters"] if g["tasks"] == ["train"])
        rec = "delta_recorder.DeltaRecorder"
        plain = {"path": rec, "args": {"out_dir": str(tmp / "rec"), "stage": "plain"}}
        masked = {"path": rec, "args": {"out_dir": str(tmp / "rec"), "stage": "masked"}}
        assert group["filters"][-1]["path"] == MASK_FILTER
        group["filters"] = [*group["filters"][:-1], plain, group["filters"][-1], masked]

    _edit(cfg / "config_fed_client.json", recorders)
    return job


def _simulate(job: Path, ws: Path) -> subprocess.CompletedProcess:
    prepare_workspace(job, ws, extra=["delta_recorder.DeltaRecorder"])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]))
    cmd = simulator_command(job, ws, sites=3)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)


def _plain_fedavg(rec: Path, r: int, sites: list[str]) -> dict[str, np.ndarray]:
    deltas = {s: dict(np.load(rec / s / f"plain_{r}.npz")) for s in sites}
    weights = {s: min(json.loads((rec / s / f"plain_{r}.json").read_text())["weight"], MAX_WEIGHT) for s in sites}
    total = sum(weights.values())
    return {k: sum(weights[s] * deltas[s][k].astype(np.float64) for s in sites) / total for k in deltas[sites[0]]}


def _check_final_model(
    ws: Path, rec: Path, survivors_by_round: list[list[str]], initial: dict | None = None, clip: float = CLIP
) -> None:
    initial = initial if initial is not None else ToyLearner(**TOY).initial_shared_state()
    final, meta = load_state(ws / "server" / "simulate_job" / "app_server" / "FL_global_model.safetensors")
    expected = {k: v.astype(np.float64) for k, v in initial.items()}
    for r, sites in enumerate(survivors_by_round):
        for k, v in _plain_fedavg(rec, r, sites).items():
            expected[k] += v
    bound = len(survivors_by_round) * fixed_point.error_bound(fixed_point.fraction_bits(3, MAX_WEIGHT, clip))
    err = max(float(np.abs(final[k] - expected[k]).max()) for k in expected)
    scale = max(float(np.abs(v).max()) for v in expected.values())
    assert meta["round"] == "1"
    assert err <= bound + 4 * scale * 2**-24, (err, bound)
    moved = max(float(np.abs(final[k] - initial[k]).max()) for k in final)
    assert moved > 100 * bound  # the model did change, far beyond the fixed-point error


@pytest.mark.slow
def test_secure_aggregation_matches_plain_fedavg_in_the_simulator(tmp_path):
    job = _make_job(tmp_path, TOY, min_clients=3, wait=0)
    ws = tmp_path / "ws"
    proc = _simulate(job, ws)
    log = (ws / "server" / "log.txt").read_text()
    assert proc.returncode == 0 and "Exception in ScatterAndGather" not in log, proc.stderr[-3000:] + log[-3000:]
    assert "round 1: secure aggregation with ['site-1', 'site-2', 'site-3']" in log
    rec = tmp_path / "rec"
    _check_final_model(ws, rec, [SITES, SITES])
    for site in SITES:
        for r in (0, 1):
            plain = np.load(rec / site / f"plain_{r}.npz")
            masked = np.load(rec / site / f"masked_{r}.npz")
            assert all(masked[k].dtype == np.uint32 for k in masked)
            x = np.concatenate([plain[k].ravel() for k in sorted(plain)]).astype(np.float64)
            y = np.concatenate([masked[k].ravel() for k in sorted(masked)]).view(np.int32).astype(np.float64)
            assert abs(np.corrcoef(x, y)[0, 1]) < 5 / np.sqrt(x.size)
            meta = json.loads((rec / site / f"masked_{r}.json").read_text())
            assert "fedmrg.extra" not in meta["meta_keys"] and "fedmrg.secagg.masked" in meta["meta_keys"]
        # the round's ephemeral secrets were deleted after unmasking
        assert not list((ws / site / "simulate_job" / f"app_{site}" / "fedmrg_secagg").glob("round_*.json"))


@pytest.mark.slow
def test_a_dropout_after_key_exchange_is_recovered_in_the_simulator(tmp_path):
    toy = TOY | {"fail_sites": ["site-3"], "fail_round": 1}
    job = _make_job(tmp_path, toy, min_clients=2, wait=20)
    ws = tmp_path / "ws"
    proc = _simulate(job, ws)
    log = (ws / "server" / "log.txt").read_text()
    assert proc.returncode == 0 and "Exception in ScatterAndGather" not in log, proc.stderr[-3000:] + log[-3000:]
    assert "round 1: sites ['site-3'] dropped after the key exchange" in log
    assert "round 1: secure aggregation with ['site-1', 'site-2', 'site-3']" in log
    _check_final_model(ws, tmp_path / "rec", [SITES, ["site-1", "site-2"]])


def _simulate_recording_plain_deltas(job: Path, tmp: Path) -> Path:
    """Record each site's delta right before its mask filter (``tmp/rec``), run the simulator, check both secure
    rounds ran with all three sites; returns the workspace."""

    def recorders(c):
        group = next(g for g in c["task_result_filters"] if g["filters"][-1]["path"] == MASK_FILTER)
        plain = {"path": "delta_recorder.DeltaRecorder", "args": {"out_dir": str(tmp / "rec"), "stage": "plain"}}
        group["filters"] = [*group["filters"][:-1], plain, group["filters"][-1]]

    _edit(job / "app" / "config" / "config_fed_client.json", recorders)
    ws = tmp / "ws"
    proc = _simulate(job, ws)
    log = (ws / "server" / "log.txt").read_text()
    assert proc.returncode == 0 and "Exception in ScatterAndGather" not in log, proc.stderr[-3000:] + log[-3000:]
    assert "round 1: secure aggregation with ['site-1', 'site-2', 'site-3']" in log
    return ws


@pytest.mark.slow
def test_secure_aggregation_of_the_fedmrg_job_matches_plain_fedavg(tmp_path, monkeypatch):
    """The real jobs/fedmrg (tiny built-in models, 3 sites, 2 rounds) with secure aggregation switched on."""
    from fedmrg.job import TINY_MODEL_OVERRIDES, write_variant
    from fedmrg.report.fl_job_learner import JobFedMRGLearner

    monkeypatch.setenv("FEDMRG_CACHE", str(tmp_path / "cache"))
    clip = 1000.0  # above any delta norm of the tiny model, so the recorded plain deltas are what was aggregated
    synthetic = {"num_studies": 48, "sites": 3, "unseen_sites": 0, "image_size": 32, "seed": 0}
    sets = ["rounds=2", "min_clients=3", f"learner.overrides={json.dumps(TINY_MODEL_OVERRIDES)}",
            f"learner.synthetic={json.dumps(synthetic)}", "learner.local_steps=2", "learner.validate_max_studies=2",
            "secure_aggregation=true", f"secure_aggregation.clip_norm={clip}",
            f"secure_aggregation.max_weight={MAX_WEIGHT}"]  # fmt: skip
    job = write_variant(Path(REPO_ROOT) / "jobs" / "fedmrg", tmp_path / "job", sets)
    cfg = job / "app" / "config"
    _edit(cfg / "config_fed_server.json", lambda c: c.update(workflows=c["workflows"][:1]))  # no cross-site eval

    ws = _simulate_recording_plain_deltas(job, tmp_path)
    learner = JobFedMRGLearner(
        overrides=TINY_MODEL_OVERRIDES | {"training": TINY_MODEL_OVERRIDES["training"] | {"rounds": 2}}
    )
    _check_final_model(ws, tmp_path / "rec", [SITES, SITES], initial=learner.initial_shared_state(), clip=clip)


@pytest.mark.slow
def test_secure_aggregation_of_a_vision_job_matches_plain_fedavg(tmp_path):
    """The vision classification job (prompt generation on a small random ViT, synthetic task, 3 sites, 2 rounds) with
    secure aggregation switched on by the same tool: the server's model is the FedAvg of the sites' true deltas."""
    from fedmrg.vision.backbones import tiny_vit
    from fedmrg.vision.job import write_job
    from fedmrg.vision.learner import VisionLearner

    tiny_vit().save_pretrained(str(tmp_path / "vit"))
    args = {"task": "synthetic_cls", "method": "prompt_gen", "backbone": str(tmp_path / "vit"), "num_sites": 3,
            "rounds": 2, "local_steps": 2, "batch_size": 8, "synthetic_samples": 48}  # fmt: skip
    job = write_job(tmp_path / "job", args, min_clients=3)
    cfg = job / "app" / "config"
    _edit(cfg / "config_fed_server.json", lambda c: c.update(workflows=c["workflows"][:1]))  # no cross-site eval
    clip = 100.0  # above any delta norm here (2 steps), so the recorded plain deltas are what was aggregated
    enable_in_job(job, {"clip_norm": clip, "max_weight": MAX_WEIGHT})

    ws = _simulate_recording_plain_deltas(job, tmp_path)
    initial = VisionLearner(**args).initial_shared_state()
    _check_final_model(ws, tmp_path / "rec", [SITES, SITES], initial=initial, clip=clip)


@pytest.mark.slow
def test_a_learner_that_needs_the_statistics_round_is_refused_under_secure_aggregation(tmp_path):
    job = _make_job(tmp_path, TOY | {"statistics_round": True}, min_clients=3, wait=0)
    ws = tmp_path / "ws"
    _simulate(job, ws)
    log = (ws / "server" / "log.txt").read_text()
    assert "statistics round after training (`training.head_calibration`) would send each site's statistics" in log
    assert "secure aggregation with" not in log  # refused before the first round
