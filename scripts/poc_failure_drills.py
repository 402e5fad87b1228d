#!/usr/bin/env python
"""Failure drills on a local POC federation (poc/fedmrg_poc.py): a hospital down at submission, a server restart.

Runs a tiny variant of ``jobs/fedmrg`` (built-in tiny models, 32-pixel images) and prints a timeline with wall times
and the log lines that show what FLARE did:

1. **Hospital down at submission**: the POC starts without ``hospital-c``; a job with ``min_clients`` 2 is submitted
   and runs with hospital-a/b; hospital-c is started during round 1 and the drill shows it does not join that job.
2. **Server restart mid-job**: a job keeping its global model in ``--state-dir`` (outside the job workspace) is
   submitted; during round 1 every server process is killed (SIGKILL) and the server is restarted with
   ``nvflare poc start -p fedmrg-server``; the drill shows the job's status after the restart, then re-submits the
   same job, which resumes at the round after the last saved global model, and checks the hospitals all rejoin.

    python scripts/poc_failure_drills.py -w /tmp/fedmrg-drills          # both drills (~4 min on 2 cores)
    python scripts/poc_failure_drills.py -w /tmp/fedmrg-drills --only restart

HOME is set to ``<workspace>/home`` (``nvflare`` keeps a registry in ``~/.nvflare``); the POC is always stopped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fedmrg.job import TINY_MODEL_OVERRIDES

REPO = Path(__file__).resolve().parents[1]
TINY = TINY_MODEL_OVERRIDES
TINY_SETS = [
    f"learner.overrides={json.dumps(TINY)}",
    "learner.validate_max_studies=2",
    "learner.synthetic=null",
    "min_clients=2",
    "server.cross_site_validate.submit_model_timeout=20",
    "server.cross_site_validate.validation_timeout=30",
]
SERVER = "fedmrg-server"


def load_poc():
    spec = importlib.util.spec_from_file_location("fedmrg_poc", REPO / "poc" / "fedmrg_poc.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fedmrg_poc"] = module
    spec.loader.exec_module(module)
    return module


poc = load_poc()
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def pids_of(path: Path) -> list[int]:
    """Processes whose command line names ``path`` (a participant's kit folder)."""
    out = subprocess.run(["pgrep", "-f", str(path)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, what: str, timeout: float, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def job_log(ws: Path, site: str, job_id: str) -> Path:
    return poc.prod_dir(ws) / site / job_id / "log.txt"


def log_has(ws: Path, site: str, job_id: str, text: str) -> bool:
    path = job_log(ws, site, job_id)
    return path.is_file() and text in path.read_text(errors="replace")


def grep(path: Path, pattern: str, limit: int = 8) -> list[str]:
    if not path.is_file():
        return [f"({path} absent)"]
    rx = re.compile(pattern)
    return [line.rstrip() for line in path.read_text(errors="replace").splitlines() if rx.search(line)][:limit]


def status(ws: Path, job_id: str) -> str:
    try:
        sess = poc.session(ws, admin="admin@coordinator.org", timeout=10)
    except Exception as e:  # the server is down or still starting
        return f"(no session: {type(e).__name__})"
    try:
        return sess.get_job_status(job_id) or "?"
    finally:
        sess.close()


def connected(ws: Path) -> set[str]:
    try:
        sess = poc.session(ws, admin="admin@coordinator.org", timeout=10)
    except Exception:  # the server is down or still starting
        return set()
    try:
        return {c.name for c in sess.get_connected_client_list()}
    finally:
        sess.close()


def start(ws: Path, participants: list[str], exclude: list[str] = ()) -> None:
    """``nvflare poc start`` (all, or ``-p`` one participant per call) without FLARE's readiness wait (which can hang on
    a loaded machine), then wait here until the expected hospitals are connected."""
    everyone = poc.participants(ws, "client")
    if participants:
        for name in participants:
            poc._run(poc._nvflare("poc", "start", "--no-wait", "-p", name), poc.poc_env(ws))
    else:
        args = ["poc", "start", "--no-wait"] + [a for name in exclude for a in ("-ex", name)]
        poc._run(poc._nvflare(*args), poc.poc_env(ws))
    want = set(everyone) - set(exclude) if not participants else set(participants) & set(everyone)
    wait_for(lambda: want <= connected(ws), f"{sorted(want)} to connect", 600, poll=3)


def submit(ws: Path, name: str, sets: list[str]) -> str:
    from fedmrg.job import write_variant

    job = write_variant(REPO / "jobs" / "fedmrg", ws / "jobs" / name, [*TINY_SETS, *sets], overwrite=True)
    return poc.submit_cli(ws, job)


def downloaded(ws: Path, job_id: str) -> Path:
    """The job's downloaded result (its server workspace; the global model may live in ``state_dir`` instead)."""
    sess = poc.session(ws, admin="admin@coordinator.org")
    try:
        return Path(sess.download_job_result(job_id, str(ws / "results")))
    finally:
        sess.close()


def rounds_of(result: Path) -> dict[int, list[str]]:
    """``{round: [sites that contributed]}`` from the run summary of a downloaded result."""
    summary = json.loads(next(result.rglob("summary/summary.json")).read_text())
    return {r["round"]: sorted(r["sites"]) for r in summary["rounds"]}


def drill_site_down(ws: Path) -> None:
    say("drill 1: hospital-c down at submission")
    start(ws, [], exclude=["hospital-c"])
    say(f"connected: {sorted(connected(ws))}")
    t = time.monotonic()
    job_id = submit(ws, "site-down", ["rounds=6", "learner.local_steps=6"])  # long enough for hospital-c to connect
    say(f"submitted {job_id} (min_clients 2)")
    wait_for(lambda: log_has(ws, SERVER, job_id, "Round 1 started"), "round 1", 900)
    say("round 1 started: starting hospital-c")
    start(ws, ["hospital-c"])
    say(f"hospital-c connected while job {job_id} is {status(ws, job_id)}; connected: {sorted(connected(ws))}")
    final = poc.monitor(ws, job_id, admin="admin@coordinator.org", timeout=1800, poll=3)
    say(f"job {job_id}: {final} after {time.monotonic() - t:.0f} s; rounds: {rounds_of(downloaded(ws, job_id))}")
    print("  hospital-c ran the job:", job_log(ws, "hospital-c", job_id).is_file())
    for line in grep(poc.prod_dir(ws) / SERVER / "log.txt", rf"{job_id}.*(deploy|hospital-c)|hospital-c.*{job_id}", 6):
        print("  server:", line)


def drill_server_restart(ws: Path, state_dir: Path, hospitals: list[str]) -> None:
    say("drill 2: server killed during round 1")
    sets = [
        "rounds=4",
        "learner.local_steps=6",
        f"server.persistor.state_dir={state_dir}",
        f"client.private_dir={state_dir}/{{site}}",
    ]
    t = time.monotonic()
    job_id = submit(ws, "restart", sets)
    say(f"submitted {job_id}; global model kept in {state_dir}")
    wait_for(lambda: log_has(ws, SERVER, job_id, "Round 1 started"), "round 1", 900)
    victims = pids_of(poc.prod_dir(ws) / SERVER)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    say(f"round 1 started: killed the server's {len(victims)} processes (SIGKILL)")
    time.sleep(3)
    t_restart = time.monotonic()
    poc._run(poc._nvflare("poc", "start", "--no-wait", "-p", SERVER), poc.poc_env(ws))
    wait_for(lambda: set(hospitals) <= connected(ws), "the hospitals to reconnect", 600, poll=3)
    say(f"server restarted; hospitals reconnected after {time.monotonic() - t_restart:.0f} s")
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        s = status(ws, job_id)
        if not seen or seen[-1] != s:
            seen.append(s)
            say(f"job {job_id} after the restart: {s}")
        if s.startswith("FINISHED") or s == "ABANDONED":
            break
        time.sleep(3)
    print("  server log after restart:")
    server_log = (poc.prod_dir(ws) / SERVER / "log.txt").read_text(errors="replace")
    restarted = server_log[server_log.rfind("Server started") :].splitlines()  # the lines of the new server process
    for line in [x for x in restarted if re.search(rf"{job_id}|Re-activate|[Ss]napshot|ABANDONED|ABNORMAL", x)][:8]:
        print("   ", line)
    for site in hospitals:
        for line in grep(job_log(ws, site, job_id), r"(?i)abort|server.*(lost|down|disconnect)|end run", 3):
            print(f"  {site}:", line)

    job2 = submit(ws, "restart", sets)  # the same job again
    say(f"re-submitted as {job2}")
    final = poc.monitor(ws, job2, admin="admin@coordinator.org", timeout=1800, poll=3)
    say(f"job {job2}: {final}; total since the first submission {time.monotonic() - t:.0f} s")
    result = downloaded(ws, job2)
    for line in grep(result / "workspace" / "log.txt", r"global model from|resuming|Round \d started", 4):
        print("  server:", line)
    for site in hospitals:
        for line in grep(job_log(ws, site, job2), r"loaded private state", 1):
            print(f"  {site}:", line)
    print("  rounds of the re-submitted job:", rounds_of(result))
    say(f"the killed job {job_id} is still listed as {status(ws, job_id)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-w", "--workspace", type=Path, required=True, help="scratch folder (replaced)")
    p.add_argument("--only", choices=["site-down", "restart"], help="run one drill")
    args = p.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):  # stop the POC (finally below) when interrupted
        signal.signal(sig, lambda *_: sys.exit(130))
    root = args.workspace.resolve()
    ws, state_dir = root / "poc", root / "state" / "exp1"
    os.environ["HOME"] = str(root / "home")
    os.environ.setdefault("FEDMRG_CACHE", str(root / "cache"))
    os.environ.setdefault("NVFLARE_CLIENT_OUTCOME_WAIT_TIMEOUT", "20")
    (root / "home").mkdir(parents=True, exist_ok=True)
    if state_dir.exists():
        import shutil

        shutil.rmtree(state_dir)
    poc.prepare(ws, poc.DEFAULT_PROJECT, port=free_port(), hospitals=None, keep_gpus=False)
    poc.place_demo_data(ws, num_studies=60, image_size=32, seed=0, torch_threads=1)
    hospitals = poc.participants(ws, "client")
    try:
        if args.only != "restart":
            drill_site_down(ws)
        else:
            start(ws, [])
        if args.only != "site-down":
            drill_server_restart(ws, state_dir, hospitals)
    finally:
        poc.stop(ws)
        for pid in pids_of(ws):
            os.kill(pid, signal.SIGKILL)
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
