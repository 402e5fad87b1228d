"""Where a site's data lives and its local runtime settings, decided on the site, not in the job.

The job gives a template (``data_root_template`` of the executor, e.g. ``"/data/fedmrg/{site}"``); a hospital can
override it without editing the job, in this order (first found wins):

1. environment variable ``FEDMRG_DATA_ROOT_<SITE>`` (site name upper-cased, other characters than letters and
   digits replaced by ``_``; ``site-1`` -> ``FEDMRG_DATA_ROOT_SITE_1``);
2. environment variable ``FEDMRG_DATA_ROOT`` (useful in a provisioned site; may contain ``{site}``);
3. ``data_root`` in the site-local file ``<site workspace>/local/fedmrg_site.json`` (the folder of the startup kit
   that also holds ``privacy.json`` and ``resources.json``);
4. the job's ``data_root_template``.

Every value may contain ``{site}`` (replaced by the client name) and ``~``. A relative path is taken relative to the
site's workspace root. An empty result means "no data root" (the learner decides whether that is an error).

``fedmrg_site.json`` is a JSON object; besides ``data_root`` its keys (e.g. ``"device": "cuda:1"``) are handed to the
learner's ``setup`` as site-local runtime settings and never leave the site. Two keys are the executor's own:

- ``role``: ``"train"`` (default) or ``"evaluate"``: an evaluation-only site (e.g. a hospital that has not joined
  training, the benchmark's *unseen* site) declines ``train`` tasks and only takes part in cross-site evaluation;
- ``test_split``: the split the cross-site ``validate`` task evaluates at this site, instead of the job's;
- ``model_paths``: ``{"decoder.path": "/models/llama2", ...}``, this participant's model directories (dotted keys of
  the run configuration; applied by learners with an ``apply_site_config`` method, e.g.
  :class:`~fedmrg.report.fl_job_learner.JobFedMRGLearner`, also on the server by
  :class:`~fedmrg.fl.shared_state_persistor.SharedStatePersistor`). Every participant must hold the same
  architecture (the same model files): a different one is refused when the global model arrives;
- ``sites``: ``{site name: {key: value}}``, settings for one site that win over the top-level ones. The simulator
  copies one ``local/`` folder to every simulated site, so this is how a simulated site gets settings of its own.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedmrg.errors import ConfigError

SITE_CONFIG_FILE = "fedmrg_site.json"
ROLES = ("train", "evaluate")
ENV_DATA_ROOT = "FEDMRG_DATA_ROOT"


def site_env_var(site_name: str) -> str:
    """``FEDMRG_DATA_ROOT_<SITE>`` for ``site_name`` (``site-1`` -> ``FEDMRG_DATA_ROOT_SITE_1``)."""
    return f"{ENV_DATA_ROOT}_{re.sub(r'[^A-Za-z0-9]', '_', site_name).upper()}"


def load_site_config(local_dir: str | Path, site_name: str | None = None) -> dict[str, Any]:
    """Read ``<local_dir>/fedmrg_site.json``; ``{}`` when absent. ConfigError naming the file when malformed.

    With ``site_name``, that site's section of ``sites`` is merged over the top level (and ``sites`` removed).
    """
    path = Path(local_dir) / SITE_CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not readable as JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: must hold a JSON object, got {type(cfg).__name__}")
    sections = cfg.get("sites", {})
    if not isinstance(sections, dict) or not all(isinstance(v, dict) for v in sections.values()):
        raise ConfigError(f"{path}: `sites` must map a site name to an object of settings, got {sections!r}")
    if site_name is not None:
        cfg = {k: v for k, v in cfg.items() if k != "sites"} | sections.get(site_name, {})
    if "data_root" in cfg and not isinstance(cfg["data_root"], str):
        raise ConfigError(f"{path}: `data_root` must be a str, got {cfg['data_root']!r}")
    if cfg.get("role", "train") not in ROLES:
        raise ConfigError(f"{path}: `role` must be one of {list(ROLES)}, got {cfg['role']!r}")
    return cfg


def resolve_data_root(
    template: str,
    site_name: str,
    *,
    site_config: Mapping[str, Any],
    environ: Mapping[str, str],
    base_dir: str | Path,
) -> tuple[str, str]:
    """The site's data root and where it came from (for the log).

    Returns:
        ``(path, source)``; ``path`` is absolute or ``""``; ``source`` names the environment variable, the site file
        or ``"job data_root_template"``.
    """
    per_site = site_env_var(site_name)
    for value, source in (
        (environ.get(per_site), f"${per_site}"),
        (environ.get(ENV_DATA_ROOT), f"${ENV_DATA_ROOT}"),
        (site_config.get("data_root"), SITE_CONFIG_FILE),
        (template, "job data_root_template"),
    ):
        if value:
            return _expand(value, site_name, base_dir, source), source
    return "", "none"


def _expand(value: str, site_name: str, base_dir: str | Path, source: str) -> str:
    try:
        text = value.format(site=site_name)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"data root {value!r} from {source}: only the placeholder {{site}} is allowed ({e})") from e
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = Path(base_dir) / path
    return str(path)
