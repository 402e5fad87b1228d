"""``fedmrg job``: job variants without copied JSON, code-free jobs and their sites' class allow-list.

Two ways to let FLARE 2.9 build our classes (a component's class is either on the site's ``class_allow_list`` in
``local/resources.json``, whose built-in default names NVFlare's own classes only, or the job carries custom code):

- **BYOC (the default)**: ``jobs/*/app/custom/`` holds one note (:data:`BYOC_NOTE`), so FLARE treats the job as
  carrying custom code and skips its allow-list: ``nvflare simulator jobs/fedmrg`` works with no prior step. The code
  itself is the ``fedmrg`` package installed at every site. In a provisioned federation the submitter then needs the
  ``byoc`` right of the sites' ``authorization.json``.
- **code-free** (sites that refuse custom code): ``fedmrg job variant jobs/fedmrg --out DIR --code-free`` drops
  ``app/custom/``; each site allow-lists the job's classes, ``fedmrg job workspace DIR -w <site or simulator
  workspace>`` (writes ``local/resources.json``).

A variant is the base job plus a few overrides, written to a new folder (the base stays the single source)::

    fedmrg job variant jobs/fedmrg --out jobs/generated/fedlora \\
        --set rounds=6 --set learner.overrides.method=fedlora --set learner.local_steps=16

Keys of ``--set`` (values are JSON, else strings; the order of the options never matters, a key may be given once):

- ``rounds``: the ScatterAndGather workflow's ``num_rounds``; the learner's ``overrides.training.rounds`` (its
  learning-rate schedule) always follows the workflow's rounds;
- ``min_clients``: the workflow's and meta.json's ``min_clients``;
- ``learner.<arg>[.<a.b>]``: the learner's arguments at every site (checked against the learner class's ``__init__``);
  ``config`` and ``overrides`` also on the server's persistor (both sides build the same model); ``overrides`` is
  checked against the run configuration it is merged into (``learner.config``, default the packaged ``default.yaml``);
- ``client.<arg>[.<a.b>]``: other executor arguments (e.g. ``client.private_dir``);
- ``server.<component id>.<arg>[.<a.b>]``: arguments of a server component or workflow (e.g.
  ``server.model_selector.key_metric``);
- ``site_dp=true`` and ``site_dp.<argument>`` (``clip_norm``, ``noise_multiplier``, ``delta``, ``max_epsilon``, ...):
  switch the site-level DP-FedAvg filter on at every site (:class:`fedmrg.privacy.site_dp_filter.SiteDPFilter`);
- ``secure_aggregation=true`` and ``secure_aggregation.<option>`` (``clip_norm``, ``max_weight``, ``threshold``,
  ``min_sites``, ``identity``): switch pairwise-masked secure aggregation on
  (:mod:`fedmrg.privacy.secure_aggregation.job_variant`; memory-bank features are switched off with it).
- ``wire.up`` / ``wire.down``: the codec of the sites' uploaded deltas (``float32``, ``bfloat16``, ``float16``,
  ``int8-tensor``, ``int8-row``) and of the global model sent down (16-bit or ``float32``)
  (:func:`fedmrg.fl.wire_codec.set_wire_codec`; the job's own: ``int8-row`` up, ``bfloat16`` down).
  ``secure_aggregation=true`` sets both to ``float32`` (masked values cannot be encoded, and the protocol's tasks share
  the model's filter chains); a codec other than ``float32`` named beside it is refused.

Every argument name is checked against its class's ``__init__`` and its annotated type, so a misspelt key is refused
when the variant is written, naming the key and the allowed ones.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import re
import shutil
import sys
import tempfile
import typing
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any

from fedmrg.errors import ConfigError

SERVER_CONFIG = Path("app/config/config_fed_server.json")
CLIENT_CONFIG = Path("app/config/config_fed_client.json")
OWN_PREFIX = "fedmrg."
SITE_DP = "fedmrg.privacy.site_dp_filter.SiteDPFilter"
#: learner arguments the server's persistor needs too (it builds the initial model from them)
SERVER_LEARNER_ARGS = ("config", "overrides")
#: the folder whose presence makes FLARE treat a job as carrying custom code (``DefaultAppValidator``: BYOC)
CUSTOM_DIR = Path("app/custom")
BYOC_NOTE_NAME = "README.md"
BYOC_NOTE = """# Custom-code folder of a FedMRG job

