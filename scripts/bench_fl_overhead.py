"""FLARE overhead of jobs/fedmrg, measured in one run: simulator vs. a bare in-process loop doing the same work.

1. ``nvflare simulator`` on a variant of jobs/fedmrg (cross-site evaluation removed) for R rounds, S local steps;
2. a bare loop: the same learners (same data, config, seeds), one process per site with one BLAS thread, as in the
   simulator; per round every site validates the global model and trains S steps in parallel, then the parent takes a
   sample-weighted FedAvg — no FLARE, no serialisation, no task polling.

Prints ``simulator_seconds / bare_seconds`` (target <= 1.3) and, from the run summary, bytes per round on the wire /
raw fp32 bytes of the shared parameters (target <= 1.05). Both sides run the sites in parallel processes with one BLAS
thread each (the simulator with ``-t`` = sites, as ``fedmrg demo`` does), so the ratio is FLARE's own cost: process
and job start-up, (de)serialisation, task polling and the server's waits. The breakdown line splits the simulator's
wall time into start-up/shut-down (wall minus the rounds) and the rounds.

    .venv/bin/python scripts/bench_fl_overhead.py --rounds 3 --local-steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from fedmrg.job import prepare_workspace, simulator_command, write_variant  # noqa: E402
from fedmrg.paths import REPO_ROOT  # noqa: E402


def _learner_args(job: Path) -> dict:
    client = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
    return client["executors"][0]["executor"]["args"]["learner_args"]


def simulate(job: Path, ws: Path, sites: int) -> tuple[float, dict]:
    prepare_workspace(job, ws)
    cmd = simulator_command(job, ws, sites=sites)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"simulator failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    summary = json.loads((ws / "server" / "simulate_job" / "app_server" / "summary" / "summary.json").read_text())
    return seconds, summary


def _site_worker(conn, args: dict, name: str, data_root: str, work: str) -> None:
    """One site of the bare loop: set up once, then per message (global state, round) validate + train, reply."""
    from fedmrg.fl.site_config import SiteConfig
    from fedmrg.report.fl_job_learner import JobFedMRGLearner

    learner = JobFedMRGLearner(**(args | {"torch_threads": 1}))
    learner.setup(name, work, SiteConfig(site=name, data_root=data_root))
    conn.send("ready")
    while (msg := conn.recv()) is not None:
        global_state, r = msg
        learner.validate(global_state, personalized=True, split="val")
        out = learner.train(global_state, round_num=r, extra={})
        learner.save_private(work)
        conn.send((out.shared_state, out.num_samples))


def bare_loop(args: dict, sites: int, rounds: int, work: Path) -> float:
    import multiprocessing as mp

    import numpy as np

    from fedmrg.data.synthetic_federation import SyntheticSpec, ensure_synthetic_federation
    from fedmrg.report.fl_job_learner import JobFedMRGLearner

    data_root = str(ensure_synthetic_federation(SyntheticSpec(**args["synthetic"])))
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    workers = []
    for i in range(1, sites + 1):
        name = f"site-{i}"
        (work / name).mkdir(parents=True, exist_ok=True)
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_site_worker, args=(child, args, name, data_root, str(work / name)))
        proc.start()
        workers.append((parent, proc))
    for conn, _ in workers:
        assert conn.recv() == "ready"
    global_state = JobFedMRGLearner(config=args["config"], overrides=args.get("overrides")).initial_shared_state()
    for r in range(rounds):
        for conn, _ in workers:
            conn.send((global_state, r))
        outcomes = [conn.recv() for conn, _ in workers]
        total = sum(n for _, n in outcomes)
        global_state = {
            k: np.sum([state[k] * (n / total) for state, n in outcomes], axis=0).astype(np.float32)
            for k in global_state
        }
    for conn, proc in workers:
        conn.send(None)
        proc.join()
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-steps", type=int, default=8)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        job = write_variant(Path(REPO_ROOT) / "jobs" / "fedmrg", tmp / "bench",
                            [f"rounds={args.rounds}", f"learner.local_steps={args.local_steps}"])  # fmt: skip
        server = json.loads((job / "app/config/config_fed_server.json").read_text())
        server["workflows"] = [w for w in server["workflows"] if w["id"] != "cross_site_validate"]
        (job / "app/config/config_fed_server.json").write_text(json.dumps(server))
        learner_args = _learner_args(job)
        sites = int(learner_args["synthetic"]["sites"])

        sim_s, summary = simulate(job, tmp / "ws", sites)
        bare_s = bare_loop(learner_args, sites, args.rounds, tmp / "bare")

    rounds = summary["rounds"]
    up = sum(r["bytes_up"] for r in rounds) / sum(r["param_bytes_up"] for r in rounds)
    down = sum(r["bytes_down"] for r in rounds) / sum(r["param_bytes_down"] for r in rounds)
    print(f"{sites} sites, {args.rounds} rounds x {args.local_steps} steps")
    print(f"simulator wall {sim_s:.1f} s | bare loop {bare_s:.1f} s | ratio {sim_s / bare_s:.2f} (target <= 1.3)")
    in_rounds = sum(r.get("seconds") or 0.0 for r in rounds)
    print(f"simulator breakdown: rounds {in_rounds:.1f} s, start-up + shut-down {sim_s - in_rounds:.1f} s")
    print(
        f"bytes up / raw fp32 shared params {up:.4f} | down (incl. relayed bank features) {down:.4f} (target <= 1.05)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
