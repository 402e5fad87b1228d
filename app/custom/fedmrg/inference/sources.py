"""Where a trained model lives: its run configuration, its global (shared) state and each site's private state.

:func:`open_source` accepts every output a user holds after training:

- an exported model folder (``fedmrg export``; ``fedmrg_model.json`` inside);
- a ``fedmrg train`` run folder (``config.yaml`` + ``shared_state.safetensors``; private states in ``private/``);
- a FLARE workspace (``nvflare simulator -w WS``, the benchmark's workspaces), its server app folder
  (``WS/server/simulate_job/app_server``) or the global model file in it (``FL_global_model.safetensors``,
  ``best_FL_global_model.safetensors``); the same layout in a POC / production server's job folder;
- a ``fedmrg demo --out`` folder (its ``workspace/``).

In a FLARE workspace the run configuration is the server persistor's ``learner_args`` (``config`` + ``overrides``,
:class:`~fedmrg.report.fl_learner.FedMRGLearner`) with the server's ``local/fedmrg_site.json`` model paths,
as the persistor built the global model. Each training site keeps its specialized adapter S2 in
``<site root>/<job>/app_<site>/fedmrg_private/private/private_state.safetensors`` (the executor's default
``private_dir``; a configured ``private_dir`` is read from that site's ``config_fed_client.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from fedmrg.errors import FedMRGError

EXPORT_INFO = "fedmrg_model.json"
GLOBAL_MODEL_FILES: tuple[str, ...] = ("FL_global_model.safetensors", "best_FL_global_model.safetensors")
_PRIVATE_FILE = "private_state.safetensors"  # fedmrg.report.fl_learner.PRIVATE_FILE
_PERSISTOR_PATH = "fedmrg.fl.shared_state_persistor.SharedStatePersistor"
_EXECUTOR_PATH = "fedmrg.fl.shared_state_executor.SharedStateExecutor"
_REPORT_LEARNERS = ("fedmrg.report.fl_learner.FedMRGLearner", "fedmrg.report.fl_job_learner.JobFedMRGLearner")

SourceKind = Literal["export", "run", "workspace"]


@dataclass
class ModelSource:
    """A model's states on disk, not yet loaded into a model.

    Attributes:
        kind: ``"export"``, ``"run"`` (``fedmrg train``) or ``"workspace"`` (FLARE).
        path: the folder (or file) the user named.
        config: the run configuration (model paths resolved to directories).
        shared_file: the safetensors file(s) of the global shared state.
        private_files: site -> safetensors file of its private state (S2), for the sites that have one.
        round: the last round the global model comes from, when recorded.
        info: what the model card reports (sites, rounds, metrics, privacy), JSON-ready.
    """

    kind: SourceKind
    path: Path
    config: Any
    shared_files: list[Path]
    private_files: dict[str, Path] = field(default_factory=dict)
    round: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def sites(self) -> list[str]:
        """Sites with a private state, sorted."""
        return sorted(self.private_files)

    def shared_state(self) -> dict[str, torch.Tensor]:
        """The global shared state as float32 CPU tensors (the files merged; a key in two files is an error)."""
        out: dict[str, torch.Tensor] = {}
        for f in self.shared_files:
            part = read_tensors(f)
            dup = sorted(set(part) & set(out))
            if dup:
                raise FedMRGError(f"{f}: keys also stored in another file of the model: {dup[:5]}")
            out |= part
        return out

    def private_state(self, site: str) -> dict[str, torch.Tensor]:
        """``site``'s private state; FedMRGError listing the sites that have one when it is not among them."""
        if site not in self.private_files:
            have = ", ".join(self.sites) or "none"
            raise FedMRGError(f"{self.path}: no specialized adapter for site {site!r} (sites with one: {have})")
        return read_tensors(self.private_files[site])


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file as float32 CPU tensors; FedMRGError naming the file when unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:  # safetensors raises its own error types; any of them means an unusable file
        raise FedMRGError(f"{path}: not a readable safetensors file: {e}") from e


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise FedMRGError(f"{path}: not readable as JSON: {e}") from e


