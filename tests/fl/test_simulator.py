"""End to end: `nvflare simulator` on jobs/toy (2 sites), checking what crossed the wire and what was written.

The simulator runs in a subprocess (it starts its own client processes and logging). A test-only filter,
``tests/fl/sim_plugins/wire_recorder.py``, records every message a client sent and received; FLARE 2.9 builds only
allow-listed classes, so the workspace's ``local/resources.json`` lists our package and the recorder.
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
from fedmrg.fl.toy_learner import EVENTS_FILE, ToyLearner
from fedmrg.job import simulator_command
from fedmrg.paths import REPO_ROOT

SITES = ["site-1", "site-2"]
TOY_ARGS = {"in_features": 4, "hidden": 6, "num_train": 32, "num_val": 16, "local_steps": 10, "bank_size": 3, "seed": 0}
PLUGINS = Path(__file__).parent / "sim_plugins"
# the exact classes of jobs/toy besides our package (the list replaces FLARE's default one)
ALLOW = [
    "fedmrg.fl.",
    "nvflare.app_common.shareablegenerators.full_model_shareable_generator.FullModelShareableGenerator",
    "nvflare.app_common.widgets.intime_model_selector.IntimeModelSelector",
    "nvflare.app_common.workflows.cross_site_model_eval.CrossSiteModelEval",
    "wire_recorder.WireRecorder",
]


def _edit(path: Path, fn) -> None:
    cfg = json.loads(path.read_text())
    fn(cfg)
    path.write_text(json.dumps(cfg, indent=2))


def _make_job(
    tmp: Path, *, num_rounds: int, toy_args: dict, cross_site: bool, state_dir: str = "", private_dir: str = "",
    result_filters: tuple[dict, ...] = (),
) -> Path:
    job = tmp / "job"
    shutil.rmtree(job, ignore_errors=True)
    shutil.copytree(Path(REPO_ROOT) / "jobs" / "toy", job)
    rec_dir = str(tmp / "wire")

    def server(cfg):
        for c in cfg["components"]:
            if c["id"] == "persistor":
                c["args"] |= {"learner_args": toy_args, "state_dir": state_dir}
        sag = cfg["workflows"][0]
        sag["args"]["num_rounds"] = num_rounds
        if not cross_site:
            cfg["workflows"] = [sag]

    def client(cfg):
        cfg["executors"][0]["executor"]["args"] |= {"learner_args": toy_args, "private_dir": private_dir}
        recorder = {"path": "wire_recorder.WireRecorder", "args": {"out_dir": rec_dir}}
        tasks = ["train", "validate", "submit_model", "statistics"]
        cfg["task_result_filters"] = [{"tasks": tasks, "filters": [*result_filters, recorder]}]
        cfg["task_data_filters"] = [{"tasks": tasks, "filters": [recorder]}]

    _edit(job / "app" / "config" / "config_fed_server.json", server)
    _edit(job / "app" / "config" / "config_fed_client.json", client)
    return job


def _simulate(
    job: Path, ws: Path, *, threads: int = 2, timeout: int = 480, sites: int = 2, env: dict | None = None
) -> subprocess.CompletedProcess:
    (ws / "local").mkdir(parents=True, exist_ok=True)
    (ws / "local" / "resources.json").write_text(json.dumps({"class_allow_list": ALLOW}))
    env = dict(os.environ, **(env or {}), PYTHONPATH=os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]))
    cmd = simulator_command(job, ws, sites=sites, threads=threads)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _server_log(ws: Path) -> str:
    return (ws / "server" / "log.txt").read_text()


@pytest.mark.slow
def test_simulator_two_sites_two_rounds(tmp_path):
    job = _make_job(tmp_path, num_rounds=2, toy_args=TOY_ARGS, cross_site=True)
    ws = tmp_path / "ws"
    proc = _simulate(job, ws)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    app = ws / "server" / "simulate_job" / "app_server"
    keys = ToyLearner(**TOY_ARGS).shared_keys()

    # the global model changed, holds exactly the shared keys, float32, from round 1
    final, meta = load_state(app / "FL_global_model.safetensors")
    init = ToyLearner(**TOY_ARGS).initial_shared_state()
    assert sorted(final) == keys and meta["round"] == "1"
    assert all(v.dtype == np.float32 for v in final.values())
    assert not np.allclose(final["shared.weight"], init["shared.weight"])

    for site in SITES:
        wire = _jsonl(tmp_path / "wire" / f"{site}.jsonl")
        ups = [r for r in wire if r["direction"] == "up" and r["task"] == "train"]
        downs = [r for r in wire if r["direction"] == "down" and r["task"] == "train"]
        # every upload: a WEIGHT_DIFF with exactly the shared keys, float32, weighted by the sample count
        assert [r["round"] for r in ups] == [0, 1]
        for r in ups:
            assert (r["kind"], r["keys"], r["dtypes"], r["num_steps"]) == ("WEIGHT_DIFF", keys, ["float32"], 32)
            assert "fedmrg.extra" in r["meta_keys"] and r["rc"] == "OK"
        # round 1 brought the other site's bank features, never its own
        other = [s for s in SITES if s != site]
        assert [r["peer_extra_sites"] for r in downs] == [{}, {"bank": other}]
        # cross-site: the site submitted its model and validated the server's and every site's
        assert any(r["task"] == "submit_model" and r["keys"] == keys for r in wire if r["direction"] == "up")
        assert sum(r["task"] == "validate" and r["direction"] == "up" for r in wire) == 4

        # private state persisted in the site's run folder after round 1
        priv = ws / site / "simulate_job" / f"app_{site}" / "fedmrg_private"
        _, pmeta = load_state(priv / "private" / "toy_private.safetensors")
        assert pmeta["rounds_trained"] == "2"
        assert json.loads((priv / "progress.json").read_text())["last_round"] == 1

    summary = json.loads((app / "summary" / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    for r in summary["rounds"]:
        assert set(r["sites"]) == set(SITES) and all(s["accepted"] for s in r["sites"].values())
        assert np.isfinite(r["train"]["loss"]) and np.isfinite(r["val"]["r2"])
        assert r["bytes_up"] > r["param_bytes_up"] == 2 * 4 * sum(v.size for v in init.values())
    assert summary["rounds"][1]["bytes_down"] > summary["rounds"][0]["bytes_down"]  # the relayed banks
    assert summary["best"]["key_metric"] == "r2"
    assert set(summary["cross_site"]) == set(SITES)
    assert set(summary["cross_site"]["site-1"]) == {"SRV_FL_global_model", "SRV_best_FL_global_model", *SITES}
    assert all(
        np.isfinite(v) for by_model in summary["cross_site"].values() for m in by_model.values() for v in m.values()
    )
    assert (app / "summary" / "summary.md").is_file() and (app / "summary" / "summary.png").stat().st_size > 10_000
    assert (ws / "server" / "simulate_job" / "tb_events" / "site-1").is_dir()


@pytest.mark.slow
def test_simulator_resume_after_a_crash(tmp_path):
    keep = tmp_path / "keep"
    state_dir, private_dir = str(keep / "server"), str(keep / "{site}")
    crashing = TOY_ARGS | {"fail_sites": SITES, "fail_round": 1}
    ws = tmp_path / "ws"

    # run 1: round 0 succeeds, every site fails in round 1 -> the server stops the run, naming the sites
    job = _make_job(
        tmp_path, num_rounds=3, toy_args=crashing, cross_site=False, state_dir=state_dir, private_dir=private_dir
    )
    _simulate(job, ws, timeout=480)
    _, meta = load_state(keep / "server" / "FL_global_model.safetensors")
    assert meta["round"] == "0"
    # the first site to fail ends the round (min_clients valid updates can no longer arrive), not aggregated, and the
    # job stops (round_retries 0); the site's log names site, task, round
    failed = [
        s for s in SITES if f"site {s}, task 'train', round 1: learner failed" in (ws / s / "log.txt").read_text()
    ]
    assert failed
    assert "injected failure" in (ws / failed[0] / "log.txt").read_text()
    log = _server_log(ws)
    assert any(f"round 1: site {s} replied EXECUTION_EXCEPTION" in log for s in failed)
    assert "round 1: NOT aggregated: 0 valid update(s) [], fewer than min_clients=2" in log

    # run 2 (the simulator wipes its workspace): continues at round 1 with the saved model and private state
    job = _make_job(
        tmp_path, num_rounds=3, toy_args=TOY_ARGS, cross_site=False, state_dir=state_dir, private_dir=private_dir
    )
    proc = _simulate(job, ws, timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming training at round 1 (rounds 1..2)" in _server_log(ws)
    _, meta = load_state(keep / "server" / "FL_global_model.safetensors")
    assert meta["round"] == "2"
    for site in SITES:
        events = _jsonl(ws / site / "simulate_job" / f"app_{site}" / EVENTS_FILE)
        loads = [e for e in events if e["event"] == "load_private"]
        trains = [e for e in events if e["event"] == "train"]
        assert loads and loads[0]["rounds_trained"] == 1  # the private head of round 0 was reloaded
        assert [e["round"] for e in trains] == [1, 2] and trains[-1]["rounds_trained"] == 3
    summary = json.loads((ws / "server" / "simulate_job" / "app_server" / "summary" / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]


@pytest.mark.slow
def test_failing_sites_are_named_in_the_server_log_and_the_rounds_go_on(tmp_path):
    """3 sites, min_clients 1: site-3's data folder is missing (every task fails), site-2 returns NaN in round 1."""
    toy = TOY_ARGS | {"nan_sites": ["site-2"], "nan_round": 1, "require_data_root": True}
    job = _make_job(tmp_path, num_rounds=3, toy_args=toy, cross_site=False)

    def min_one(cfg):  # a round may close with one result, but waits for every site that answers
        cfg["workflows"][0]["args"] |= {"min_clients": 1, "wait_time_after_min_received": 8}

    _edit(job / "app" / "config" / "config_fed_server.json", min_one)
    for site in ("site-1", "site-2"):
        (tmp_path / "data" / site).mkdir(parents=True)
    env = {"FEDMRG_DATA_ROOT": str(tmp_path / "data" / "{site}")}  # site-3's folder does not exist
    ws = tmp_path / "ws"
    proc = _simulate(job, ws, sites=3, threads=3, env=env, timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    log = _server_log(ws)
    assert "site site-3: task 'train' failed with EXECUTION_EXCEPTION" in log and "does not exist" in log
    assert "site site-2: task 'train' failed with EXECUTION_RESULT_ERROR" in log and "non-finite" in log
    summary = json.loads((ws / "server" / "simulate_job" / "app_server" / "summary" / "summary.json").read_text())
    aggregated = {r["round"]: sorted(s for s, v in r["sites"].items() if v.get("accepted")) for r in summary["rounds"]}
    assert aggregated == {
        0: ["site-1", "site-2"],
        1: ["site-1"],  # the NaN update never reached the aggregator
        2: ["site-1", "site-2"],
    }
    errors = {(e["round"], e["site"]) for e in summary["errors"]}
    assert {(0, "site-3"), (1, "site-3"), (2, "site-3"), (1, "site-2")} <= errors
    final, meta = load_state(ws / "server" / "simulate_job" / "app_server" / "FL_global_model.safetensors")
    assert meta["round"] == "2" and all(np.isfinite(v).all() for v in final.values())


@pytest.mark.slow
@pytest.mark.parametrize("announced", [False, True], ids=["learned-from-decline", "named-in-job"])
def test_an_evaluation_only_site_is_not_sent_the_train_task(tmp_path, announced):
    """site-3 is evaluation-only (role in fedmrg_site.json). Named in the workflow's ``evaluation_sites`` it never gets
    ``train``; otherwise it gets round 0's, declines it, and is skipped from round 1 on. Either way it still takes
    part in cross-site validation, and every round is aggregated from site-1 and site-2."""
    job = _make_job(tmp_path, num_rounds=3, toy_args=TOY_ARGS, cross_site=True)
    if announced:
        _edit(
            job / "app" / "config" / "config_fed_server.json",
            lambda cfg: cfg["workflows"][0]["args"].update(evaluation_sites=["site-3"]),
        )
    ws = tmp_path / "ws"
    (ws / "local").mkdir(parents=True)
    (ws / "local" / "fedmrg_site.json").write_text(json.dumps({"sites": {"site-3": {"role": "evaluate"}}}))
    proc = _simulate(job, ws, sites=3, threads=3, timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    wire = _jsonl(tmp_path / "wire" / "site-3.jsonl")
    train_downs = [r for r in wire if r["direction"] == "down" and r["task"] == "train"]
    assert len(train_downs) == (0 if announced else 1)
    assert any(r["direction"] == "up" and r["task"] == "validate" for r in wire)
    for site in ("site-1", "site-2"):
        site_wire = _jsonl(tmp_path / "wire" / f"{site}.jsonl")
        assert sum(r["direction"] == "down" and r["task"] == "train" for r in site_wire) == 3
    log = _server_log(ws)
    assert "round 2: train sent to ['site-1', 'site-2']; evaluation-only: ['site-3']" in log
    assert ("site site-3 is evaluation-only (declined train)" in log) is not announced
    summary = json.loads((ws / "server" / "simulate_job" / "app_server" / "summary" / "summary.json").read_text())
    aggregated = {r["round"]: sorted(s for s, v in r["sites"].items() if v.get("accepted")) for r in summary["rounds"]}
    assert aggregated == {r: ["site-1", "site-2"] for r in range(3)}


def _pooled_input_mean(toy_args: dict, tmp: Path) -> np.ndarray:
    from fedmrg.fl.site_config import SiteConfig

    total, count = 0.0, 0
    for site in SITES:
        learner = ToyLearner(**toy_args)
        learner.runs_statistics_round = True
        (tmp / site).mkdir(parents=True)
        learner.setup(site, str(tmp / site), SiteConfig(site=site))
        stats = learner.round_statistics({})
        total, count = total + stats["sum_x"], count + stats["count"][0]
    return total / count


@pytest.mark.slow
def test_the_statistics_round_ends_the_run_with_the_model_of_every_sites_statistics(tmp_path):
    toy = TOY_ARGS | {"statistics_round": True}
    job = _make_job(tmp_path, num_rounds=2, toy_args=toy, cross_site=True)
    ws = tmp_path / "ws"
    proc = _simulate(job, ws)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    final, meta = load_state(ws / "server" / "simulate_job" / "app_server" / "FL_global_model.safetensors")
    assert meta["round"] == "1"  # saved as the last round's model: a resumed job redoes only the statistics round
    # the server derived the final model from the sum of both sites' statistics (the pooled input mean)
    expected = -(final["shared.weight"].astype(np.float64) @ _pooled_input_mean(toy, tmp_path / "check"))
    np.testing.assert_allclose(final["shared.bias"], expected, rtol=1e-5, atol=1e-6)
    assert "statistics round: 2 sites" in _server_log(ws)
    for site in SITES:
        ups = [r for r in _jsonl(tmp_path / "wire" / f"{site}.jsonl") if r["task"] == "statistics"]
        assert [(r["direction"], r["kind"], r["keys"], r["dtypes"]) for r in ups if r["direction"] == "up"] == [
            ("up", "STATISTICS", ["count", "sum_x"], ["float64"])
        ]


@pytest.mark.slow
def test_site_level_dp_withholds_the_statistics_and_the_job_stops_without_them(tmp_path):
    toy = TOY_ARGS | {"statistics_round": True}
    dp = {"path": "fedmrg.privacy.site_dp_filter.SiteDPFilter", "args": {"enabled": True, "noise_multiplier": 1.0}}
    job = _make_job(tmp_path, num_rounds=1, toy_args=toy, cross_site=False, result_filters=(dp,))
    ws = tmp_path / "ws"
    _simulate(job, ws)
    log = _server_log(ws)
    assert "not every training site sent statistics" in log and "site-level DP: un-noised statistics" in log
    final, _ = load_state(ws / "server" / "simulate_job" / "app_server" / "FL_global_model.safetensors")
    centred = -(final["shared.weight"].astype(np.float64) @ _pooled_input_mean(toy, tmp_path / "check"))
    assert not np.allclose(final["shared.bias"], centred, atol=1e-3)  # the last round's model, not a derived one
