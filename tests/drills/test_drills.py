"""Failure drills (issue 12, item 6) in ``nvflare simulator``: each run injects faults into the shared tiny job
(``conftest.py``: jobs/toy, min_clients 2) and the tests assert what the server did and what the run summary says.
The suite's total simulator time is printed at the end of the session (the figure in docs/deployment.md)."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import numpy as np
import pytest

from fedmrg.fl.state_files import load_state

pytestmark = pytest.mark.slow
SITES = ["site-1", "site-2", "site-3", "site-4", "site-5"]


def _aggregated_counts(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"aggregating (\d+) update\(s\)", log)]


@pytest.fixture(scope="module")
def faults(tmp_path_factory, request):
    """One run, five sites, three rounds, cross-site evaluation: site-4's data folder is missing and site-5's training
    data is corrupt (every task of theirs fails), site-2 returns a NaN update in round 0, site-3's process is killed
    when round 1's train task reaches it."""
    drills = request.getfixturevalue("drills")
    tmp = tmp_path_factory.mktemp("faults")
    for site in [*SITES[:3], "site-5"]:
        (tmp / "data" / site).mkdir(parents=True)
    (tmp / "data" / "site-5" / "train.npz").write_bytes(b"PK\x03\x04 truncated archive")
    kill = {"path": "kill_switch.KillSwitch", "args": {"site": "site-3", "round": 1}}
    job = drills.make_job(
        tmp,
        num_rounds=3,
        toy={"require_data_root": True, "nan_sites": ["site-2"], "nan_round": 0},
        cross_site=True,
        client_filters=[kill],
        workflow={"wait_time_after_min_received": 5},  # a straggler's reply (the NaN one) still counts
    )
    env = {"FEDMRG_DATA_ROOT": str(tmp / "data" / "{site}")}
    return drills.run("faults (5 sites)", job, tmp / "ws", sites=5, env=env)


def test_failed_and_rejected_replies_never_make_a_single_site_global_model(faults):
    """Every round aggregates exactly the two valid updates although three of five sites fail in each: an error reply
    or a rejected update does not count towards min_clients (the unit test with wait 0: tests/fl/test_honest_aggregation.py)."""
    log = faults.server_log()
    assert _aggregated_counts(log) == [2, 2, 2], faults.proc.stdout[-2000:] + log[-3000:]
    p = faults.participation()
    assert [p[r]["valid"] for r in range(3)] == [["site-1", "site-3"], ["site-1", "site-2"], ["site-1", "site-2"]]
    assert all(p[r]["aggregated"] and p[r]["targets"] == SITES for r in range(3))


def test_missing_data_folder_is_named_every_round(faults):
    absent = {(a["round"], a["site"]): a["reason"] for a in faults.summary["absent"]}
    assert "does not exist" in absent[(0, "site-4")]
    assert {(0, "site-4"), (1, "site-4"), (2, "site-4")} <= set(absent)
    assert any(e["site"] == "site-4" and "does not exist" in e["message"] for e in faults.summary["errors"])


def test_corrupt_data_is_named_with_its_file_every_round(faults):
    absent = {(a["round"], a["site"]): a["reason"] for a in faults.summary["absent"]}
    assert {(0, "site-5"), (1, "site-5"), (2, "site-5")} <= set(absent)
    assert "train.npz" in absent[(0, "site-5")] and "not readable" in absent[(0, "site-5")], absent[(0, "site-5")]


def test_nan_update_is_rejected_and_named(faults):
    """The site's executor refuses to upload NaN (an error reply naming the keys; the server's aggregator would
    reject it too): the summary names site-2 and why."""
    absent = {(a["round"], a["site"]): a["reason"] for a in faults.summary["absent"]}
    assert "non-finite" in absent[(0, "site-2")]
    assert any(
        e["site"] == "site-2" and e["round"] == 0 and "non-finite" in e["message"] for e in faults.summary["errors"]
    )
    assert "2/5 (without site-2, site-4, site-5)" in faults.markdown()
    final, meta = load_state(faults.app / "FL_global_model.safetensors")
    assert meta["round"] == "2" and all(np.isfinite(v).all() for v in final.values())


