#!/usr/bin/env python
"""FedMRG on a local proof-of-concept (POC) federation: real FLARE server and hospital processes talking over FLARE's
HTTP driver (``AioHttpDriver``, scheme ``http`` in the kits) with mutual TLS; the server listens on localhost only
unless ``prepare --listen-all``.

Steps, in the order a person runs them (each prints the plain `nvflare` command it runs):

    python poc/fedmrg_poc.py prepare  -w /tmp/fedmrg-poc            # startup kits of provisioning/project.yml
    python poc/fedmrg_poc.py data     -w /tmp/fedmrg-poc            # demo data per hospital + local/fedmrg_site.json
    python poc/fedmrg_poc.py start    -w /tmp/fedmrg-poc            # server + hospitals, waits until all connected
    python poc/fedmrg_poc.py submit   -w /tmp/fedmrg-poc jobs/fedmrg            # `nvflare job submit`, as the lead
    python poc/fedmrg_poc.py submit   -w /tmp/fedmrg-poc jobs/fedmrg --api      # or the FLARE API (Session)
    python poc/fedmrg_poc.py monitor  -w /tmp/fedmrg-poc JOB_ID     # status and round until the job ends
    python poc/fedmrg_poc.py download -w /tmp/fedmrg-poc JOB_ID     # result: global models + run summary
    python poc/fedmrg_poc.py stop     -w /tmp/fedmrg-poc

    python poc/fedmrg_poc.py run -w /tmp/fedmrg-poc                 # all of it (stops the POC at the end)

The POC is provisioned from ``provisioning/project.yml`` (the real federation's file) with a few local changes written
to ``<workspace>-project.yml``: the server port (``--port``), no GPU capacities unless ``--keep-gpus`` (a site
refuses to start when it has fewer GPUs than its capacity), and optionally fewer hospitals (``--hospitals``). The
server's kit is set to listen on 127.0.0.1 (its ``fed_server.json`` service target becomes ``localhost:<port>``; FLARE
binds every interface for any other host name) unless ``--listen-all``. The
startup kits carry the FedMRG class allow-list and authorization policy (``fedmrg.deploy.kit_builder``). Each hospital
finds its data through its own ``local/fedmrg_site.json``, never through the job. ``nvflare`` keeps its startup-kit
registry in ``~/.nvflare/config.conf``; the scripts always name the admin startup kit explicitly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROJECT = REPO / "provisioning" / "project.yml"
DEFAULT_JOB = REPO / "jobs" / "fedmrg"
TERMINAL_PREFIX = "FINISHED"


# ---------------------------------------------------------------- workspace layout


def poc_env(workspace: Path) -> dict[str, str]:
    """Environment of every `nvflare` call: the POC workspace, and this interpreter's `python3` first on PATH.

    The kits' ``sub_start.sh`` runs ``python3``; it must be the environment where nvflare and fedmrg are installed.
    """
    bin_dir = str(Path(sys.executable).parent)
    return dict(
        os.environ,
        NVFLARE_POC_WORKSPACE=str(workspace),
        PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
    )


def project_of(workspace: Path) -> dict[str, Any]:
    """The project file `nvflare poc prepare` saved in the workspace."""
    path = workspace / "project.yml"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `prepare -w {workspace}` first")
    return yaml.safe_load(path.read_text())


def prod_dir(workspace: Path) -> Path:
    """``<workspace>/<project>/prod_NN`` (the newest) holding every participant's startup kit."""
    name = project_of(workspace)["name"]
    dirs = sorted((workspace / name).glob("prod_*"), key=lambda p: int(p.name.split("_")[-1]))
    if not dirs:
        raise SystemExit(f"no startup kits under {workspace / name}: run `prepare -w {workspace}` first")
    return dirs[-1]


def participants(workspace: Path, kind: str, role: str | None = None) -> list[str]:
    """Names of the project's participants of ``kind`` (``server``, ``client``, ``admin``), admins of ``role``."""
    return [
        p["name"]
        for p in project_of(workspace)["participants"]
        if p["type"] == kind and (role is None or p.get("role") == role)
    ]


