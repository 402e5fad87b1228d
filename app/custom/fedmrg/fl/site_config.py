"""A participant's own settings: ``<workspace>/local/fedmrg_site.json``, typed, strict, read in one place.

The file sits in the ``local/`` folder of a site's (or the server's) startup kit, beside FLARE's ``privacy.json`` and
``resources.json``. It holds what a hospital decides on its own, never sent and never in the job. Every key
(documented for users in ``docs/configuration.md``):

======================  =====================  =======================================================================
key                     type                   meaning
======================  =====================  =======================================================================
``data_root``           str                    the site's data folder (``{site}`` and ``~`` expanded; relative to the
                                               workspace root); see "data root" below
``role``                ``"train"`` |          ``"evaluate"``: an evaluation-only site declines ``train`` tasks and
                        ``"evaluate"``         only takes part in cross-site evaluation (default ``"train"``)
``test_split``          str                    the split the cross-site ``validate`` task evaluates here (default:
                                               the job's ``test_split``)
``device``              str                    torch device of this site's training: ``cpu``, ``cuda``, ``cuda:N``,
                                               ``mps`` (default: the job's)
``torch_threads``       int >= 0               CPU threads of this site's process (0: torch's default; default: the
                                               job's)
``model_paths``         {str: str}             this participant's model folders by dotted run-configuration key
                                               (``{"decoder.path": "/models/llama2"}``); the learner checks the keys
``dp_sgd``              object                 patient-level DP-SGD for this site
                                               (:class:`~fedmrg.privacy.dp_config.DPSGDConfig`; ``enabled`` required)
``sites``               {site: object}         per-site sections with the keys above (not ``sites``); a section wins
                                               over the top level, key by key (``dp_sgd`` and ``model_paths`` are
                                               merged key by key too)
======================  =====================  =======================================================================

The simulator copies one ``local/`` folder to every simulated site: ``sites`` is how a simulated site gets settings
of its own. In a provisioned federation each kit has its own file.

What is refused (:class:`~fedmrg.errors.ConfigError`; the message names the file, the dotted key and the remedy):

- an unknown key, at the top level or in a section (``"dp-sgd"``, ``"dp_sdg"``, ``"devise"``), with the closest
  allowed key when there is one, and unknown keys inside ``dp_sgd``;
- a wrong type or value (``"torch_threads": "2"``, ``"role": "observer"``, ``"device": "gpu"``);
- a section for a site that is not a participant: when the caller knows the participants (a site's executor passes
  the job's clients, which FLARE gives each client at START_RUN) every name under ``sites`` must be one of them;
  without a list (``participants=None``) names are not checked (the server's persistor: it reads its own section only,
  and every site checks the names);
- contradictory settings: ``dp_sgd`` without an explicit ``enabled`` (``{"noise_multiplier": 1.0}`` alone would
  otherwise read as "DP off"), and every rule of :class:`~fedmrg.privacy.dp_config.DPSGDConfig` (e.g. both
  ``noise_multiplier`` and ``target_epsilon``).

Each participant checks the top level and its own section (a typo in ``sites.site-2`` stops site-2, as a typo in
hospital B's own file stops hospital B); a section whose name is no participant belongs to nobody and stops every
site that knows the participants.

Data root: the job gives a template (``data_root_template`` of the executor, e.g. ``"/data/fedmrg/{site}"``); a
hospital overrides it without editing the job, first found wins:

1. environment variable ``FEDMRG_DATA_ROOT_<SITE>`` (site name upper-cased, other characters than letters and
   digits replaced by ``_``; ``site-1`` -> ``FEDMRG_DATA_ROOT_SITE_1``);
2. environment variable ``FEDMRG_DATA_ROOT`` (useful in a provisioned site; may contain ``{site}``);
3. ``data_root`` of ``fedmrg_site.json`` (the site's section, then the top level);
4. the job's ``data_root_template``.

The API is generic (any :class:`~fedmrg.fl.learner.SharedStateLearner`): :func:`load_site_config` returns a frozen
:class:`SiteConfig` that the executor hands to ``learner.setup``; a learner that cannot honour a setting it is given
(``model_paths``, ``dp_sgd``) must raise ConfigError in ``setup`` (the executor also refuses a ``dp_sgd`` site whose
learner does not declare ``honours_dp_sgd = True``, see :mod:`fedmrg.fl.shared_state_executor`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fedmrg.config import from_dict
from fedmrg.errors import ConfigError
from fedmrg.privacy.dp_config import DPSGDConfig

SITE_CONFIG_FILE = "fedmrg_site.json"
ROLES = ("train", "evaluate")
ENV_DATA_ROOT = "FEDMRG_DATA_ROOT"
#: where every key is documented (named in each refusal)
DOCS = "docs/configuration.md"

Role = Literal["train", "evaluate"]
_DEVICE = re.compile(r"^(cpu|mps|(cuda|xpu)(:\d+)?)$")


@dataclass(frozen=True)
class SiteSettings:
    """The keys of ``fedmrg_site.json`` at the top level or in one ``sites`` section; None = not set here.

    The file is one ``SiteSettings`` plus ``sites``: ``{site name: SiteSettings}``, each level loaded through
    :func:`fedmrg.config.from_dict`. See the module docstring for each key's meaning.
    """

    data_root: str | None = None
    role: Role | None = None
    test_split: str | None = None
    device: str | None = None
    torch_threads: int | None = None
    model_paths: dict[str, str] | None = None
    dp_sgd: DPSGDConfig | None = None

    def __post_init__(self) -> None:
        if self.test_split is not None and not self.test_split:
            raise ValueError("`test_split` must be a non-empty str")
        if self.device is not None and not _DEVICE.match(self.device):
            raise ValueError(f"`device` must be cpu, cuda, cuda:N, xpu[:N] or mps, got {self.device!r}")
        if self.torch_threads is not None and self.torch_threads < 0:
            raise ValueError(f"`torch_threads` must be >= 0 (0: torch's default), got {self.torch_threads}")
        for key, path in (self.model_paths or {}).items():
            if not path:
                raise ValueError(f"`model_paths.{key}` must be a non-empty str")


@dataclass(frozen=True)
class SiteConfig:
    """One participant's resolved settings (its ``sites`` section over the top level), handed to ``learner.setup``.

    Attributes:
        site: the participant's name (FLARE identity), e.g. ``"site-1"``.
        source: the file read (``""``: none, every setting at its default).
        explicit_keys: the keys the file sets for this site (after merging its section), sorted.
        data_root: the data folder; from :func:`load_site_config` the file's raw value (``""``: not set), from the
            executor the resolved absolute path (env > file > job template; ``""``: none).
        data_root_source: where ``data_root`` came from (an environment variable, ``fedmrg_site.json``, the job
            template, ``"none"``); set by the executor.
        role: ``"train"`` or ``"evaluate"`` (evaluation-only site).
        test_split: the site's split for cross-site evaluation; None: the job's.
        device: torch device for this site; None: the job's.
        torch_threads: CPU threads for this site's process (0: torch's default); None: the job's.
        model_paths: model folders by dotted run-configuration key (``{}``: the job's).
        dp_sgd: patient-level DP-SGD settings of the site; None: the job's.
    """

    site: str
    source: str = ""
    explicit_keys: tuple[str, ...] = ()
    data_root: str = ""
    data_root_source: str = ""
    role: Role = "train"
    test_split: str | None = None
    device: str | None = None
    torch_threads: int | None = None
    model_paths: dict[str, str] = field(default_factory=dict)
    dp_sgd: DPSGDConfig | None = None

    @property
    def requires_dp_sgd(self) -> bool:
        """Whether the site's own configuration asks for DP-SGD (a learner must then train with it, or refuse)."""
        return self.dp_sgd is not None and self.dp_sgd.enabled

    def where(self, key: str) -> str:
        """``"<file> `key`"`` (or ``fedmrg_site.json `key``` without a file) for error messages."""
        return f"{self.source or SITE_CONFIG_FILE} `{key}`"


def site_env_var(site_name: str) -> str:
    """``FEDMRG_DATA_ROOT_<SITE>`` for ``site_name`` (``site-1`` -> ``FEDMRG_DATA_ROOT_SITE_1``)."""
    return f"{ENV_DATA_ROOT}_{re.sub(r'[^A-Za-z0-9]', '_', site_name).upper()}"


def load_site_config(
    local_dir: str | Path, site_name: str, *, participants: Collection[str] | None = None
) -> SiteConfig:
    """Read, check and resolve ``<local_dir>/fedmrg_site.json`` for ``site_name``.

    Args:
        local_dir: the participant's ``local/`` folder (FLARE ``workspace.get_site_config_dir()``).
        site_name: this participant's name; its ``sites`` section (if any) wins over the top level.
        participants: every participant of the job (e.g. the job's clients); names under ``sites`` must be among
            them. None: section names are not checked (see the module docstring).

    Returns:
        the resolved :class:`SiteConfig` (all defaults, ``source=""``, when the file is absent).

    Raises:
        ConfigError: naming the file, the dotted key and the remedy (see the module docstring for what is refused).
    """
    path = Path(local_dir) / SITE_CONFIG_FILE
    if not path.is_file():
        return SiteConfig(site=site_name)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not readable as JSON: {e}; fix the file (keys: {DOCS})") from e
    return parse_site_config(raw, site_name, participants=participants, source=str(path))


def parse_site_config(
    raw: Any, site_name: str, *, participants: Collection[str] | None = None, source: str = SITE_CONFIG_FILE
) -> SiteConfig:
    """:func:`load_site_config` on an already-parsed JSON value (``source`` names it in messages)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: must hold a JSON object, got {type(raw).__name__}; see {DOCS}")
    sections = raw.get("sites", {})
    if not isinstance(sections, dict):
        raise ConfigError(
            f"{source}: `sites` must map a site name to an object of settings, got {type(sections).__name__} "
            f'{sections!r}; write {{"sites": {{"site-1": {{...}}}}}} (see {DOCS})'
        )
    for name, section in sections.items():
        if not isinstance(section, dict):
            raise ConfigError(
                f"{source}: `sites.{name}` must be an object of settings, got {type(section).__name__} {section!r}"
            )
    _check_keys(raw, "", source, allowed=_FILE_KEYS)
    top = {k: v for k, v in raw.items() if k != "sites"}
    from_dict_checked(SiteSettings, top, source)  # types and values of the top level
    if participants is not None:
        known = set(participants) | {site_name}
        for name in sections:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(
                    f"{source}: `sites.{name}`: no participant of this job is named {name!r} (participants: "
                    f"{', '.join(sorted(known))}); {hint}rename the section to a participant's name or remove it"
                )
    # this site's section: its keys, types and values, then merged over the top level (other participants' sections
    # are theirs: each site checks its own, as each hospital of a provisioned federation has its own file)
    section = sections.get(site_name, {})
    _check_keys(section, f"sites.{site_name}.", source, allowed=_SITE_KEYS)
    from_dict_checked(SiteSettings, section, source, f"sites.{site_name}.")
    settings, keys = _merged(top, section, source, f"sites.{site_name}." if site_name in sections else "")
    return SiteConfig(
        site=site_name,
        source=source,
        explicit_keys=keys,
        data_root=settings.data_root or "",
        role=settings.role or "train",
        test_split=settings.test_split,
        device=settings.device,
        torch_threads=settings.torch_threads,
        model_paths=dict(settings.model_paths or {}),
        dp_sgd=settings.dp_sgd,
    )


def from_dict_checked(cls: type, data: dict[str, Any], source: str, prefix: str = "") -> Any:
    """:func:`fedmrg.config.from_dict` with the DP-SGD keys named as in this file and a remedy in the message."""
    try:
        return from_dict(cls, data, source=source, _prefix=prefix)
    except ConfigError as e:
        # DPSGDConfig names its keys as in the run configuration (`privacy.dp_sgd.*`); here they are `dp_sgd.*`
        message = (
            str(e).replace("`privacy.dp_sgd.", f"`{prefix}dp_sgd.").replace("`privacy.dp_sgd`", f"`{prefix}dp_sgd`")
        )
        raise ConfigError(f"{message}; fix it in {source} (every key: {DOCS})") from e


_SITE_KEYS = tuple(f.name for f in dataclasses.fields(SiteSettings))
_FILE_KEYS = (*_SITE_KEYS, "sites")
_DP_KEYS = tuple(f.name for f in dataclasses.fields(DPSGDConfig))


def _check_keys(data: dict[str, Any], prefix: str, source: str, *, allowed: tuple[str, ...]) -> None:
    """Refuse unknown keys (with the closest allowed one), also inside ``dp_sgd``."""
    for key in data:
        if key not in allowed:
            _unknown(key, prefix, source, allowed)
    dp = data.get("dp_sgd")
    if isinstance(dp, dict):
        for key in dp:
            if key not in _DP_KEYS:
                _unknown(key, f"{prefix}dp_sgd.", source, _DP_KEYS)


def _unknown(key: str, prefix: str, source: str, allowed: tuple[str, ...]) -> None:
    close = difflib.get_close_matches(key.replace("-", "_"), allowed, n=1, cutoff=0.6)
    hint = f"did you mean `{prefix}{close[0]}`? " if close else ""
    raise ConfigError(
        f"{source}: unknown key `{prefix}{key}`; {hint}correct or remove it (allowed: {', '.join(allowed)}; "
        f"every key: {DOCS}). Unknown keys are refused so that a typo never switches a setting (e.g. DP) off."
    )


def _merged(top: dict[str, Any], section: dict[str, Any], source: str, prefix: str) -> tuple[SiteSettings, tuple]:
    """The section over the top level (mappings key by key), typed; refuses contradictions."""
    merged = dict(top)
    for key, value in section.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merged[key] | value
        else:
            merged[key] = value
    dp = merged.get("dp_sgd")
    if isinstance(dp, dict) and "enabled" not in dp:
        where = "dp_sgd" if "dp_sgd" in top else f"{prefix}dp_sgd"
        raise ConfigError(
            f'{source}: `{where}` has no `enabled`: say `"enabled": true` to train this site with DP-SGD or '
            f'`"enabled": false` to leave it off (refused rather than read as off; see {DOCS})'
        )
    settings = from_dict_checked(SiteSettings, merged, f"{source} ({prefix.rstrip('.') or 'top level'})")
    return settings, tuple(sorted(merged))


def resolve_data_root(
    template: str,
    site_name: str,
    *,
    site_config: SiteConfig,
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
        (site_config.data_root, SITE_CONFIG_FILE),
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
