"""Many sites in the FLARE simulator: wall time, memory (PSS) per process and summed, FLARE's cost vs the bare loop,
and a projection of bytes and server memory at Llama-2-7B scale; every figure measured in one run.

1. ``nvflare simulator`` on a variant of jobs/fedmrg: ``--sites`` training sites (the synthetic federation split into
   that many, no unseen site), ``--rounds`` x ``--local-steps``, the job's 96 px, validation on
   ``--validate-studies`` studies per site, cross-site evaluation removed; ``-t --threads`` client processes.
   A sampler reads ``/proc/<pid>/smaps_rollup`` (proportional set size: a shared page counted once, split between the
   processes that map it) of the simulator and every descendant every ``--interval`` seconds.
2. The bare loop of ``scripts/bench_fl_overhead.py``: the same learners, data, steps and seeds, one process per site,
   FedAvg in the parent; no FLARE, no serialisation. Sampled the same way (parent included).
3. Projection from the measured numbers: bytes per round and server memory for 10 and 100 sites with the
   Llama-2-7B + ResNet-101 shared state (shapes from the meta-device model, ``fedmrg inspect-model --meta``), per
   codec (byte ratios from :func:`fedmrg.fl.wire_codec.wire_ratio` on those shapes, FOBS framing measured here).
4. What one site process holds, stage by stage (imports, models and data, validation, training), in a fresh process.

    nice -n 10 .venv/bin/python scripts/bench_sites.py --sites 10 --rounds 2 --local-steps 4 [--threads 10] [--no-bare]
    nice -n 10 .venv/bin/python scripts/bench_sites.py --breakdown-only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import psutil  # noqa: E402

import bench_fl_overhead  # noqa: E402  (scripts/ is on sys.path: the bare loop's site workers are spawned from it)
from fedmrg.fl.wire_codec import wire_ratio  # noqa: E402
from fedmrg.job import prepare_workspace, simulator_command, write_variant  # noqa: E402
from fedmrg.paths import REPO_ROOT  # noqa: E402

GIB = 2**30
#: FLARE's client waits 60 s (``max_runner_sync_timeout``) for the server's job to start; on a loaded 2-core machine
#: the server's persistor builds the model slower than that and every site exits ("cannot sync with server Runner")
SIM_ENV = dict(os.environ, NVFLARE_MAX_RUNNER_SYNC_TIMEOUT=os.environ.get("NVFLARE_MAX_RUNNER_SYNC_TIMEOUT", "600"))


def pss_bytes(pid: int) -> int | None:
    """Proportional set size of a process in bytes (``/proc/<pid>/smaps_rollup``); None once it has exited."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def _role(proc: psutil.Process) -> str:
    """``site-N`` for a simulator client worker (its ``--client`` argument), else ``simulator`` or ``bare-site``."""
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "gone"
    if "--client" in cmd:
        return cmd[cmd.index("--client") + 1]
    if any("simulator" in c for c in cmd):
        return "simulator"
    return "bare-site" if any("multiprocessing" in c for c in cmd) else "other"


