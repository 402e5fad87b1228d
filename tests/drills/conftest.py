"""Failure drills: the one tiny job every drill runs: ``jobs/toy`` (a two-layer regression learner on synthetic numbers, a
few milliseconds per round) on 2-4 sites in ``nvflare simulator``, with the production server components
(ResumableScatterAndGather, FiniteUpdateAggregator, ExtraPayloadRelay, RunSummary), min_clients 2. Faults are injected through
the toy learner's arguments, the site configuration, the environment, or the ``plugins/kill_switch.py`` filter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fedmrg.job import simulator_command
from fedmrg.paths import REPO_ROOT

TOY = {"in_features": 4, "hidden": 6, "num_train": 16, "num_val": 8, "local_steps": 3, "bank_size": 2, "seed": 0}
PLUGINS = Path(__file__).parent / "plugins"
ALLOW = [
    "fedmrg.fl.",
    "nvflare.app_common.shareablegenerators.full_model_shareable_generator.FullModelShareableGenerator",
    "nvflare.app_common.widgets.intime_model_selector.IntimeModelSelector",
    "nvflare.app_common.workflows.cross_site_model_eval.CrossSiteModelEval",
    "kill_switch.KillSwitch",
]
#: wall seconds of every drill run, for the suite's total (printed at the end of the session)
TIMES: dict[str, float] = {}


@dataclass
class Drill:
    """One simulator run of the drill job: its workspace, exit code, logs and summary."""

    ws: Path
    proc: subprocess.CompletedProcess
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def app(self) -> Path:
        return self.ws / "server" / "simulate_job" / "app_server"

    def server_log(self) -> str:
        return (self.ws / "server" / "log.txt").read_text()

    def site_log(self, site: str) -> str:
        path = self.ws / site / "log.txt"
        return path.read_text() if path.is_file() else ""

    def markdown(self) -> str:
        return (self.app / "summary" / "summary.md").read_text()

    def participation(self) -> dict[int, dict[str, Any]]:
        return {r["round"]: r["participation"] for r in self.summary["rounds"] if "participation" in r}


def make_job(
    tmp: Path,
    *,
    num_rounds: int = 2,
    toy: dict | None = None,
    workflow: dict | None = None,
    cross_site: bool = False,
    client_filters: list[dict] | None = None,
    state_dir: str = "",
) -> Path:
    """A copy of ``jobs/toy`` under ``tmp/job`` with the drill's settings."""
    job = tmp / "job"
    shutil.rmtree(job, ignore_errors=True)
    shutil.copytree(Path(REPO_ROOT) / "jobs" / "toy", job)
    args = TOY | (toy or {})
    server_cfg = job / "app" / "config" / "config_fed_server.json"
    cfg = json.loads(server_cfg.read_text())
    for c in cfg["components"]:
        if c["id"] == "persistor":
            c["args"] |= {"learner_args": args, "state_dir": state_dir}
    sag = cfg["workflows"][0]
    sag["args"] |= {"num_rounds": num_rounds, "min_clients": 2, "wait_time_after_min_received": 0, "train_timeout": 0}
    sag["args"] |= workflow or {}
    if cross_site:
        cfg["workflows"][1]["args"] |= {"submit_model_timeout": 15, "validation_timeout": 15}
    else:
        cfg["workflows"] = [sag]
    server_cfg.write_text(json.dumps(cfg, indent=2))
    client_cfg = job / "app" / "config" / "config_fed_client.json"
    cfg = json.loads(client_cfg.read_text())
    cfg["executors"][0]["executor"]["args"] |= {"learner_args": args}
    if client_filters:
        cfg["task_data_filters"] = [{"tasks": ["train"], "filters": client_filters}]
    client_cfg.write_text(json.dumps(cfg, indent=2))
    return job


def run(
    name: str,
    job: Path,
    ws: Path,
    *,
    sites: int = 3,
    site_config: dict | None = None,
    env: dict | None = None,
    timeout: int = 480,
    background: bool = False,
) -> Drill | subprocess.Popen:
    """Run the simulator on ``sites`` sites (one process each), time it, and load the run summary. With
    ``background`` the simulator is started in its own process group and its ``Popen`` returned (to be killed)."""
    shutil.rmtree(ws, ignore_errors=True)
    (ws / "local").mkdir(parents=True)
    (ws / "local" / "resources.json").write_text(json.dumps({"class_allow_list": ALLOW}))
    if site_config is not None:
        (ws / "local" / "fedmrg_site.json").write_text(json.dumps(site_config))
    env = dict(os.environ, **(env or {}), PYTHONPATH=os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]))
    cmd = simulator_command(job, ws, sites=sites, threads=sites)
    if background:
        log = open(ws.parent / f"{ws.name}_output.txt", "w")  # noqa: SIM115 (the simulator wipes ws; closed with the process)
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - t0
    TIMES[name] = TIMES.get(name, 0.0) + seconds
    drill = Drill(ws, proc, seconds)
    path = drill.app / "summary" / "summary.json"
    if path.is_file():
        drill.summary = json.loads(path.read_text())
    return drill


class Drills:
    """The helpers above, handed to tests by the ``drills`` fixture."""

    make_job = staticmethod(make_job)
    run = staticmethod(run)
    times = TIMES


@pytest.fixture(scope="session")
def drills() -> type[Drills]:
    return Drills


@pytest.fixture(scope="session", autouse=True)
def drill_times():
    """Print the suite's total simulator time (the figure in docs/deployment.md) at the end of the session."""
    yield
    if TIMES:
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in TIMES.items())
        print(f"\nfailure drills: {sum(TIMES.values()):.0f} s of simulator runs ({parts})")