def open_source(path: str | Path, *, progress: bool = False) -> ModelSource:
    """Find the model in ``path`` (any layout of the module docstring).

    Raises:
        FedMRGError: nothing recognisable at ``path`` (the message lists what was looked for), or a file in it that
            does not read.
    """
    p = Path(path)
    if not p.exists():
        raise FedMRGError(f"{p}: no such file or folder")
    if p.is_file():
        if p.name.endswith(".safetensors") and (p.parent / "config" / "config_fed_server.json").is_file():
            return _open_workspace(p.parent, global_file=p, named=p, progress=progress)
        raise FedMRGError(
            f"{p}: a model file must be a FLARE global model (`FL_global_model.safetensors`) in its server app "
            "folder (next to config/config_fed_server.json); otherwise give the folder"
        )
    if (p / EXPORT_INFO).is_file():
        return _open_export(p, progress=progress)
    if (p / "config.yaml").is_file() and (p / "shared_state.safetensors").is_file():
        return _open_run(p, progress=progress)
    for app in (p, p / "server" / "simulate_job" / "app_server", p / "workspace" / "server" / "simulate_job" /
                "app_server"):  # fmt: skip
        if (app / "config" / "config_fed_server.json").is_file():
            return _open_workspace(app, global_file=None, named=p, progress=progress)
    raise FedMRGError(
        f"{p}: no FedMRG model found: expected an exported model ({EXPORT_INFO}), a `fedmrg train` run folder "
        "(config.yaml + shared_state.safetensors), a FLARE workspace (server/simulate_job/app_server), its "
        "app_server folder, or a `fedmrg demo --out` folder (workspace/)"
    )


# ------------------------------------------------------------------------------------------------ export folder


def _open_export(p: Path, *, progress: bool) -> ModelSource:
    from fedmrg.report.run_config import load_run_config

    info = _read_json(p / EXPORT_INFO)
    if not isinstance(info, dict) or info.get("format") != "fedmrg-model":
        raise FedMRGError(f"{p / EXPORT_INFO}: not a FedMRG model description (`format` must be 'fedmrg-model')")
    version = info.get("format_version")
    if version != 1:
        raise FedMRGError(f"{p / EXPORT_INFO}: unsupported `format_version` {version!r} (this FedMRG reads 1)")
    files = [p / name for name in info.get("shared_files", [])]
    missing = [f.name for f in files if not f.is_file()]
    if not files or missing:
        raise FedMRGError(f"{p}: shared state files missing: {missing or '`shared_files` is empty'}")
    private = {}
    if info.get("site"):
        private[str(info["site"])] = p / str(info.get("private_file", ""))
        if not private[str(info["site"])].is_file():
            raise FedMRGError(
                f"{p}: the specialized adapter of site {info['site']!r} is missing ({info['private_file']})"
            )
    config = load_run_config(p / "config.yaml", progress=progress)
    return ModelSource("export", p, config, files, private, info.get("round"), info)


# ------------------------------------------------------------------------------------------------ run folder


def _open_run(p: Path, *, progress: bool) -> ModelSource:
    from fedmrg.report.checkpoint import INFO_FILE, PRIVATE_DIR, list_private_sites
    from fedmrg.report.run_config import load_run_config

    config = load_run_config(p / "config.yaml", progress=progress)
    info: dict[str, Any] = {"source": "fedmrg train run folder"}
    if (p / INFO_FILE).is_file():
        saved = _read_json(p / INFO_FILE)
        rounds = (saved.get("metrics") or {}).get("rounds") or []
        if rounds:
            info |= {"rounds": len(rounds), "metrics": rounds[-1]}
    private = {s: p / PRIVATE_DIR / f"{s}.safetensors" for s in list_private_sites(p)}
    info["sites"] = sorted(private)
    last = info.get("rounds")
    return ModelSource("run", p, config, [p / "shared_state.safetensors"], private, last - 1 if last else None, info)


# ------------------------------------------------------------------------------------------------ FLARE workspace


def _component(config: dict[str, Any], path: str) -> dict[str, Any] | None:
    for section in ("components", "executors"):
        for comp in config.get(section, []) or []:
            target = comp.get("executor", comp) if section == "executors" else comp
            if isinstance(target, dict) and target.get("path") == path:
                return target.get("args", {}) or {}
    return None