@dataclass
class PssSampler:
    """Samples the PSS of ``root`` and its descendants (``include_root``: the root too) every ``interval`` s in a
    thread. ``peak_sum``: the largest sum over one sample; ``peak``: per pid (role, largest PSS)."""

    root: int
    interval: float = 1.0
    include_root: bool = True
    peak_sum: int = 0
    peak: dict[int, tuple[str, int]] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        roles: dict[int, str] = {}
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.root)
                procs = ([root] if self.include_root else []) + root.children(recursive=True)
            except psutil.Error:
                return
            total = 0
            for p in procs:
                size = pss_bytes(p.pid)
                if size is None:
                    continue
                role = roles.setdefault(p.pid, _role(p)) if p.pid != self.root else "parent"
                total += size
                if size > self.peak.get(p.pid, ("", 0))[1]:
                    self.peak[p.pid] = (role, size)
            self.peak_sum = max(self.peak_sum, total)
            self.samples += 1
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def by_role(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for role, size in self.peak.values():
            out.setdefault("site" if role.startswith("site-") else role, []).append(size)
        return out


def make_job(out: Path, sites: int, rounds: int, steps: int, validate: int) -> Path:
    sets = [
        f"rounds={rounds}",
        f"min_clients={sites}",
        f"learner.local_steps={steps}",
        f"learner.validate_max_studies={validate}",
        f"learner.synthetic.sites={sites}",
        "learner.synthetic.unseen_sites=0",
    ]
    job = write_variant(Path(REPO_ROOT) / "jobs" / "fedmrg", out, sets, overwrite=True)
    path = job / "app" / "config" / "config_fed_server.json"
    server = json.loads(path.read_text())
    server["workflows"] = [w for w in server["workflows"] if w["id"] != "cross_site_validate"]
    path.write_text(json.dumps(server, indent=2))
    return job


def run_simulator(job: Path, ws: Path, sites: int, threads: int, interval: float) -> tuple[float, dict, PssSampler]:
    prepare_workspace(job, ws)
    cmd = simulator_command(job, ws, sites=sites, threads=threads)
    log = ws.parent / f"{ws.name}.log"
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=SIM_ENV)
        sampler = PssSampler(proc.pid, interval)
        proc.wait()
    seconds = time.perf_counter() - t0
    sampler.stop()
    summary_path = ws / "server" / "simulate_job" / "app_server" / "summary" / "summary.json"
    if proc.returncode or not summary_path.is_file():
        sys.exit(f"simulator failed (exit {proc.returncode}):\n{log.read_text()[-4000:]}")
    return seconds, json.loads(summary_path.read_text()), sampler


def run_bare(learner_args: dict, sites: int, rounds: int, work: Path, interval: float) -> tuple[float, PssSampler]:
    bare = bench_fl_overhead
    sampler = PssSampler(os.getpid(), interval)
    try:
        seconds = bare.bare_loop(learner_args, sites, rounds, work)
    finally:
        sampler.stop()
    return seconds, sampler


def _rss_pss() -> tuple[int, int]:
    """(RSS, PSS) of this process in bytes."""
    rss = pss = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    return rss, pss


def _breakdown_child(learner_args: dict, data_root: str, work: str, conn) -> None:
    """In a fresh process: (step, RSS, PSS) after each thing a site process loads, sent back over ``conn``."""
    rows = [("python + numpy", *_rss_pss())]
    import torch  # noqa: F401

    rows.append(("+ torch", *_rss_pss()))
    import peft  # noqa: F401
    import transformers  # noqa: F401

    rows.append(("+ transformers, peft", *_rss_pss()))
    import importlib

    for module in ("nvflare.private.fed.app.simulator.simulator_worker", "monai", "fedmrg.report.fl_job_learner"):
        importlib.import_module(module)
    rows.append(("+ nvflare client, monai, fedmrg", *_rss_pss()))
    from fedmrg.fl.site_config import SiteConfig
    from fedmrg.report.fl_job_learner import JobFedMRGLearner

    learner = JobFedMRGLearner(**(learner_args | {"torch_threads": 1}))
    learner.setup("site-1", work, SiteConfig(site="site-1", data_root=data_root))
    rows.append(("+ models built, site data loaded (setup)", *_rss_pss()))
    state = learner.initial_shared_state()
    learner.validate(state, personalized=True, split="val")
    rows.append(("+ one validation (generation)", *_rss_pss()))
    learner.train(state, round_num=0, extra={})
    rows.append(("+ one round of training (optimizer state, activations)", *_rss_pss()))
    conn.send(rows)


