"""The FedMRG learner as FLARE jobs configure it: configuration overrides in the job and generated demo data.

Job config (client executor and server persistor, identical ``learner_args``)::

    "learner_path": "fedmrg.report.fl_job_learner.JobFedMRGLearner",
    "learner_args": {
        "config": "default.yaml",
        "overrides": {"training": {"batch_size": 8}, "generation": {"max_new_tokens": 48}},
        "synthetic": {"num_studies": 240, "sites": 3, "unseen_sites": 1, "image_size": 128, "seed": 0},
        "local_steps": 10, "validate_max_studies": 8
    }

``overrides`` are merged (recursively, mapping by mapping) into the run-configuration YAML, so a job variant changes
a few values without copying the YAML. ``synthetic``: when the site has no data root configured, every site generates
the same synthetic federation deterministically (:func:`fedmrg.data.synthetic_federation.ensure_synthetic_federation`)
and trains on its share; a configured data root always wins and must exist.

A site's own model directories come from its ``local/fedmrg_site.json`` (never from the job), key ``model_paths``:
``{"decoder.path": "/models/llama2", "encoder.path": "/models/resnet101"}`` (dotted keys of the run configuration
that name a model directory; absolute paths, ``~`` allowed, or a built-in keyword). :meth:`JobFedMRGLearner.
apply_site_config` applies them before the configuration is first resolved, at every site (from ``setup``) and on
the server (:class:`~fedmrg.fl.shared_state_persistor.SharedStatePersistor`, from the server kit's
``local/fedmrg_site.json``). Every participant must hold the same architecture (the same model files): a site whose
model has other shared keys or shapes refuses the global model, naming the missing / unknown keys.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedmrg.errors import ConfigError
from fedmrg.fl.site_config import SITE_CONFIG_FILE
from fedmrg.report.fl_learner import FedMRGLearner


def merge_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in: nested mappings merge key by key, other values replace."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_overrides(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def model_path_keys() -> list[str]:
    """Dotted run-configuration keys that name a model directory (``decoder.path``, ``encoder.path``).

    The fields of the model configuration's sections declared with ``metadata={"path": "dir"}``.
    """
    from fedmrg.report.config import FedMRGConfig

    keys = []
    for section, tp in typing.get_type_hints(FedMRGConfig).items():
        if dataclasses.is_dataclass(tp):
            keys += [f"{section}.{f.name}" for f in dataclasses.fields(tp) if f.metadata.get("path") == "dir"]
    return sorted(keys)


def check_model_paths(value: Any) -> dict[str, str]:
    """``model_paths`` of a ``fedmrg_site.json`` checked: known keys, existing directories (or built-in keywords).

    Returns ``{dotted key: absolute directory or keyword}``; ConfigError naming ``fedmrg_site.json`` and the key.
    """
    from fedmrg.report.run_config import BUILTIN_KEYWORDS

    where = f"{SITE_CONFIG_FILE} `model_paths`"
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must map a dotted key to a directory, got {type(value).__name__}")
    allowed = model_path_keys()
    out = {}
    for key, path in value.items():
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}; allowed: {', '.join(allowed)}")
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{where}: `{key}` must be a non-empty str, got {path!r}")
        if path in BUILTIN_KEYWORDS:
            out[key] = path
            continue
        expanded = Path(os.path.expanduser(path))
        if not expanded.is_absolute():
            raise ConfigError(f"{where}: `{key}` must be an absolute path (or {list(BUILTIN_KEYWORDS)}), got {path!r}")
        if not expanded.is_dir():
            raise ConfigError(f"{where}: `{key}`: directory not found: {expanded}")
        out[key] = str(expanded)
    return out


class JobFedMRGLearner(FedMRGLearner):
    """:class:`FedMRGLearner` with job-level configuration overrides and on-demand synthetic data.

    Args:
        config: run configuration YAML path or packaged name (see :class:`FedMRGLearner`).
        overrides: nested mapping merged into the YAML's content (e.g. ``{"training": {"batch_size": 4}}``).
        synthetic: fields of :class:`~fedmrg.data.synthetic_federation.SyntheticSpec`; None = a data root is required.
        local_steps, validate_max_studies: as in :class:`FedMRGLearner`.
        torch_threads: CPU threads of this site's process (``torch.set_num_threads``); 0 = torch's default (every
            core). Several simulated sites on one machine oversubscribe the cores without it (1 per site is ~10x
            faster than the default with 3 sites on 2 cores). A site's ``fedmrg_site.json`` key ``torch_threads`` wins.
    """

    def __init__(
        self,
        config: str = "default.yaml",
        overrides: dict[str, Any] | None = None,
        synthetic: dict[str, Any] | None = None,
        local_steps: int | None = None,
        validate_max_studies: int = 16,
        torch_threads: int = 0,
    ):
        super().__init__(config=config, local_steps=local_steps, validate_max_studies=validate_max_studies)
        if not isinstance(torch_threads, int) or torch_threads < 0:
            raise ConfigError(f"`torch_threads` must be an int >= 0, got {torch_threads!r}")
        self.torch_threads = torch_threads
        if overrides is not None and not isinstance(overrides, dict):
            raise ConfigError(f"`overrides` must be a mapping, got {type(overrides).__name__}")
        if synthetic is not None and not isinstance(synthetic, dict):
            raise ConfigError(f"`synthetic` must be a mapping, got {type(synthetic).__name__}")
        self.overrides = overrides or {}
        self.synthetic = synthetic
        self.model_paths: dict[str, str] = {}

    def apply_site_config(self, config: Mapping[str, Any]) -> None:
        """Apply the settings of a participant's own ``fedmrg_site.json`` that shape the model: ``model_paths``.

        Called before the run configuration is first resolved: by :meth:`setup` at a site, by
        :class:`~fedmrg.fl.shared_state_persistor.SharedStatePersistor` on the server. Other keys are ignored here.
        ConfigError (naming ``fedmrg_site.json`` and the key) on an unknown key or a missing directory.
        """
        paths = check_model_paths(config.get("model_paths") or {})
        if paths != self.model_paths:
            self.model_paths = paths
            self._run_config = None  # resolved again with this site's directories

    def _load_config(self, *, progress: bool = False) -> Any:
        """The run configuration, resolved once (``progress``: show the built-in models' build on stderr)."""
        if self._run_config is None:
            from fedmrg.config import load_yaml
            from fedmrg.report.run_config import packaged_config, run_config_from_dict

            path = Path(self.config)
            path = path if path.is_file() else packaged_config(self.config)
            data = merge_overrides(load_yaml(path), self.overrides)
            source = str(path)
            for dotted, value in self.model_paths.items():  # the site's own directories win over the job's
                section, key = dotted.split(".")
                data.setdefault(section, {})[key] = value
                source = f"{path} with `model_paths` of {SITE_CONFIG_FILE}"
            self._run_config = run_config_from_dict(data, source=source, base_dir=path.parent, progress=progress)
        return self._run_config

    def setup(self, site_name: str, workspace_dir: str, config: dict[str, Any]) -> None:
        self.apply_site_config(config)
        threads = int(config.get("torch_threads", self.torch_threads))
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        if not config.get("data_root") and self.synthetic is not None:
            from fedmrg.data.synthetic_federation import SyntheticSpec, ensure_synthetic_federation

            try:
                spec = SyntheticSpec(**self.synthetic)
            except TypeError as e:
                raise ConfigError(f"`synthetic`: {e}") from e
            config = dict(config, data_root=str(ensure_synthetic_federation(spec)))
        elif config.get("data_root") and not Path(config["data_root"]).is_dir():
            raise ConfigError(f"site {site_name!r}: data root {config['data_root']} does not exist")
        super().setup(site_name, workspace_dir, config)