def _open_workspace(app: Path, *, global_file: Path | None, named: Path, progress: bool) -> ModelSource:
    from fedmrg.fl.learner import build_learner
    from fedmrg.fl.site_config import load_site_config
    from fedmrg.fl.state_files import load_state

    server_config_file = app / "config" / "config_fed_server.json"
    server_config = _read_json(server_config_file)
    persistor = _component(server_config, _PERSISTOR_PATH)
    if persistor is None:
        raise FedMRGError(f"{server_config_file}: no {_PERSISTOR_PATH} component; not a FedMRG job")
    if global_file is None:
        if persistor.get("state_dir"):
            raise FedMRGError(
                f"{server_config_file}: the persistor writes its models to `state_dir` {persistor['state_dir']!r}; "
                "pass the global model file from there"
            )
        global_file = app / GLOBAL_MODEL_FILES[0]
    if not global_file.is_file():
        raise FedMRGError(f"{app}: no global model {global_file.name} (did the run finish a round?)")
    job_dir, server_root = app.parent, app.parent.parent
    learner_path = str(persistor.get("learner_path") or "")
    if learner_path not in _REPORT_LEARNERS:
        raise FedMRGError(
            f"{server_config_file}: the persistor's learner is {learner_path!r}, not the FedMRG report learner "
            f"({_REPORT_LEARNERS[0]}); this job has no report model"
        )
    # the run configuration exactly as the server's persistor built the global model
    learner = build_learner(learner_path, persistor.get("learner_args") or {})
    learner.apply_site_config(load_site_config(server_root / "local", "server"))
    config = learner._load_config(progress=progress)
    _, meta = load_state(global_file)
    rnd = int(meta["round"]) if meta.get("round", "").lstrip("-").isdigit() else None

    private: dict[str, Path] = {}
    site_apps: list[Path] = []
    for site_app in sorted(server_root.parent.glob(f"*/{job_dir.name}/app_*")):
        site = site_app.name.removeprefix("app_")
        if site == "server" or not (site_app / "config" / "config_fed_client.json").is_file():
            continue
        f = _private_file(site_app, site, job_dir.name)
        if f is not None and f.is_file():
            private[site] = f
            site_apps.append(site_app)
    info: dict[str, Any] = {"source": "FLARE job", "job": job_dir.name, "sites": sorted(private)}
    synthetic = (persistor.get("learner_args") or {}).get("synthetic")
    info["data"] = (f"the generated synthetic federation {json.dumps(synthetic)} at sites without a data root of "
                    "their own" if synthetic else "each site's own data root (not recorded in the model)")  # fmt: skip
    summary = app / "summary" / "summary.json"
    if summary.is_file():
        info["summary"] = _read_json(summary)
    info["privacy_filters"] = _result_filters([app, *site_apps])
    return ModelSource("workspace", named, config, [global_file], private, rnd, info)


def _private_file(site_app: Path, site: str, job_id: str) -> Path | None:
    args = _component(_read_json(site_app / "config" / "config_fed_client.json"), _EXECUTOR_PATH)
    if args is None:
        return None
    private_dir = str(args.get("private_dir") or "")
    if not private_dir:
        root = site_app / "fedmrg_private"
    else:
        import os

        root = Path(os.path.expanduser(private_dir.format(site=site, job_id=job_id)))
        root = root if root.is_absolute() else site_app.parent.parent / root
    return root / "private" / _PRIVATE_FILE


def _result_filters(apps: list[Path]) -> list[dict[str, Any]]:
    """The task-result filters (``{"path", "args"}``, but the byte meter) in these app folders' configs, deduplicated."""
    seen: dict[str, dict[str, Any]] = {}
    for c in (c for a in apps for c in sorted(a.glob("config/config_fed_*.json"))):
        for block in _read_json(c).get("task_result_filters", []) or []:
            for f in block.get("filters", []) or []:
                if f.get("path") and "WireBytesMeter" not in f["path"]:
                    seen.setdefault(json.dumps(f, sort_keys=True), {"path": f["path"], "args": f.get("args") or {}})
    return list(seen.values())
