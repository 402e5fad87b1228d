"""End to end over FLARE's HTTP driver with mutual TLS: a POC federation of provisioning/project.yml (server + 3 hospitals).

One federation serves the module (starting it takes ~40 s on 2 cores); the jobs are a tiny variant of jobs/fedmrg
(built-in tiny models, 32-pixel images) and the waits for a lost hospital are short (seconds instead of the job's
10 s per round and 600 s in cross-site evaluation), so the module stays within ~4 min. The two impostor clients
run side by side. Each hospital reads its own data through its ``local/fedmrg_site.json``; the job names no data
path. `nvflare` keeps a registry in ``~/.nvflare``, so HOME is a temp folder; the server port is a free one, so
parallel runs do not clash.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fedmrg.fl.state_files import load_state
from fedmrg.job import TINY_MODEL_OVERRIDES
from fedmrg.paths import REPO_ROOT

from .conftest import PROJECT, free_port, load_poc

pytestmark = pytest.mark.slow

JOB = Path(REPO_ROOT) / "jobs" / "fedmrg"
HOSPITALS = ["hospital-a", "hospital-b", "hospital-c"]
TINY = TINY_MODEL_OVERRIDES
TINY_SETS = [f"learner.overrides={json.dumps(TINY)}", "learner.validate_max_studies=2", "learner.synthetic=null"]


def _pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    poc = load_poc()
    tmp = tmp_path_factory.mktemp("poc")
    ws = tmp / "poc"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp))
        mp.setenv("FEDMRG_CACHE", str(tmp / "cache"))  # the tiny models are built here by the server and sites
        # after its app ends, the server waits this long for a dead hospital's outcome (FLARE's default: 900 s)
        mp.setenv("NVFLARE_CLIENT_OUTCOME_WAIT_TIMEOUT", "10")
        poc.prepare(ws, PROJECT, port=free_port(), hospitals=None, keep_gpus=False)
        poc.place_demo_data(ws, num_studies=60, image_size=32, seed=0, torch_threads=1)
        try:
            poc.start(ws, timeout=240)
            yield poc, ws
        finally:
            # `poc stop` waits up to 30 s per service for a clean shutdown (the server's lingers after the killed
            # hospital's job): ask without waiting, give them 10 s, then kill what is left of this workspace
            poc._run(poc._nvflare("poc", "stop", "--no-wait"), poc.poc_env(ws), check=False)
            deadline = time.monotonic() + 10
            while _pids(str(ws)) and time.monotonic() < deadline:
                time.sleep(1)
            for pid in _pids(str(ws)):
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                    os.kill(pid, signal.SIGKILL)


def _variant(poc, ws: Path, name: str, sets: list[str]) -> Path:
    from fedmrg.job import write_variant

    return write_variant(JOB, ws / "jobs" / name, [*TINY_SETS, *sets], overwrite=True)


def _summary(poc, ws: Path, job_id: str) -> tuple[Path, dict]:
    app = poc.download(ws, job_id, ws / "results")
    return app, json.loads((app / "summary" / "summary.json").read_text())


def _listening(port: int) -> list[str]:
    """Local IPv4 addresses listening on TCP ``port`` (Linux ``/proc/net/tcp``; state 0A = LISTEN)."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            out.append(".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return out


def test_the_server_listens_on_localhost_only(federation):
    poc, ws = federation
    (server,) = [p for p in yaml.safe_load((ws / "project.yml").read_text())["participants"] if p["type"] == "server"]
    assert _listening(server["fed_learn_port"]) == ["127.0.0.1"]


def test_member_cannot_submit_lead_can_and_the_job_completes(federation):
    poc, ws = federation
    job = _variant(poc, ws, "fedmrg-api", ["rounds=2", "learner.local_steps=2"])
    for who in ("radiologist@hospital-a.org", "it-admin@hospital-b.org"):  # member, org_admin
        with pytest.raises(Exception, match="(?i)not authorized"):
            poc.submit_api(ws, job, admin=who)

    t0 = time.monotonic()
    job_id = poc.submit_api(ws, job, admin="lead@coordinator.org")
    assert poc.monitor(ws, job_id, timeout=300, poll=2) == "FINISHED:COMPLETED"
    seconds = time.monotonic() - t0
    app, summary = _summary(poc, ws, job_id)

    from fedmrg.report.fl_job_learner import JobFedMRGLearner

    learner = JobFedMRGLearner(overrides=TINY | {"training": TINY["training"] | {"rounds": 2}})
    init = learner.initial_shared_state()
    final, meta = load_state(app / "FL_global_model.safetensors")
    assert sorted(final) == sorted(learner.shared_keys()) and meta["round"] == "1"
    assert any(not (final[k] == init[k]).all() for k in final)  # trained
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    for r in summary["rounds"]:
        assert set(r["sites"]) == set(HOSPITALS) and all(s["accepted"] for s in r["sites"].values())
        assert all(math.isfinite(r["val"][m]) for m in ("bleu4", "rouge_l", "ce_f1"))
    assert set(summary["cross_site"]) == set(HOSPITALS)
    # each hospital trained on its own data, named by its local/fedmrg_site.json
    for site in HOSPITALS:
        log = (poc.prod_dir(ws) / site / job_id / "log.txt").read_text()
        assert f"data root {ws / 'data' / site} (from fedmrg_site.json)" in log
    print(f"\ntiny job (2 rounds, 3 hospitals) submitted to downloaded: {seconds:.0f} s")