FLARE 2.9 builds a job's component classes only if they are on each site's `class_allow_list`
(`local/resources.json`) or if the job carries custom code, that is, has an `app/custom/` folder.
This folder makes the job such a job (BYOC), so `nvflare simulator` and a POC run it with no
prior setup. It holds no code: every class is imported from the `fedmrg` package installed at
each site (`pip install fedmrg`). A provisioned site runs BYOC jobs only for submitters with
the `byoc` right in its `authorization.json`.

Sites that refuse custom code: submit the code-free variant
(`fedmrg job variant <job> --out <dir> --code-free`) and allow-list its classes with
`fedmrg job workspace <dir> -w <site folder>`. See docs/jobs.md.
"""
#: ``learner.overrides`` for a smoke run in seconds: the tiny built-in models (a few thousand parameters), 32 px
#: images, 8 generated tokens, tiny memory bank and batches (tests, POC drills); ``--set learner.overrides=<JSON>``
TINY_MODEL_OVERRIDES: dict[str, Any] = {
    "encoder": {"path": "builtin-tiny", "image_size": 32},
    "decoder": {"path": "builtin-tiny"},
    "generation": {"max_new_tokens": 8},
    "memory_bank": {"negatives_per_step": 4, "upload_per_round": 4},
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


def parse_sets(items: Iterable[str]) -> list[tuple[str, str, Any]]:
    """``--set KEY=VALUE`` items -> ``(item, dotted key, value)`` (the value JSON, else the string); ConfigError
    naming the item on bad syntax or a key given twice."""
    out, seen = [], set()
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted KEY")
        if key in seen:
            raise ConfigError(f"--set {key}: given twice; keep one")
        seen.add(key)
        out.append((item, key, _parse_value(text)))
    return out


def _set(node: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: `{key}` in `{dotted}` is not a mapping")
        node = child
    node[leaf] = copy.deepcopy(value)


def _get(node: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


@dataclass
class JobOverrides:
    """Every ``--set KEY=VALUE`` of a variant, parsed once and applied in one fixed order (see :meth:`apply`).

    The order of ``--set`` options never matters: within a section a key is applied before the keys below it
    (``learner.overrides=<JSON>`` replaces the mapping, then ``learner.overrides.training.batch_size=2`` edits it), and
    ``rounds`` is applied last to both the workflow and the learner's schedule. A key given twice is refused.

    Attributes:
        rounds: the workflow's ``num_rounds``; the learner's ``overrides.training.rounds`` always follows it.
        min_clients: the workflow's and ``meta.json``'s ``min_clients``.
        learner: ``{dotted key below learner_args: value}`` (every site; ``config`` / ``overrides`` also the server).
        client: ``{dotted key below the executor's args: value}``.
        server: ``{(component id, dotted key below its args): value}``.
        site_dp: arguments of the site-level DP filter (``enabled`` for ``site_dp`` itself).
        secure_aggregation: None (untouched) or its options (``on`` for ``secure_aggregation`` itself).
        wire: ``{"up" | "down": codec}`` (:func:`fedmrg.fl.wire_codec.set_wire_codec`).
    """

    rounds: int | None = None
    min_clients: int | None = None
    learner: dict[str, Any] = field(default_factory=dict)
    client: dict[str, Any] = field(default_factory=dict)
    server: dict[tuple[str, str], Any] = field(default_factory=dict)
    site_dp: dict[str, Any] = field(default_factory=dict)
    secure_aggregation: dict[str, Any] | None = None
    wire: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, sets: Iterable[str]) -> JobOverrides:
        """Parse ``key=value`` strings (values are JSON, else strings); ConfigError naming the item on bad syntax."""
        out = cls()
        for item, key, value in parse_sets(sets):
            text = item.partition("=")[2]
            head, _, sub = key.partition(".")
            if key in ("rounds", "min_clients"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f"--set {key}: must be an int >= 1, got {text!r}")
                setattr(out, key, value)
            elif head in ("learner", "client") and sub:
                getattr(out, head)[sub] = value
            elif head == "server":
                comp_id, _, arg = sub.partition(".")
                if not arg:
                    raise ConfigError(f"--set {item!r}: expected server.<component id>.<argument>")
                out.server[(comp_id, arg)] = value
            elif head == "site_dp":
                out.site_dp[sub or "enabled"] = value
            elif head == "secure_aggregation":
                out.secure_aggregation = out.secure_aggregation or {}
                out.secure_aggregation[sub or "on"] = value
            elif head == "wire":
                from fedmrg.fl.wire_codec import CODECS, check_codec

                if sub not in ("up", "down"):
                    raise ConfigError(f"--set {item!r}: unknown key; use wire.up or wire.down (codecs {list(CODECS)})")
                out.wire[sub] = check_codec(value, where=f"--set wire.{sub}")
            else:
                raise ConfigError(
                    f"--set {item!r}: unknown key; use rounds, min_clients, learner.<arg>, client.<arg>, "
                    "server.<component id>.<arg>, site_dp[.<arg>], secure_aggregation[.<option>], "
                    "wire.up or wire.down"
                )
        return out

    def apply(self, meta: dict[str, Any], server: dict[str, Any], client: dict[str, Any]) -> None:
        """Edit the three job files' contents in place; then :func:`check_job` validates the result."""
        executor = client["executors"][0]["executor"].setdefault("args", {})
        workflow = server["workflows"][0].setdefault("args", {})
        persistor = _component(server, workflow.get("persistor_id", "persistor"))
        if self.min_clients is not None:
            workflow["min_clients"] = meta["min_clients"] = self.min_clients
        learner_args = executor.setdefault("learner_args", {})
        for dotted, value in _shallow_first(self.learner):
            _set(learner_args, dotted, value, f"--set learner.{dotted}")
        for dotted, value in _shallow_first(self.client):
            _set(executor, dotted, value, f"--set client.{dotted}")
        for (comp_id, dotted), value in sorted(self.server.items(), key=lambda kv: (kv[0][1].count("."), kv[0])):
            _set(_component(server, comp_id), dotted, value, f"--set server.{comp_id}.{dotted}")
        for arg, value in sorted(self.site_dp.items()):
            _set_site_dp(client, arg, value)
        if self.rounds is not None:
            workflow["num_rounds"] = self.rounds
        # the server's persistor builds the same model as the sites: same configuration and overrides
        if "learner_path" in persistor:
            for arg in SERVER_LEARNER_ARGS:
                if arg in learner_args:
                    persistor.setdefault("learner_args", {})[arg] = copy.deepcopy(learner_args[arg])
        typed: dict[str, Any] = {}  # what the user's learner.* keys set, to tell an explicit schedule apart
        for dotted, value in _shallow_first(self.learner):
            _set(typed, dotted, value, f"--set learner.{dotted}")
        sync_schedule(server, client, explicit=_get(typed, "overrides.training.rounds") is not None)
        from fedmrg.fl.wire_codec import set_wire_codec

        if self.secure_aggregation is not None:
            options = dict(self.secure_aggregation)
            on = options.pop("on", True)
            if not isinstance(on, bool):
                raise ConfigError(f"--set secure_aggregation: must be true or false, got {on!r}")
            if on:
                from fedmrg.privacy.secure_aggregation.job_variant import apply_secure_aggregation

                # masked values cannot be encoded: the job's own codecs go back to float32 first; a codec the user
                # names is refused (set_wire_codec, once the mask filter is in)
                set_wire_codec(server, client, up="float32", down="float32")
                apply_secure_aggregation(server, client, options)
            elif options:
                raise ConfigError("--set secure_aggregation.<option> given with secure_aggregation=false")
        if self.wire:
            try:
                set_wire_codec(server, client, up=self.wire.get("up"), down=self.wire.get("down"))
            except ConfigError as e:
                raise ConfigError(f"--set wire: {e}") from e


def _shallow_first(items: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` pairs, a key before the keys below it (``a`` before ``a.b``), else alphabetical."""
    return sorted(items.items(), key=lambda kv: (kv[0].count("."), kv[0]))


def _learner_takes_overrides(learner_path: str) -> bool:
    return {"config", "overrides"} <= set(init_parameters(_import(learner_path, "learner_path"))[0])


def sync_schedule(server: dict[str, Any], client: dict[str, Any], *, explicit: bool = False) -> None:
    """Make every learner's ``overrides.training.rounds`` (its learning-rate schedule) equal the workflow's rounds.

    ``explicit``: the user set ``learner.overrides.training.rounds`` themselves; a value other than the workflow's
    ``num_rounds`` is then refused (the schedule would end early, or never decay), naming the remedy.
    """
    workflow = server["workflows"][0].setdefault("args", {})
    rounds = workflow.get("num_rounds")
    if rounds is None:
        return
    for args in _learner_holders(server, client):
        if not _learner_takes_overrides(args["learner_path"]):
            continue
        learner_args = args.setdefault("learner_args", {})
        current = _get(learner_args, "overrides.training.rounds")
        if explicit and current is not None and current != rounds:
            raise ConfigError(
                f"--set learner.overrides.training.rounds={current} contradicts the workflow's num_rounds={rounds}; "
                f"use --set rounds=N (it sets both)"
            )
        _set(learner_args, "overrides.training.rounds", rounds, "learner_args")


def _import(path: str, what: str) -> type:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"{what} {path!r}: cannot import it ({e})") from e


def init_parameters(cls: type) -> tuple[dict[str, inspect.Parameter], bool]:
    """Named ``__init__`` parameters of ``cls`` (a ``**kwargs`` constructor adds its bases', as FLARE does) and whether
    the list is closed: False when a ``**kwargs`` reaches no base that names them (the class reads any key itself)."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if klass is object:
            return params, False
        if "__init__" not in vars(klass):
            continue
        sig = inspect.signature(klass.__init__)
        for name, p in sig.parameters.items():
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                params.setdefault(name, p)
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            return params, True
    return params, False


def check_args(path: str, args: dict[str, Any], *, where: str, prefix: str) -> None:
    """Refuse ``args`` the class at ``path`` does not take, or of the wrong type (from its ``__init__`` annotations).

    ``prefix``: how the user names these arguments (``learner.``, ``server.persistor.``), for the message. A class
    whose ``__init__`` takes any keyword (``**config``, no named base) checks its own keys when built: only the named
    parameters are checked here.
    """
    cls = _import(path, "component class")
    params, closed = init_parameters(cls)
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass) and klass is not object:
            try:
                hints.update(typing.get_type_hints(klass.__init__))
            except Exception:  # noqa: BLE001  (annotations naming types only imported for type checkers)
                continue
    fields_ = [(n, hints.get(n, Any), field(default=None)) for n in params]
    mirror = make_dataclass(f"{cls.__name__}Args", fields_)
    from fedmrg.config import from_dict

    checked = dict(args) if closed else {k: v for k, v in args.items() if k in params}
    from_dict(mirror, checked, source=f"{where} ({path})", _prefix=prefix)


def _placeholder_model_dirs(data: dict[str, Any], placeholder: str) -> dict[str, Any]:
    """``data`` with every model-directory field set to ``placeholder``: a site's own directories (or the built-in
    models, built on first use) are checked where the job runs, not where the variant is written."""
    from fedmrg.report.config import FedMRGConfig

    out = copy.deepcopy(data)
    for section, tp in typing.get_type_hints(FedMRGConfig).items():
        if is_dataclass(tp) and isinstance(out.get(section), dict):
            for f in fields(tp):
                if f.metadata.get("path") and out[section].get(f.name) is not None:
                    out[section][f.name] = placeholder
    return out


def check_learner_overrides(learner_args: dict[str, Any], *, where: str) -> None:
    """Validate ``overrides`` merged into the learner's run configuration (``config``, default ``default.yaml``)
    against the run-configuration dataclasses; the message names the key as ``learner.overrides.<key>``."""
    from fedmrg.config import load_yaml
    from fedmrg.report.run_config import packaged_config, run_config_from_dict

    name = learner_args.get("config", "default.yaml")
    overrides = learner_args.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: `learner.overrides` must be a mapping, got {type(overrides).__name__}")
    path = Path(name)
    path = path if path.is_file() else packaged_config(name)
    data = _merge(load_yaml(path), overrides)
    with tempfile.TemporaryDirectory() as placeholder:
        try:
            run_config_from_dict(_placeholder_model_dirs(data, placeholder), source="<overrides>", progress=False)
        except ConfigError as e:
            # name keys as the user writes them (learner.overrides.<key>), not as the YAML does
            msg = re.sub(r"`([A-Za-z_][\w.\[\]]*)`", r"`learner.overrides.\1`", str(e).removeprefix("<overrides>: "))
            raise ConfigError(f"{where}: {msg} (learner.overrides are merged into {path.name})") from e


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_job(job_dir: str | Path, *, where: str | None = None) -> None:
    """Validate a job folder the way its sites will build it: every component's arguments against its class's
    ``__init__`` (names and annotated types), the learner's arguments against the learner class, its run-configuration
    ``overrides`` against the run-configuration dataclasses, and the schedule (``overrides.training.rounds``) against
    the workflow's ``num_rounds``. ConfigError naming the key as ``--set`` spells it, and the remedy."""
    job = Path(job_dir)
    where = where or str(job)
    server, client = _read(job / SERVER_CONFIG), _read(job / CLIENT_CONFIG)
    rounds = server["workflows"][0].get("args", {}).get("num_rounds")
    for side, cfg in (("server", server), ("client", client)):
        for comp in [*cfg.get("components", []), *cfg.get("workflows", [])]:
            _check_component(comp, where, f"server.{comp.get('id')}." if side == "server" else f"{side}.")
        for entry in cfg.get("executors", []):
            _check_component(entry["executor"], where, "client.")
        for chain in ("task_data_filters", "task_result_filters"):
            for group in cfg.get(chain, []):
                for f in group.get("filters", []):
                    name = "site_dp" if f.get("path") == SITE_DP else f"{side} {chain} {f.get('path', '')}"
                    _check_component(f, where, f"{name}.")
    _check_statistics_round_privacy(server, client, where)
    for args in _learner_holders(server, client):
        learner_args = args.get("learner_args") or {}
        check_args(args["learner_path"], learner_args, where=where, prefix="learner.")
        if _learner_takes_overrides(args["learner_path"]):
            check_learner_overrides(learner_args, where=where)
            schedule = _get(learner_args, "overrides.training.rounds")
            if schedule != rounds:
                raise ConfigError(f"{where}: learner.overrides.training.rounds={schedule} but the workflow runs "
                                  f"num_rounds={rounds}; use --set rounds=N (it sets both)")  # fmt: skip
        synthetic = learner_args.get("synthetic")
        if isinstance(synthetic, dict):
            from fedmrg.config import from_dict
            from fedmrg.data.synthetic_federation import SyntheticSpec

            from_dict(SyntheticSpec, synthetic, source=where, _prefix="learner.synthetic.")


def _check_statistics_round_privacy(server: dict[str, Any], client: dict[str, Any], where: str) -> None:
    """Refuse, before any training, a head calibration (the statistics round after the last round, whose statistics
    are neither noised nor masked) together with the job's site-level DP or secure aggregation."""
    asks = [a for a in _learner_holders(server, client)
            if _get(a.get("learner_args") or {}, "overrides.training.head_calibration") not in (None, "none")]  # fmt: skip
    if not asks:
        return
    filters = [f for group in client.get("task_result_filters", []) for f in group.get("filters", [])]
    protection = ""
    if any(f.get("path") == SITE_DP and (f.get("args") or {}).get("enabled") for f in filters):
        protection = "site_dp=true (the filter withholds the un-noised statistics, so the job would stop after its last round)"
    elif "SecureScatterAndGather" in json.dumps(server.get("workflows", [])):
        protection = "secure_aggregation=true (the statistics would travel unmasked; the server refuses the job)"
    if protection:
        raise ConfigError(f"{where}: learner.overrides.training.head_calibration needs the statistics round after "
                          f"training, which {protection}; set learner.overrides.training.head_calibration=none")  # fmt: skip


def _learner_holders(server: dict[str, Any], client: dict[str, Any]) -> list[dict[str, Any]]:
    holders = [e.get("executor", {}).get("args", {}) for e in client.get("executors", [])]
    holders += [c.get("args", {}) for c in server.get("components", [])]
    return [a for a in holders if a.get("learner_path")]


def _check_component(comp: dict[str, Any], where: str, prefix: str) -> None:
    path = comp.get("path") or comp.get("class_path")
    if path:
        check_args(path, comp.get("args") or {}, where=where, prefix=prefix)


def _component(server: dict[str, Any], comp_id: str) -> dict[str, Any]:
    for comp in [*server.get("components", []), *server.get("workflows", [])]:
        if comp.get("id") == comp_id:
            return comp.setdefault("args", {})
    ids = [c.get("id") for c in [*server.get("components", []), *server.get("workflows", [])]]
    raise ConfigError(f"server component {comp_id!r} not found; the job has {', '.join(map(str, ids))}")


def apply_overrides(job_dir: str | Path, sets: Iterable[str]) -> None:
    """Apply ``key=value`` overrides (see :class:`JobOverrides` and the module docstring) to the job folder in place,
    then validate the result (:func:`check_job`); the files are written only if it is valid."""
    job = Path(job_dir)
    overrides = JobOverrides.parse(sets)
    meta, server, client = _read(job / "meta.json"), _read(job / SERVER_CONFIG), _read(job / CLIENT_CONFIG)
    overrides.apply(meta, server, client)
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "job"
        for path, data in ((trial / SERVER_CONFIG, server), (trial / CLIENT_CONFIG, client)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data))
        check_job(trial, where=f"variant of {job.name} with --set")
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
        f.setdefault("args", {})[arg] = copy.deepcopy(value)


def write_variant(
    base: str | Path, out: str | Path, sets: Iterable[str], *, overwrite: bool = False, code_free: bool = False
) -> Path:
    """Copy the job folder ``base`` to ``out`` and apply ``sets``; the variant's name is the folder's name.

    ``code_free``: leave out ``app/custom/`` (FLARE then enforces the sites' class allow-list; see the module doc).
    Nothing is written when an override is refused.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.is_dir() else None) as tmp:
        trial = Path(tmp) / out.name
        shutil.copytree(base, trial, ignore=shutil.ignore_patterns("job.py", "__pycache__"))
        if code_free:
            shutil.rmtree(trial / CUSTOM_DIR, ignore_errors=True)
        meta = _read(trial / "meta.json")
        meta["name"] = out.name
        (trial / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        apply_overrides(trial, sets)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(trial), out)
    return out


def write_byoc_note(job_dir: str | Path) -> Path:
    """Write :data:`BYOC_NOTE` into ``<job_dir>/app/custom/`` (makes the job BYOC for FLARE); returns its path."""
    path = Path(job_dir) / CUSTOM_DIR / BYOC_NOTE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BYOC_NOTE)
    return path


def is_byoc(job_dir: str | Path) -> bool:
    """Whether FLARE treats the job's app as carrying custom code (its own validator: an ``app/custom`` folder)."""
    from nvflare.private.fed.app.default_app_validator import DefaultAppValidator

    err, info = DefaultAppValidator(site_type="client").validate(str(Path(job_dir) / "app"))
    if err:
        raise ConfigError(f"{job_dir}: {err}")
    return bool(info.get("byoc"))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("job", help="FLARE job variants and simulator workspaces", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="job_command", required=True)
    v = sub.add_parser("variant", help="copy a job folder with overrides")
    v.add_argument("base", type=Path, help="job folder, e.g. jobs/fedmrg")
    v.add_argument("--out", type=Path, required=True, help="variant folder to write")
    v.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="an override")
    v.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    v.add_argument(
        "--code-free",
        action="store_true",
        help="leave out app/custom/ for sites that refuse custom code (they allow-list the classes)",
    )
    v.set_defaults(func=_variant_cmd)
    w = sub.add_parser("workspace", help="write a site's (or simulator workspace's) class allow-list for a job")
    w.add_argument("job", type=Path, help="job folder, e.g. jobs/fedmrg")
    w.add_argument("-w", "--workspace", type=Path, required=True, help="the workspace given to `nvflare simulator -w`")
    w.add_argument("--allow", action="append", default=[], help="another class path to allow (e.g. a test filter)")
    w.set_defaults(func=_workspace_cmd)


def _variant_cmd(args: argparse.Namespace) -> int:
    out = write_variant(args.base, args.out, args.sets, overwrite=args.overwrite, code_free=args.code_free)
    how = (
        f"code-free: allow-list its classes with `fedmrg job workspace {out} -w <site>`"
        if args.code_free
        else ("carries app/custom/: FLARE skips the class allow-list")
    )
    from fedmrg.fl.wire_codec import job_wire_codecs

    up, down = job_wire_codecs(_read(out / SERVER_CONFIG), _read(out / CLIENT_CONFIG))
    print(f"wrote {out} ({how}); on the wire: results up {up}, model down {down}")
    return 0


def _workspace_cmd(args: argparse.Namespace) -> int:
    path = prepare_workspace(args.job, args.workspace, args.allow)
    print(f"wrote {path}; now: nvflare simulator {args.job} -w {args.workspace} -n 3 -t 3")
    return 0