def admin_kit(workspace: Path, admin: str | None) -> tuple[str, Path]:
    """``(admin name, startup kit dir)``; default: the first `lead` of the project."""
    name = admin or participants(workspace, "admin", "lead")[0]
    kit = prod_dir(workspace) / name
    if not (kit / "startup").is_dir():
        raise SystemExit(f"no admin startup kit {kit}; admins: {', '.join(participants(workspace, 'admin'))}")
    return name, kit


def _run(
    cmd: list[str], env: dict[str, str], *, check: bool = True, capture: bool = False
) -> subprocess.CompletedProcess:
    shown = " ".join(["nvflare", *cmd[3:]] if cmd[1:3] == ["-m", "nvflare.cli"] else cmd)
    print(f"$ {shown}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=env, text=True, capture_output=capture)
    if check and proc.returncode != 0:
        detail = (proc.stdout or "")[-2000:] + (proc.stderr or "")[-2000:] if capture else ""
        raise SystemExit(f"command failed (exit {proc.returncode}): {shown}\n{detail}")
    return proc


def _nvflare(*args: str) -> list[str]:
    return [sys.executable, "-m", "nvflare.cli", *args]


# ---------------------------------------------------------------- prepare


def derive_project(
    project: dict[str, Any], *, port: int | None, hospitals: list[str] | None, keep_gpus: bool
) -> dict[str, Any]:
    """The POC's project: ``project`` with the server port, hospitals and GPU capacities changed as asked."""
    out = json.loads(json.dumps(project))
    clients = [p["name"] for p in out["participants"] if p["type"] == "client"]
    unknown = sorted(set(hospitals or []) - set(clients))
    if unknown:
        raise SystemExit(f"unknown hospital(s) {unknown}; the project has {', '.join(clients)}")
    kept = []
    for p in out["participants"]:
        if p["type"] == "client" and hospitals and p["name"] not in hospitals:
            continue
        if p["type"] == "server" and port:
            p["fed_learn_port"] = port
            p.pop("admin_port", None)
        if p["type"] == "client" and not keep_gpus and "capacity" in p:
            p["capacity"] = {"num_of_gpus": 0, "mem_per_gpu_in_GiB": 0}
        kept.append(p)
    out["participants"] = kept
    return out


def bind_server(kits: Path, server: str, *, listen_all: bool) -> str:
    """Make the POC server listen on localhost only (unless ``listen_all``): FLARE binds 127.0.0.1 when the service
    target of ``fed_server.json`` is a loopback host, every interface otherwise. Returns the target."""
    path = kits / server / "startup" / "fed_server.json"
    config = json.loads(path.read_text())
    service = config["servers"][0]["service"]
    if not listen_all:
        service["target"] = f"localhost:{service['target'].rsplit(':', 1)[1]}"
        path.write_text(json.dumps(config, indent=2))
    return service["target"]


def transport_of(kits: Path, server: str) -> str:
    """The scheme the kits use (``http``: FLARE's ``AioHttpDriver``; ``grpc``: its gRPC driver) and the connection
    security, e.g. ``http + mtls``."""
    server_cfg = json.loads((kits / server / "startup" / "fed_server.json").read_text())["servers"][0]
    return f"{server_cfg['service']['scheme']} + {server_cfg.get('connection_security', 'tls')}"


def prepare(
    workspace: Path,
    project_file: Path,
    *,
    port: int | None,
    hospitals: list[str] | None,
    keep_gpus: bool,
    listen_all: bool = False,
) -> Path:
    """Provision the POC (``nvflare poc prepare -i``) into ``workspace``; returns the derived project file."""
    project = derive_project(
        yaml.safe_load(project_file.read_text()), port=port, hospitals=hospitals, keep_gpus=keep_gpus
    )
    derived = workspace.parent / f"{workspace.name}-project.yml"  # outside the workspace: prepare deletes that
    workspace.parent.mkdir(parents=True, exist_ok=True)
    derived.write_text(yaml.safe_dump(project, sort_keys=False))
    _run(_nvflare("poc", "prepare", "-i", str(derived), "--force"), poc_env(workspace))
    kits = prod_dir(workspace)
    for site in participants(workspace, "server") + participants(workspace, "client"):
        allow = json.loads((kits / site / "local" / "resources.json.default").read_text())["class_allow_list"]
        if "fedmrg." not in allow:
            raise SystemExit(f"{kits / site}: `fedmrg.` is not allow-listed; is FedMRGKitBuilder in {project_file}?")
    (server,) = participants(workspace, "server")
    target = bind_server(kits, server, listen_all=listen_all)
    where = "every interface" if listen_all else "127.0.0.1 only"
    print(
        f"startup kits: {kits}; server {target} ({transport_of(kits, server)}), listening on {where}", file=sys.stderr
    )
    return derived


# ---------------------------------------------------------------- demo data


def split_site_data(federation: Path, site: str, out: Path) -> Path:
    """Copy ``site``'s share of a federated dataset directory to ``out``: its splits, its images, a one-site manifest.

    ``out`` is what a hospital holds: nothing of the other hospitals. Image paths inside the JSONL files are relative
    to the file, so the images keep their place under ``out``.
    """
    from fedmrg.data.dataset_dir import MANIFEST, FederatedDataset
    from fedmrg.data.records import write_records

    fd = FederatedDataset.open(federation)
    if site not in fd.sites:
        raise SystemExit(f"{federation} has no site {site!r}; it has {', '.join(fd.sites)}")
    if out.exists():
        shutil.rmtree(out)
    manifest = json.loads((federation / MANIFEST).read_text())
    entry = next(e for e in manifest["sites"] if e["name"] == site)
    for split, info in entry["splits"].items():
        for rel in {img.path for r in fd.split(site, split) for img in r.images}:
            src = Path(rel)
            if src.is_relative_to(federation.resolve()):
                dst = out / src.relative_to(federation.resolve())
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        dst = out / info["file"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(federation / info["file"], dst)
    write_records([], out / "test.jsonl")
    manifest["sites"] = [entry]
    manifest["unseen"] = []
    manifest["test"] = dict(manifest["test"], file="test.jsonl", studies=0)
    manifest["profiles"] = {entry["profile"]: manifest["profiles"][entry["profile"]]}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    FederatedDataset.open(out).split(site, "train")  # the hospital's copy opens on its own
    return out


def write_site_config(kit: Path, settings: dict[str, Any]) -> Path:
    """Write ``<kit>/local/fedmrg_site.json`` (see ``fedmrg.fl.site_config``)."""
    path = kit / "local" / "fedmrg_site.json"
    path.write_text(json.dumps(settings, indent=2) + "\n")
    return path


def place_demo_data(workspace: Path, *, num_studies: int, image_size: int, seed: int, torch_threads: int) -> None:
    """Generate a synthetic federation with the hospitals' names and give each hospital only its share."""
    from fedmrg.cli import main as fedmrg_main

    hospitals = participants(workspace, "client")
    central = workspace / "data" / "generated-federation"
    args = ["data", "prepare", "--source", "synthetic", "--sites", str(len(hospitals)), "--site-names",
            ",".join(hospitals), "--num-studies", str(num_studies), "--image-size", str(image_size), "--seed",
            str(seed), "--val-fraction", "0.2", "--out", str(central), "--overwrite"]  # fmt: skip
    print(f"$ fedmrg {' '.join(args)}", file=sys.stderr)
    if fedmrg_main(args) != 0:
        raise SystemExit("generating the demo data failed")
    kits = prod_dir(workspace)
    for site in hospitals:
        data = split_site_data(central, site, workspace / "data" / site)
        cfg = write_site_config(kits / site, {"data_root": str(data), "torch_threads": torch_threads})
        print(f"{site}: data {data}  ({cfg})", file=sys.stderr)
    shutil.rmtree(central)


# ---------------------------------------------------------------- start / stop


def start(workspace: Path, *, timeout: int, exclude: list[str] = ()) -> None:
    """``nvflare poc start``: the server and the hospitals (not ``exclude``), waiting until they are connected.

    Started with ``--no-wait``; the wait is :func:`wait_connected` (FLARE 2.9's own readiness wait, ``--timeout``, was
    seen to hang past its timeout on a loaded machine although every site had connected).
    """
    args = ["poc", "start", "--no-wait"]
    for name in exclude:
        args += ["-ex", name]
    _run(_nvflare(*args), poc_env(workspace))
    wait_connected(workspace, [h for h in participants(workspace, "client") if h not in exclude], timeout=timeout)


def wait_connected(workspace: Path, hospitals: list[str], *, timeout: float, poll: float = 2.0) -> None:
    """Wait until ``hospitals`` are connected to the server (asked as the project admin); SystemExit after ``timeout``."""
    admin = participants(workspace, "admin", "project_admin")[0]
    t0, seen = time.monotonic(), set()
    while not set(hospitals) <= seen:
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"after {timeout:.0f} s connected: {sorted(seen) or 'none'}; expected {sorted(hospitals)}")
        time.sleep(poll)
        try:
            sess = session(workspace, admin, timeout=10)
        except Exception:  # the server is still starting
            continue
        try:
            seen = {c.name for c in sess.get_connected_client_list()}
        finally:
            sess.close()
    print(f"connected after {time.monotonic() - t0:.0f} s: {', '.join(sorted(seen))}", file=sys.stderr, flush=True)


def stop(workspace: Path) -> None:
    _run(_nvflare("poc", "stop"), poc_env(workspace), check=False)


# ---------------------------------------------------------------- jobs


def code_free(workspace: Path, job: Path) -> Path:
    """The job as these kits accept it: their policy refuses custom code (``byoc: none``, provisioning/project.yml),
    so a job with ``app/custom/`` is submitted as a code-free copy, ``<workspace>/jobs/code-free/<job name>``
    (``fedmrg job variant --code-free``); the kits' ``class_allow_list`` names its classes."""
    from fedmrg.job import is_byoc, write_variant

    if not is_byoc(job):
        return job
    out = write_variant(job, workspace / "jobs" / "code-free" / job.name, [], overwrite=True, code_free=True)
    print(f"submitting {out}, a code-free copy of {job} (the kits refuse custom code)", file=sys.stderr)
    return out


def submit_cli(workspace: Path, job: Path, admin: str | None = None) -> str:
    """``nvflare job submit -j JOB --startup-kit <admin kit>`` (JOB made code-free, :func:`code_free`); the job id."""
    job = code_free(workspace, job)
    _, kit = admin_kit(workspace, admin)
    cmd = _nvflare("--format", "json", "job", "submit", "-j", str(job), "--startup-kit", str(kit))
    proc = _run(cmd, poc_env(workspace), check=False, capture=True)
    match = re.search(r'"job_id":\s*"([0-9a-f-]{36})"', proc.stdout)
    if proc.returncode != 0 or not match:
        raise SystemExit(f"submission failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return match.group(1)


def session(workspace: Path, admin: str | None = None, timeout: float = 30.0):
    """A FLARE API session (``new_secure_session``) as ``admin`` (default: the lead)."""
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    name, kit = admin_kit(workspace, admin)
    return new_secure_session(name, str(kit), timeout=timeout)


def submit_api(workspace: Path, job: Path, admin: str | None = None) -> str:
    """``Session.submit_job`` (the job made code-free, :func:`code_free`); returns the job id."""
    job = code_free(workspace, job)
    sess = session(workspace, admin)
    try:
        return sess.submit_job(str(job.resolve()))
    finally:
        sess.close()


def _round_of(stats: dict[str, Any]) -> str:
    """``"round 2/8 (train)"`` from the server's job stats (ScatterAndGather's), else ``""``."""
    for by_component in stats.values():
        for comp in (by_component or {}).values() if isinstance(by_component, dict) else ():
            if isinstance(comp, dict) and "current_round" in comp:
                phase = comp.get("phase", "")
                rnd = comp["current_round"]
                return f"round {rnd}/{comp.get('num_rounds', '?')} ({phase})" if rnd is not None else f"({phase})"
    return ""


def monitor(workspace: Path, job_id: str, *, admin: str | None = None, timeout: float = 3600, poll: float = 5) -> str:
    """Print the job's status and round whenever they change until it ends; returns the final status."""
    sess = session(workspace, admin)
    t0, last = time.monotonic(), None
    try:
        while True:
            status = sess.get_job_status(job_id) or "?"
            progress = ""
            if status == "RUNNING":
                try:
                    progress = _round_of(sess.show_stats(job_id, "server"))
                except Exception as e:  # stats are best effort (e.g. the job is just starting)
                    progress = f"(stats unavailable: {type(e).__name__})"
            line = f"{status} {progress}".strip()
            if line != last:
                print(f"[{time.monotonic() - t0:6.0f} s] job {job_id}: {line}", file=sys.stderr, flush=True)
                last = line
            if status.startswith(TERMINAL_PREFIX):
                return status
            if time.monotonic() - t0 > timeout:
                raise SystemExit(f"job {job_id} still {status} after {timeout:.0f} s")
            time.sleep(poll)
    finally:
        sess.close()


def download(workspace: Path, job_id: str, out: Path, *, admin: str | None = None) -> Path:
    """Download the job's result into ``out``; returns the folder of the server app (global models, summary)."""
    sess = session(workspace, admin)
    try:
        path = Path(sess.download_job_result(job_id, str(out)))
    finally:
        sess.close()
    return find_server_app(path)


def find_server_app(result: Path) -> Path:
    """The folder holding ``FL_global_model.safetensors`` inside a downloaded job result."""
    hits = sorted(result.rglob("FL_global_model.safetensors"))
    if not hits:
        raise SystemExit(f"no FL_global_model.safetensors in {result}")
    return hits[0].parent


def report(app: Path) -> dict[str, Any]:
    """Print the run summary of a downloaded result (rounds table, files) and return the summary."""
    from fedmrg.demo import format_cross_site, format_rounds

    summary_file = app / "summary" / "summary.json"
    summary = json.loads(summary_file.read_text())
    trained = sorted({s for r in summary.get("rounds", []) for s, v in r.get("sites", {}).items() if v.get("accepted")})
    print(format_rounds(summary, trained))
    print("\n" + format_cross_site(summary, trained, []))
    print(f"\nglobal model: {app / 'FL_global_model.safetensors'}\nsummary:      {summary_file}")
    return summary


# ---------------------------------------------------------------- all steps


def job_variant(workspace: Path, base: Path, sets: list[str]) -> Path:
    """``base`` itself, or a variant with ``sets`` (``fedmrg job variant``) under ``<workspace>/jobs/``."""
    if not sets:
        return base
    from fedmrg.job import write_variant

    return write_variant(base, workspace / "jobs" / f"{base.name}-poc", sets, overwrite=True)


def run_all(args: argparse.Namespace) -> int:
    ws: Path = args.workspace.resolve()
    t0 = time.monotonic()
    prepare(ws, args.project, port=args.port, hospitals=args.hospitals, keep_gpus=args.keep_gpus,
            listen_all=args.listen_all)  # fmt: skip
    place_demo_data(ws, num_studies=args.num_studies, image_size=args.image_size, seed=args.seed,
                    torch_threads=args.torch_threads)  # fmt: skip
    job = job_variant(ws, args.job, args.sets)
    try:
        start(ws, timeout=args.start_timeout)
        job_id = (submit_api if args.api else submit_cli)(ws, job, args.admin)
        print(f"submitted {job} as job {job_id}", file=sys.stderr)
        status = monitor(ws, job_id, admin=args.admin, timeout=args.timeout)
        app = download(ws, job_id, ws / "results", admin=args.admin)
        report(app)
    finally:
        if not args.keep_running:
            stop(ws)
    print(f"\njob {job_id}: {status} in {time.monotonic() - t0:.0f} s (all steps)", file=sys.stderr)
    return 0 if status == "FINISHED:COMPLETED" else 1


# ---------------------------------------------------------------- CLI


def _ws(p: argparse.ArgumentParser) -> None:
    p.add_argument("-w", "--workspace", type=Path, required=True, help="POC workspace (replaced by `prepare`)")


def _prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", type=Path, default=DEFAULT_PROJECT, help=f"project file (default {DEFAULT_PROJECT})")
    p.add_argument("--port", type=int, help="server port for sites and admins (default: the project's)")
    p.add_argument("--hospitals", nargs="+", help="only these hospitals of the project (default: all)")
    p.add_argument("--keep-gpus", action="store_true", help="keep the project's GPU capacities")
    p.add_argument("--listen-all", action="store_true",
                   help="the server listens on every interface (default: 127.0.0.1 only)")  # fmt: skip


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-studies", type=int, default=300, help="synthetic studies over all hospitals (default 300)")
    p.add_argument("--image-size", type=int, default=128, help="synthetic image size in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=1, help="CPU threads per hospital (fedmrg_site.json)")


def _admin(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin", help="admin identity whose startup kit is used (default: the project's lead)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="provision the POC federation (nvflare poc prepare -i)")
    _ws(p)
    _prepare_args(p)
    p = sub.add_parser("data", help="place demo data per hospital and write each local/fedmrg_site.json")
    _ws(p)
    _data_args(p)
    p = sub.add_parser("start", help="start the server and hospitals (nvflare poc start)")
    _ws(p)
    p.add_argument("--timeout", type=int, default=180, help="seconds to wait until all are connected")
    p.add_argument("--exclude", nargs="+", default=[], help="participants not to start (e.g. a hospital)")
    p = sub.add_parser("submit", help="submit a job folder as an admin; prints the job id")
    _ws(p)
    p.add_argument("job", type=Path, nargs="?", default=DEFAULT_JOB, help=f"job folder (default {DEFAULT_JOB})")
    p.add_argument("--api", action="store_true", help="use the FLARE API (Session) instead of `nvflare job submit`")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="submit a variant with this override (as `fedmrg job variant`); repeatable")  # fmt: skip
    _admin(p)
    p = sub.add_parser("monitor", help="show status and round until the job ends")
    _ws(p)
    p.add_argument("job_id")
    p.add_argument("--timeout", type=float, default=3600)
    _admin(p)
    p = sub.add_parser("download", help="download the job result and print its summary")
    _ws(p)
    p.add_argument("job_id")
    p.add_argument("--out", type=Path, help="destination (default <workspace>/results)")
    _admin(p)
    p = sub.add_parser("stop", help="stop every POC process (nvflare poc stop)")
    _ws(p)
    p = sub.add_parser("run", help="all steps: prepare, data, start, submit, monitor, download, stop")
    _ws(p)
    _prepare_args(p)
    _data_args(p)
    p.add_argument("--job", type=Path, default=DEFAULT_JOB, help=f"job folder (default {DEFAULT_JOB})")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="job override (as `fedmrg job variant`); repeatable")  # fmt: skip
    p.add_argument("--api", action="store_true", help="submit with the FLARE API instead of `nvflare job submit`")
    p.add_argument("--start-timeout", type=int, default=180)
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the job")
    p.add_argument("--keep-running", action="store_true", help="leave the POC running at the end")
    _admin(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ws = args.workspace.resolve()
    if args.step == "prepare":
        prepare(ws, args.project, port=args.port, hospitals=args.hospitals, keep_gpus=args.keep_gpus,
            listen_all=args.listen_all)  # fmt: skip
    elif args.step == "data":
        place_demo_data(ws, num_studies=args.num_studies, image_size=args.image_size, seed=args.seed,
                        torch_threads=args.torch_threads)  # fmt: skip
    elif args.step == "start":
        start(ws, timeout=args.timeout, exclude=args.exclude)
    elif args.step == "submit":
        job = job_variant(ws, args.job, args.sets)
        print((submit_api if args.api else submit_cli)(ws, job, args.admin))
    elif args.step == "monitor":
        status = monitor(ws, args.job_id, admin=args.admin, timeout=args.timeout)
        print(status)
        return 0 if status == "FINISHED:COMPLETED" else 1
    elif args.step == "download":
        report(download(ws, args.job_id, args.out or ws / "results", admin=args.admin))
    elif args.step == "stop":
        stop(ws)
    elif args.step == "run":
        return run_all(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