def test_killed_site_is_named_and_the_rounds_complete_without_it(faults):
    p = faults.participation()
    assert p[1]["missing"]["site-3"] == "no result before the round closed"
    assert "site-3" in p[2]["missing"]
    md = faults.markdown()
    assert "2/5 (without site-3, site-4, site-5)" in md and "| 1 | site-3 |" in md
    # the cross-site table marks the sites that sent no validation instead of leaving them out
    assert {"site-3", "site-4"} <= set(faults.summary["cross_site_missing"]["data_sites"])
    assert "site-3 (MISSING)" in md


def test_killed_site_features_are_no_longer_relayed(faults):
    log = faults.server_log()
    assert "round 2: memory bank forgot ['site-3']" in log
    after = log.split("round 2: memory bank forgot")[1]
    relayed = re.findall(r"relaying to site site-\d: \{'bank': \{([^}]*)\}\}", after)
    assert relayed and not any("site-3" in r for r in relayed), relayed


def test_misconfigured_site_and_fewer_valid_updates_than_min_clients(tmp_path, drills):
    """Two sites, min_clients 2: site-2 is misconfigured (an unknown key in its fedmrg_site.json section), refused at
    START_RUN, so round 0 has one valid update; it is re-run once (round_retries 1), then the job stops. No global
    model is produced and the summary names site-2 and the key."""
    job = drills.make_job(tmp_path, num_rounds=2, workflow={"round_retries": 1})
    site_config = {"sites": {"site-2": {"devise": "cuda:0"}}}
    d = drills.run(
        "misconfigured site, too few valid updates (2 sites)", job, tmp_path / "ws", sites=2, site_config=site_config
    )
    log = d.server_log()
    assert _aggregated_counts(log) == [], log[-4000:]
    assert "round 0: NOT aggregated: 1 valid update(s) ['site-1'], fewer than min_clients=2" in log
    assert "re-running the round (retry 1 of 1)" in log
    assert "fewer than min_clients=2 valid updates after 1 retry; the job stops" in log
    assert not (d.app / "FL_global_model.safetensors").exists()
    (r0,) = d.summary["rounds"]
    assert r0["aggregated"] is False and [a["attempt"] for a in r0["attempts"]] == [0, 1]
    assert list(r0["participation"]["failed"]) == ["site-2"] and "devise" in r0["participation"]["failed"]["site-2"]
    assert "Round 0 was NOT aggregated" in d.markdown()


def test_server_killed_and_restarted_resumes_at_the_next_round(tmp_path, drills):
    """The simulator (server and sites) is SIGKILLed once round 0's global model is saved; the restarted job resumes
    at round 1 from that model: rounds 1..2 run once each, none lost, none repeated."""
    state = tmp_path / "keep" / "server"
    job = drills.make_job(tmp_path, num_rounds=3, state_dir=str(state), toy={"local_steps": 3})
    model = state / "FL_global_model.safetensors"
    t0 = time.monotonic()
    proc = drills.run("server restart", job, tmp_path / "ws1", sites=2, background=True)
    try:
        while not (model.is_file() and load_state(model)[1]["round"] == "0"):
            assert proc.poll() is None and time.monotonic() - t0 < 480, "round 0 never saved"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    drills.times["server restart"] = time.monotonic() - t0
    _, meta = load_state(model)
    saved = int(meta["round"])
    d = drills.run("server restart", job, tmp_path / "ws2", sites=2)
    assert d.proc.returncode == 0, d.proc.stdout[-3000:] + d.proc.stderr[-3000:]
    assert f"resuming training at round {saved + 1} (rounds {saved + 1}..2)" in d.server_log()
    assert [r["round"] for r in d.summary["rounds"]] == list(range(saved + 1, 3))
    assert all(r["aggregated"] for r in d.summary["rounds"])
    _, meta = load_state(model)
    assert meta["round"] == "2"
    assert json.loads((d.app / "summary" / "summary.json").read_text())["rounds"][0]["round"] == saved + 1