def memory_breakdown(learner_args: dict, work: Path) -> list[str]:
    """Markdown table: what one site process holds after each stage (one fresh process, nothing else shared)."""
    import multiprocessing as mp

    from fedmrg.data.synthetic_federation import SyntheticSpec, ensure_synthetic_federation

    data_root = str(ensure_synthetic_federation(SyntheticSpec(**learner_args["synthetic"])))
    work.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_breakdown_child, args=(learner_args, data_root, str(work), child))
    proc.start()
    rows = parent.recv()
    proc.join()
    lines = ["| a site process after | RSS | PSS | PSS added |", "|---|---:|---:|---:|"]
    prev = 0
    for name, rss, pss in rows:
        lines.append(f"| {name} | {rss / 2**20:.0f} MiB | {pss / 2**20:.0f} MiB | {(pss - prev) / 2**20:+.0f} MiB |")
        prev = pss
    return lines


def llama_shared_shapes() -> dict[str, tuple[int, ...]]:
    """Shapes of the shared state of Llama-2-7B + ResNet-101 (packaged ``llama2-7b.yaml``), built on the meta device."""
    import dataclasses

    from fedmrg.config import load_yaml
    from fedmrg.report.inspect_model import build_meta_model
    from fedmrg.report.run_config import packaged_config, resolve_builtin_paths, run_config_from_dict
    from fedmrg.report.shared_state import _shared_tensors

    path = packaged_config("llama2-7b.yaml")
    raw, _ = resolve_builtin_paths(load_yaml(path), progress=False)
    decoder_path = str(raw["decoder"]["path"])
    raw["decoder"] = {**raw["decoder"], "path": str(path.parent.resolve())}  # placeholder folder: no weights here
    config = run_config_from_dict(raw, source=str(path), base_dir=path.parent)
    model_config = dataclasses.replace(
        config.model, decoder=dataclasses.replace(config.model.decoder, path=decoder_path)
    )
    model = build_meta_model(model_config, "llama-2-7b")
    return {k: tuple(v.shape) for k, v in _shared_tensors(model).items()}  # meta tensors: shapes only


