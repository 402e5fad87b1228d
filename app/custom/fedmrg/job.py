"""``fedmrg job``: job variants without copied JSON, and the simulator workspace's component allow-list.

FLARE 2.9 builds only components whose class is on the site's allow-list (``<workspace>/local/resources.json``,
``class_allow_list``; the built-in default knows only NVFlare's own classes), unless the job ships custom code. Our
jobs ship none (the ``fedmrg`` package is installed at every site), so a workspace must allow ``fedmrg.`` and the
exact NVFlare classes the job uses:

    fedmrg job workspace jobs/fedmrg -w /tmp/ws         # writes /tmp/ws/local/resources.json
    nvflare simulator jobs/fedmrg -w /tmp/ws -n 3 -t 3

A variant is the base job plus a few overrides, written to a new folder (the base stays the single source)::

    fedmrg job variant jobs/fedmrg --out jobs/generated/fedlora \\
        --set rounds=6 --set learner.overrides.method=fedlora --set learner.local_steps=16

Keys of ``--set`` (values are JSON, else strings):

- ``rounds``: the ScatterAndGather workflow's ``num_rounds`` and the learner's ``training.rounds`` (its schedule);
- ``min_clients``: the workflow's and meta.json's ``min_clients``;
- ``learner.<a.b.c>``: the learner's arguments at every site; ``config`` and ``overrides.*`` also on the server's
  persistor (both sides must build the same model);
- ``client.<a.b.c>``: other executor arguments (e.g. ``client.private_dir``);
- ``server.<component id>.<a.b.c>``: arguments of a server component or workflow (e.g. ``server.model_selector.key_metric``);
- ``site_dp=true`` and ``site_dp.<argument>`` (``clip_norm``, ``noise_multiplier``, ``delta``, ``max_epsilon``, ...):
  switch the site-level DP-FedAvg filter on at every site (:class:`fedmrg.privacy.site_dp_filter.SiteDPFilter`);
- ``secure_aggregation=true`` and ``secure_aggregation.<option>`` (``clip_norm``, ``max_weight``, ``threshold``,
  ``min_sites``, ``identity``): switch pairwise-masked secure aggregation on
  (:mod:`fedmrg.privacy.secure_aggregation.job_variant`; memory-bank features are switched off with it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fedmrg.errors import ConfigError

SERVER_CONFIG = Path("app/config/config_fed_server.json")
CLIENT_CONFIG = Path("app/config/config_fed_client.json")
OWN_PREFIX = "fedmrg."
SITE_DP = "fedmrg.privacy.site_dp_filter.SiteDPFilter"
#: learner arguments the server's persistor needs too (it builds the initial model from them)
SERVER_LEARNER_ARGS = ("config", "overrides")
#: ``learner.overrides`` for a smoke run in seconds: the tiny built-in models (a few thousand parameters), 32 px
#: images, 8 generated tokens, tiny memory bank and batches (tests, POC drills); ``--set learner.overrides=<JSON>``
TINY_MODEL_OVERRIDES: dict[str, Any] = {
    "encoder": {"path": "builtin-tiny", "image_size": 32},
    "decoder": {"path": "builtin-tiny"},
    "generation": {"max_new_tokens": 8},
    "memory_bank": {"per_site_capacity": 8, "negatives_per_step": 4, "upload_per_round": 4},
    "training": {"batch_size": 2, "eval_batch_size": 4, "warmup_steps": 0},
}


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: not found (is this a FLARE job folder?)") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON: {e}") from e


def _paths(node: Any) -> Iterator[str]:
    """Component class paths of a FLARE config; a component's ``args`` are not searched (they hold data paths)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("path", "class_path") and isinstance(value, str):
                yield value
            elif key != "args":
                yield from _paths(value)
    elif isinstance(node, list):
        for value in node:
            yield from _paths(value)


def job_class_paths(job_dir: str | Path) -> list[str]:
    """Sorted dotted class paths of every component in the job's server and client configs."""
    job = Path(job_dir)
    return sorted({p for cfg in (SERVER_CONFIG, CLIENT_CONFIG) for p in _paths(_read(job / cfg))})


def allow_list(job_dir: str | Path, extra: Iterable[str] = ()) -> list[str]:
    """``fedmrg.`` plus the exact other classes the job (and ``extra``) uses, for ``class_allow_list``."""
    others = [p for p in [*job_class_paths(job_dir), *extra] if not p.startswith(OWN_PREFIX)]
    return [OWN_PREFIX, *sorted(set(others))]


def prepare_workspace(job_dir: str | Path, workspace: str | Path, extra: Iterable[str] = ()) -> Path:
    """Write (or extend) ``<workspace>/local/resources.json`` so the simulator may build the job's components.

    In a provisioned startup kit, a missing ``resources.json`` starts as a copy of ``resources.json.default`` (FLARE
    reads one or the other, so a file with the allow-list alone would drop the kit's resource manager and launcher).
    """
    path = Path(workspace) / "local" / "resources.json"
    default = path.with_name("resources.json.default")
    resources = _read(path) if path.is_file() else _read(default) if default.is_file() else {}
    current = resources.get("class_allow_list", [])
    wanted = allow_list(job_dir, extra)
    resources["class_allow_list"] = [*current, *(p for p in wanted if p not in current)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(resources, indent=2) + "\n")
    return path