def test_client_with_a_certificate_of_another_root_ca_cannot_join(federation, tmp_path):
    poc, ws = federation
    # an impostor provisions its own federation (own root CA) pointing at our server's port
    ours = yaml.safe_load((ws / "project.yml").read_text())
    port = next(p["fed_learn_port"] for p in ours["participants"] if p["type"] == "server")
    theirs = poc.derive_project(
        yaml.safe_load(PROJECT.read_text()), port=port, hospitals=["hospital-c"], keep_gpus=False
    )
    next(p for p in theirs["participants"] if p["type"] == "client")["name"] = "hospital-x"
    (tmp_path / "impostor.yml").write_text(yaml.safe_dump(theirs))
    env = dict(poc.poc_env(tmp_path / "impostor"), HOME=str(tmp_path))
    cmd = [sys.executable, "-m", "nvflare.cli", "poc", "prepare", "-i", str(tmp_path / "impostor.yml"), "--force"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
    kit = poc.prod_dir(tmp_path / "impostor") / "hospital-x"

    ours_ca = (poc.prod_dir(ws) / "hospital-a" / "startup" / "rootCA.pem").read_bytes()
    assert (kit / "startup" / "rootCA.pem").read_bytes() != ours_ca

    # 1) as provisioned: the impostor does not trust our server; 2) trusting our root CA, its own certificate is
    # still signed by its root CA, which our server does not trust: in neither case does it join. Both run at once.
    kits = {"own-ca": kit, "our-ca": tmp_path / "our-ca" / "hospital-x"}
    shutil.copytree(kit, kits["our-ca"])
    (kits["our-ca"] / "startup" / "rootCA.pem").write_bytes(ours_ca)
    logs = _run_clients_briefly(kits, "hospital-x", "hospital_c", env, tmp_path)
    sess = poc.session(ws, admin="admin@coordinator.org")
    try:
        connected = {c.name for c in sess.get_connected_client_list()}
    finally:
        sess.close()
    assert "hospital-x" not in connected and {"hospital-a", "hospital-b"} <= connected
    for phase, log in logs.items():
        print(f"\n{phase}: impostor's last log lines:\n{''.join(log.splitlines(keepends=True)[-3:])}")
    assert "CERTIFICATE_VERIFY_FAILED" in logs["own-ca"]  # it does not trust our server's certificate


def _run_clients_briefly(kits: dict[str, Path], name: str, org: str, env: dict, logs: Path, seconds: float = 25):
    """Run a client of each kit side by side for ``seconds`` (the command FLARE's ``sub_start.sh`` runs); return
    each one's output by key of ``kits``."""
    procs = {}
    for phase, kit in kits.items():
        cmd = [sys.executable, "-u", "-m", "nvflare.private.fed.app.client.client_train", "-m", str(kit), "-s",
               "fed_client.json", "--set", "secure_train=true", f"uid={name}", f"org={org}", "config_folder=config"]  # fmt: skip
        with (logs / f"{phase}.log").open("w") as f:
            procs[phase] = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        time.sleep(seconds)
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return {phase: (logs / f"{phase}.log").read_text(errors="replace") for phase in kits}


def test_site_killed_mid_round_the_job_completes_with_the_others(federation):
    poc, ws = federation
    # after the kill each round waits 2 s (not the job's 10 s) for hospital-c, cross-site evaluation 10 s + 10 s
    sets = ["rounds=4", "learner.local_steps=6", "min_clients=2",
            "server.scatter_and_gather.wait_time_after_min_received=2",
            "server.cross_site_validate.submit_model_timeout=10",
            "server.cross_site_validate.validation_timeout=10"]  # fmt: skip
    job = _variant(poc, ws, "fedmrg-kill", sets)
    job_id = poc.submit_cli(ws, job)  # `nvflare job submit`, as the lead
    server_log = poc.prod_dir(ws) / "fedmrg-server" / job_id / "log.txt"
    deadline = time.monotonic() + 240
    while not (server_log.is_file() and "Round 1 started" in server_log.read_text()):
        assert time.monotonic() < deadline, "round 1 never started"
        time.sleep(1)
    victims = _pids(str(poc.prod_dir(ws) / "hospital-c"))  # its client process, its job process, its restarter
    assert victims
    for pid in victims:
        os.kill(pid, signal.SIGKILL)

    assert poc.monitor(ws, job_id, timeout=400, poll=2) == "FINISHED:COMPLETED"
    app, summary = _summary(poc, ws, job_id)
    rounds = {r["round"]: set(r["sites"]) for r in summary["rounds"]}
    assert sorted(rounds) == [0, 1, 2, 3]
    assert rounds[0] == set(HOSPITALS)
    assert rounds[2] == rounds[3] == {"hospital-a", "hospital-b"}  # after the kill: the two others
    _, meta = load_state(app / "FL_global_model.safetensors")
    assert meta["round"] == "3"