def projection(shapes: dict[str, tuple[int, ...]], framing: float, proc_pss: float) -> list[str]:
    """Markdown lines: per codec and site count, bytes per round and the server's memory (see the notes printed)."""
    values = sum(math.prod(s) for s in shapes.values())
    raw = 4 * values
    lines = [
        f"Llama-2-7B + ResNet-101 shared state: {values:,} values in {len(shapes)} arrays, {raw / 2**20:.1f} MiB fp32",
        "| codec up / down | bytes up per site | per round, 10 sites (up + down) | 100 sites (up + down) "
        "| server memory, 10 sites (one result in flight / all) | 100 sites (one / all) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for up, down in (("float32", "float32"), ("bfloat16", "bfloat16"), ("int8-row", "bfloat16")):
        b_up = raw * wire_ratio(up, shapes) * framing
        b_down = raw * wire_ratio(down, shapes) * framing
        base = proc_pss + 3 * raw  # global fp32 + running weighted sum fp32 + one decoded fp32 result
        cells, mem = [], []
        for n in (10, 100):
            cells.append(f"{n * (b_up + b_down) / GIB:.2f} GiB")
            mem.append(f"{(base + b_up + b_down) / GIB:.1f} / {(base + n * (b_up + b_down)) / GIB:.1f} GiB")
        lines.append(f"| {up} / {down} | {b_up / 2**20:.0f} MiB | {cells[0]} | {cells[1]} | {mem[0]} | {mem[1]} |")
    return lines


def _pss_row(name: str, s: PssSampler, site_key: str) -> str:
    roles = s.by_role()
    sizes = roles.pop(site_key, [])
    site = f"{_gib(min(sizes))} / {_gib(sum(sizes) / len(sizes))} / {_gib(max(sizes))}" if sizes else "-"
    other = ", ".join(f"{r} {', '.join(_gib(x) for x in sorted(v, reverse=True))}" for r, v in sorted(roles.items()))
    return f"| {name} | {_gib(s.peak_sum)} | {len(s.peak)} | {site} | {other} |"


def _gib(x: float) -> str:
    return f"{x / GIB:.2f} GiB"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--local-steps", type=int, default=4)
    p.add_argument("--validate-studies", type=int, default=8, help="validation studies per site and round")
    p.add_argument("--threads", type=int, help="simulator client processes, -t (default: one per site)")
    p.add_argument("--interval", type=float, default=1.0, help="PSS sampling period, seconds")
    p.add_argument("--no-bare", dest="bare", action="store_false", help="skip the bare loop")
    p.add_argument("--no-projection", dest="projection", action="store_false", help="skip the Llama-2-7B projection")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                   help="skip the stage-by-stage memory of one site process")  # fmt: skip
    p.add_argument("--breakdown-only", action="store_true", help="only the stage-by-stage memory of one site process")
    args = p.parse_args()
    threads = args.threads or args.sites

    with tempfile.TemporaryDirectory(prefix="bench_sites_") as tmp:
        tmp = Path(tmp)
        job = make_job(tmp / "job", args.sites, args.rounds, args.local_steps, args.validate_studies)
        learner_args = bench_fl_overhead._learner_args(job)
        if args.breakdown_only:
            print("\n".join(memory_breakdown(learner_args, tmp / "breakdown")))
            return 0
        from fedmrg.demo import _prefetch_in_child

        _prefetch_in_child(job)  # built-in models and the synthetic federation once, before the sites start
        sim_s, summary, sim = run_simulator(job, tmp / "ws", args.sites, threads, args.interval)
        rounds = summary["rounds"]
        in_rounds = sum(r.get("seconds") or 0.0 for r in rounds)
        raw = summary["shared_param_bytes"]
        uploads = sum(sum(s.get("bytes_up", 0) > 0 for s in r["sites"].values()) for r in rounds)
        print(
            f"{args.sites} sites, {args.rounds} rounds x {args.local_steps} local steps, 96 px, "
            f"{args.validate_studies} validation studies per site and round; nvflare simulator -n {args.sites} "
            f"-t {threads}; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}; PSS sampled every {args.interval:g} s "
            f"({sim.samples} samples)"
        )
        print(
            f"simulator wall {sim_s:.1f} s (rounds {in_rounds:.1f} s, start-up + shut-down {sim_s - in_rounds:.1f} s)"
        )
        print(
            f"uploads aggregated {uploads} of {args.sites * len(rounds)}; bytes up per upload / raw fp32 shared state: "
            f"{sum(r['bytes_up'] for r in rounds) / (uploads * raw):.4f} ({raw:,} raw bytes)"
        )
        print("\n| run | peak PSS summed | processes | per site process (min / mean / max) | others (peak each) |")
        print("|---|---:|---:|---|---|")
        print(_pss_row("simulator", sim, "site"), flush=True)
        if args.bare:
            bare_s, bare = run_bare(learner_args, args.sites, args.rounds, tmp / "bare", args.interval)
            print(_pss_row("bare loop", bare, "bare-site"))
            print(f"\nbare loop {bare_s:.1f} s | simulator / bare {sim_s / bare_s:.2f}", flush=True)
        breakdown = memory_breakdown(learner_args, tmp / "breakdown") if args.breakdown else []

    if breakdown:
        print("\nOne site process, stage by stage (a fresh process; its PSS is lower where other processes map the "
              "same libraries)")  # fmt: skip
        print("\n".join(breakdown))
    if args.projection:
        server_pss = max((size for role, size in sim.peak.values() if role == "simulator"), default=0)
        print(
            "\nProjection (server memory = the measured largest simulator process "
            f"{_gib(server_pss)} + global fp32, running sum fp32 and one decoded fp32 result + the encoded result up "
            "and task down of one site (results aggregated as they arrive) or of every site at once (the worst case))"
        )
        print("\n".join(projection(llama_shared_shapes(), summary_framing(rounds, raw), server_pss)))
    return 0


def summary_framing(rounds: list[dict], raw: int) -> float:
    """Serialised bytes / raw array bytes of the float32 uploads measured in this run (FOBS framing)."""
    return sum(r["bytes_up"] for r in rounds) / sum(r["param_bytes_up"] for r in rounds)


if __name__ == "__main__":
    sys.exit(main())