def simulator_command(
    job_dir: str | Path, workspace: str | Path, *, sites: int | Sequence[str], threads: int | None = None
) -> list[str]:
    """Argv of ``nvflare simulator JOB -w WS`` in this interpreter: ``sites`` is a count (``-n``, sites ``site-1``..)
    or the client names (``-c``); ``threads`` (``-t``, client processes in parallel) defaults to one per site."""
    names = None if isinstance(sites, int) else list(sites)
    count = sites if names is None else len(names)
    which = ["-n", str(count)] if names is None else ["-c", ",".join(names)]
    return [sys.executable, "-m", "nvflare.cli", "simulator", str(job_dir), "-w", str(workspace), *which,
            "-t", str(threads or count)]  # fmt: skip


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _set(node: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: `{key}` in `{dotted}` is not a mapping")
        node = child
    node[leaf] = value


def _component(server: dict[str, Any], comp_id: str) -> dict[str, Any]:
    for comp in [*server.get("components", []), *server.get("workflows", [])]:
        if comp.get("id") == comp_id:
            return comp.setdefault("args", {})
    ids = [c.get("id") for c in [*server.get("components", []), *server.get("workflows", [])]]
    raise ConfigError(f"server component {comp_id!r} not found; the job has {', '.join(map(str, ids))}")


def apply_overrides(job_dir: str | Path, sets: Iterable[str]) -> None:
    """Apply ``key=value`` overrides (see the module docstring) to the job folder in place."""
    job = Path(job_dir)
    meta, server, client = _read(job / "meta.json"), _read(job / SERVER_CONFIG), _read(job / CLIENT_CONFIG)
    executor = client["executors"][0]["executor"].setdefault("args", {})
    workflow = server["workflows"][0].setdefault("args", {})
    persistor = _component(server, workflow.get("persistor_id", "persistor"))
    secagg: dict = {}
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        value = _parse_value(text)
        if key == "rounds":  # the learning-rate schedule spans the run
            workflow["num_rounds"] = value
            for args in (executor.setdefault("learner_args", {}), persistor.setdefault("learner_args", {})):
                _set(args, "overrides.training.rounds", value, "learner_args")
        elif key == "min_clients":
            workflow["min_clients"] = meta["min_clients"] = value
        elif key.startswith("learner."):
            sub = key.removeprefix("learner.")
            _set(executor.setdefault("learner_args", {}), sub, value, str(CLIENT_CONFIG))
            if sub.split(".")[0] in SERVER_LEARNER_ARGS:
                _set(persistor.setdefault("learner_args", {}), sub, value, str(SERVER_CONFIG))
        elif key.startswith("client."):
            _set(executor, key.removeprefix("client."), value, str(CLIENT_CONFIG))
        elif key.startswith("server."):
            comp_id, _, sub = key.removeprefix("server.").partition(".")
            if not sub:
                raise ConfigError(f"--set {item!r}: expected server.<component id>.<argument>")
            _set(_component(server, comp_id), sub, value, str(SERVER_CONFIG))
        elif key == "site_dp" or key.startswith("site_dp."):
            _set_site_dp(client, key.partition(".")[2] or "enabled", value)
        elif key == "secure_aggregation" or key.startswith("secure_aggregation."):
            secagg[key.partition(".")[2] or "on"] = value
        else:
            raise ConfigError(
                f"--set {item!r}: unknown key; use rounds, min_clients, learner.*, client.*, server.*, site_dp[.*] "
                "or secure_aggregation[.*]"
            )
    if secagg.pop("on", bool(secagg)):
        from fedmrg.privacy.secure_aggregation.job_variant import apply_secure_aggregation

        apply_secure_aggregation(server, client, secagg)
    for path, data in ((job / "meta.json", meta), (job / SERVER_CONFIG, server), (job / CLIENT_CONFIG, client)):
        path.write_text(json.dumps(data, indent=2) + "\n")


def _set_site_dp(client: dict[str, Any], arg: str, value: Any) -> None:
    """Set an argument of the client's site-level DP filter (:class:`fedmrg.privacy.site_dp_filter.SiteDPFilter`)."""
    filters = [
        f for g in client.get("task_result_filters", []) for f in g.get("filters", []) if f.get("path") == SITE_DP
    ]
    if not filters:
        raise ConfigError(f"{CLIENT_CONFIG}: no {SITE_DP} in task_result_filters to set `site_dp.{arg}` on")
    for f in filters:
        f.setdefault("args", {})[arg] = value


def write_variant(base: str | Path, out: str | Path, sets: Iterable[str], *, overwrite: bool = False) -> Path:
    """Copy the job folder ``base`` to ``out`` and apply ``sets``; the variant's name is the folder's name."""
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise ConfigError(f"{out} exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    shutil.copytree(base, out)
    meta = _read(out / "meta.json")
    meta["name"] = out.name
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    apply_overrides(out, sets)
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("job", help="FLARE job variants and simulator workspaces", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="job_command", required=True)
    v = sub.add_parser("variant", help="copy a job folder with overrides")
    v.add_argument("base", type=Path, help="job folder, e.g. jobs/fedmrg")
    v.add_argument("--out", type=Path, required=True, help="variant folder to write")
    v.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="an override")
    v.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    v.set_defaults(func=_variant_cmd)
    w = sub.add_parser("workspace", help="write the simulator workspace's class allow-list for a job")
    w.add_argument("job", type=Path, help="job folder, e.g. jobs/fedmrg")
    w.add_argument("-w", "--workspace", type=Path, required=True, help="the workspace given to `nvflare simulator -w`")
    w.add_argument("--allow", action="append", default=[], help="another class path to allow (e.g. a test filter)")
    w.set_defaults(func=_workspace_cmd)


def _variant_cmd(args: argparse.Namespace) -> int:
    out = write_variant(args.base, args.out, args.sets, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def _workspace_cmd(args: argparse.Namespace) -> int:
    path = prepare_workspace(args.job, args.workspace, args.allow)
    print(f"wrote {path}; now: nvflare simulator {args.job} -w {args.workspace} -n 3 -t 3")
    return 0
