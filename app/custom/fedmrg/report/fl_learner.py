"""FedMRG as a :class:`~fedmrg.fl.learner.SharedStateLearner`: the bridge between FLARE and :class:`LocalTrainer`.

One class, configured by the job (client executor and server persistor, identical ``learner_args``)::

    "learner_path": "fedmrg.report.fl_learner.FedMRGLearner",
    "learner_args": {
        "config": "default.yaml",
        "overrides": {"training": {"batch_size": 8}, "generation": {"max_new_tokens": 48}},
        "synthetic": {"num_studies": 240, "sites": 3, "unseen_sites": 1, "image_size": 128, "seed": 0},
        "local_steps": 10, "validate_max_studies": 8, "torch_threads": 1
    }

``config`` is a run-configuration YAML path or the name of a packaged one; ``overrides`` are merged into it (mapping
by mapping), so a job variant changes a few values without copying the YAML. ``synthetic``: when the site has no data
root, every site generates the same synthetic federation deterministically
(:func:`fedmrg.data.synthetic_federation.ensure_synthetic_federation`) and trains on its share; a configured data root
always wins and must exist. Otherwise the data root must be a federated dataset holding this site (``fedmrg data
prepare``).

The site's own ``fedmrg_site.json`` (:class:`~fedmrg.fl.site_config.SiteConfig`) is honoured, or refused:

- ``model_paths``: ``{"decoder.path": "/models/llama2", "encoder.path": "/models/resnet101"}`` (dotted keys of the run
  configuration naming a model directory: :func:`model_path_keys`; absolute paths, ``~`` allowed, or a built-in
  keyword) replace the job's, at every site (``setup``) and on the server
  (:class:`~fedmrg.fl.shared_state_persistor.SharedStatePersistor` calls :meth:`FedMRGLearner.apply_site_config`).
  Every participant must hold the same architecture: a site whose model has other shared keys or shapes refuses the
  global model, naming the missing / unknown keys;
- ``dp_sgd``: the site's patient-level DP-SGD (:func:`fedmrg.privacy.dp_config.apply_site_dp_sgd`); a site may
  switch it on or tune it, never switch off the job's; a setting the model cannot honour (e.g. with the contrastive
  loss) is refused at START_RUN;
- ``device``, ``torch_threads`` (win over the job's), ``role: "evaluate"`` (no training data, no trainer).

Shared states travel as numpy float32 dicts; the private specialized adapter S2 is saved as safetensors in the folder
FLARE gives (with the DP-SGD ledger); memory-bank features travel as the extra payload ``"bank"`` (patient-derived:
count them in the privacy design).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedmrg.errors import ConfigError
from fedmrg.fl.learner import TrainOutcome
from fedmrg.fl.site_config import SITE_CONFIG_FILE, SiteConfig
from fedmrg.privacy.dp_config import DPSGDConfig

if TYPE_CHECKING:
    from fedmrg.data.dataset_dir import FederatedDataset
    from fedmrg.report.config import FedMRGConfig
    from fedmrg.report.model import FedMRGModel
    from fedmrg.report.run_config import RunConfig
    from fedmrg.report.trainer import LocalTrainer

BANK_KEY = "bank"
PRIVATE_FILE = "private_state.safetensors"


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


def check_model_paths(value: Any, *, where: str = f"{SITE_CONFIG_FILE} `model_paths`") -> dict[str, str]:
    """``model_paths`` of a ``fedmrg_site.json`` checked: known keys, existing directories (or built-in keywords).

    Args:
        value: ``{dotted key: directory}``.
        where: how messages name the setting (the file and the key).

    Returns:
        ``{dotted key: absolute directory or keyword}``; ConfigError naming ``where`` and the key otherwise.
    """
    from fedmrg.report.run_config import BUILTIN_KEYWORDS

    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must map a dotted key to a directory, got {type(value).__name__}")
    allowed = model_path_keys()
    out = {}
    for key, path in value.items():
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}; allowed: {', '.join(allowed)}; correct or remove it")
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


class FedMRGLearner:
    """A site's FedMRG trainer behind the FL learner protocol, configured by the job and the site's own file.

    Args:
        config: run configuration YAML path, or a packaged config name (``"default.yaml"``).
        overrides: nested mapping merged into the YAML's content (e.g. ``{"training": {"batch_size": 4}}``).
        synthetic: fields of :class:`~fedmrg.data.synthetic_federation.SyntheticSpec`; None = a data root is required.
        local_steps: optimizer steps per round (None: the config's ``training.local_steps`` / ``local_epochs``).
        validate_max_studies: studies generated per validation call (generation is slow on CPU); 0 = all.
        torch_threads: CPU threads of this site's process (``torch.set_num_threads``); 0 = torch's default (every
            core). Several simulated sites on one machine oversubscribe the cores without it (1 per site is ~10x
            faster than the default with 3 sites on 2 cores). A site's ``fedmrg_site.json`` key ``torch_threads`` wins.
    """

    #: trains with DP-SGD when the site's configuration enables it, and reports ``dp/epsilon`` (see fedmrg.fl.learner)
    honours_dp_sgd = True

    def __init__(
        self,
        config: str = "default.yaml",
        overrides: dict[str, Any] | None = None,
        synthetic: dict[str, Any] | None = None,
        local_steps: int | None = None,
        validate_max_studies: int = 16,
        torch_threads: int = 0,
    ) -> None:
        if not isinstance(config, str) or not config:
            raise ConfigError(f"`config` must be a non-empty str (a YAML path or a packaged name), got {config!r}")
        if overrides is not None and not isinstance(overrides, dict):
            raise ConfigError(f"`overrides` must be a mapping, got {type(overrides).__name__}")
        if synthetic is not None and not isinstance(synthetic, dict):
            raise ConfigError(f"`synthetic` must be a mapping, got {type(synthetic).__name__}")
        if local_steps is not None and (isinstance(local_steps, bool) or not isinstance(local_steps, int)
                                        or local_steps < 1):  # fmt: skip
            raise ConfigError(f"`local_steps` must be an int >= 1 or null, got {local_steps!r}")
        if (
            isinstance(validate_max_studies, bool)
            or not isinstance(validate_max_studies, int)
            or validate_max_studies < 0
        ):
            raise ConfigError(f"`validate_max_studies` must be an int >= 0 (0: all), got {validate_max_studies!r}")
        if isinstance(torch_threads, bool) or not isinstance(torch_threads, int) or torch_threads < 0:
            raise ConfigError(f"`torch_threads` must be an int >= 0, got {torch_threads!r}")
        # stored unchanged: the job API exports the learner arguments by reading them back
        self.config = config
        self.overrides = overrides
        self.synthetic = synthetic
        self.local_steps = local_steps
        self.validate_max_studies = validate_max_studies
        self.torch_threads = torch_threads

        self.model_paths: dict[str, str] = {}
        #: set True by whoever runs the statistics round after the last FL round (the FLARE executor of a job with
        #: the ``statistics`` task, ``fedmrg bench``); without it ``training.head_calibration`` is refused at setup
        self.runs_statistics_round = False
        self._site_config: SiteConfig | None = None
        self._run_config: RunConfig | None = None
        self._model: FedMRGModel | None = None
        self._trainer: LocalTrainer | None = None
        self._private: dict[str, torch.Tensor] | None = None
        self._site = ""
        self._data: FederatedDataset | None = None

    # ------------------------------------------------------------------ configuration
    def apply_site_config(self, config: SiteConfig) -> None:
        """Take a participant's own settings before the run configuration is first resolved.

        Called by :meth:`setup` at a site and by :class:`~fedmrg.fl.shared_state_persistor.SharedStatePersistor` on
        the server. ``model_paths`` are checked here (ConfigError naming the file and the key); ``dp_sgd`` and
        ``device`` are applied when the configuration is resolved.
        """
        paths = check_model_paths(config.model_paths, where=config.where("model_paths"))
        if paths != self.model_paths or config != self._site_config:
            self.model_paths = paths
            self._site_config = config
            self._run_config = None  # resolved again with this participant's settings

    def _load_config(self, *, progress: bool = False) -> RunConfig:
        """The run configuration (YAML + ``overrides`` + the site's settings), resolved once.

        ``progress``: show the built-in models' build on stderr.
        """
        if self._run_config is None:
            from fedmrg.config import load_yaml
            from fedmrg.report.run_config import packaged_config, run_config_from_dict

            path = Path(self.config)
            path = path if path.is_file() else packaged_config(self.config)
            data = merge_overrides(load_yaml(path), self.overrides or {})
            source = f"{path} with the job's learner `overrides`" if self.overrides else str(path)
            for dotted, value in self.model_paths.items():  # the site's own directories win over the job's
                section, key = dotted.split(".")
                data.setdefault(section, {})[key] = value
                source = f"{path} with `model_paths` of {SITE_CONFIG_FILE}"
            cfg = run_config_from_dict(data, source=source, base_dir=path.parent, progress=progress)
            site = self._site_config
            if site is not None and site.dp_sgd is not None:
                cfg.model = self._with_site_dp(cfg, site.dp_sgd, site)
            if site is not None and site.device is not None:
                cfg.training = dataclasses.replace(cfg.training, device=site.device)
            self._run_config = cfg
        return self._run_config

    @staticmethod
    def _with_site_dp(cfg: RunConfig, dp: DPSGDConfig, site: SiteConfig) -> FedMRGConfig:
        """The model configuration with the site's DP-SGD settings; the job's DP-SGD is never switched off."""
        from fedmrg.privacy.dp_config import apply_site_dp_sgd

        if cfg.model.privacy.dp_sgd.enabled and not dp.enabled:
            raise ConfigError(
                f"{site.where('dp_sgd.enabled')} is false but the job enables DP-SGD (`privacy.dp_sgd.enabled`): a "
                f"site may tune DP-SGD, not switch it off; set `enabled` to true or remove `dp_sgd` from the file"
            )
        return apply_site_dp_sgd(cfg.model, dp, site=site.site, source=site.source or SITE_CONFIG_FILE)

    def _build_model(self) -> FedMRGModel:
        from fedmrg.report.model import FedMRGModel

        cfg = self._load_config()
        torch.manual_seed(cfg.training.seed)  # identical initial model on the server and every site
        return FedMRGModel(cfg.model)

    @staticmethod
    def _to_numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().float().numpy() for k, v in state.items()}

    @staticmethod
    def _to_torch(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in state.items()}

    def _data_root(self, site_name: str, config: SiteConfig) -> str:
        """The site's data folder: the configured one (must exist), else the synthetic federation, else an error."""
        if config.data_root:
            if not Path(config.data_root).is_dir():
                raise ConfigError(
                    f"site {site_name!r}: data root {config.data_root} (from {config.data_root_source or 'the site'})"
                    f" does not exist"
                )
            return config.data_root
        if self.synthetic is None:
            raise ConfigError(
                f"site {site_name!r}: no data root; set `data_root` in {config.source or SITE_CONFIG_FILE}, "
                f"$FEDMRG_DATA_ROOT or the job's `data_root_template`"
            )
        from fedmrg.data.synthetic_federation import SyntheticSpec, ensure_synthetic_federation

        try:
            spec = SyntheticSpec(**self.synthetic)
        except TypeError as e:
            raise ConfigError(f"`synthetic`: {e}") from e
        return str(ensure_synthetic_federation(spec))

    # ------------------------------------------------------------------ protocol
    def setup(self, site_name: str, workspace_dir: str, config: SiteConfig) -> None:
        from fedmrg.data.dataset_dir import FederatedDataset
        from fedmrg.report.data_loading import open_split
        from fedmrg.report.trainer import LocalTrainer

        self.apply_site_config(config)
        threads = config.torch_threads if config.torch_threads is not None else self.torch_threads
        if threads > 0:
            torch.set_num_threads(threads)
        cfg = self._load_config()  # every configuration error before any data is touched
        if self.needs_statistics_round() and not self.runs_statistics_round:
            raise ConfigError(
                f"site {site_name!r}: `training.head_calibration: {cfg.training.head_calibration}` needs the "
                "statistics round after the last FL round, which this job does not run (its executor has no "
                "`statistics_task`; jobs/fedmrg has one); add it, or set `training.head_calibration: none`"
            )
        self._site = site_name
        self._data = FederatedDataset.open(self._data_root(site_name, config))
        self._model = self._build_model()
        if config.role == "evaluate":  # an evaluation-only site (e.g. unseen): no training data, no trainer
            return
        m, t = cfg.model, cfg.training
        train = open_split(self._data, site=site_name, split="train", image_size=m.encoder.image_size,
                           views=m.uses_contrastive and t.augment, seed=t.seed, cache_images=t.cache_images)  # fmt: skip
        workspace = Path(workspace_dir)
        self._trainer = LocalTrainer(
            self._model, t, site=site_name, train_dataset=train, workspace=workspace, tb_dir=workspace / "tb",
            progress=False,
        )  # fmt: skip

    def initial_shared_state(self) -> dict[str, np.ndarray]:
        from fedmrg.report.shared_state import get_shared_state

        return self._to_numpy(get_shared_state(self._build_model()))

    def shared_keys(self) -> list[str]:
        from fedmrg.report.shared_state import shared_keys

        return shared_keys(self._model if self._model is not None else self._build_model())

    def train(self, global_state: dict[str, np.ndarray], *, round_num: int, extra: dict[str, Any]) -> TrainOutcome:
        if self._trainer is None:
            raise RuntimeError(f"site {self._site!r}: no trainer (not set up, or an evaluation-only site)")
        bank = None
        peers = (extra or {}).get(BANK_KEY) or {}
        arrays = [np.asarray(v, dtype=np.float32) for site, v in sorted(peers.items()) if site != self._site]
        if arrays:
            bank = torch.from_numpy(np.concatenate(arrays))
        out = self._trainer.train_round(
            self._to_torch(global_state), self._private, round_num=round_num, bank_negatives=bank,
            steps=self.local_steps,
        )  # fmt: skip
        self._private = out.private_state
        payload = {BANK_KEY: out.bank_features.numpy()} if out.bank_features is not None else {}
        metrics = out.metrics if self._trainer.dp is None else self._trainer.dp.releasable(out.metrics)  # DP: no losses
        return TrainOutcome(self._to_numpy(out.shared_state), out.num_samples, metrics, payload)

    # ------------------------------------------------------------------ the statistics round (fedmrg.fl.statistics_round)
    def needs_statistics_round(self) -> bool:
        """True when the diagnosis head is to be calibrated after the last round (``training.head_calibration``)."""
        return self._load_config().training.head_calibration != "none"

    def round_statistics(self, global_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """This site's head statistics of ``global_state`` as float64 arrays (see :meth:`head_statistics`)."""
        return self.head_statistics(global_state).to_arrays()

    def finish_state(self, global_state: dict[str, np.ndarray], statistics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``global_state`` with the diagnosis head replaced by the LDA head of the sites' summed ``statistics``."""
        from fedmrg.report.head_calibration import HeadStatistics, head_state

        t = self._load_config().training
        return dict(global_state) | head_state(HeadStatistics.from_arrays(statistics), shrinkage=t.head_calibration_shrinkage)

    def head_statistics(self, global_state: dict[str, np.ndarray]) -> Any:
        """:class:`~fedmrg.report.head_calibration.HeadStatistics` of ``global_state``'s encoder over this site's
        training studies (what the site sends for ``training.head_calibration: lda``)."""
        from fedmrg.report.data_loading import open_split
        from fedmrg.report.head_calibration import collect_statistics
        from fedmrg.report.shared_state import get_shared_state, load_shared_state

        model, data = self._model, self._data
        if model is None or data is None:
            raise RuntimeError(f"site {self._site!r}: head statistics before setup")
        saved = get_shared_state(model)
        try:
            load_shared_state(model, self._to_torch(global_state))
            train = open_split(data, site=self._site, split="train", image_size=model.config.encoder.image_size)
            return collect_statistics(model, train, batch_size=self._load_config().training.eval_batch_size)
        finally:
            load_shared_state(model, saved)

    def validate(self, global_state: dict[str, np.ndarray], *, personalized: bool, split: str) -> dict[str, float]:
        from torch.utils.data import Subset

        from fedmrg.report.data_loading import open_split
        from fedmrg.report.evaluation import diagnosis_f1, generate_for_dataset, headline, score_rows
        from fedmrg.report.shared_state import (
            get_private_state,
            get_shared_state,
            load_private_state,
            load_shared_state,
            start_round,
        )

        model, data = self._model, self._data
        if model is None or data is None:
            raise RuntimeError(f"site {self._site!r}: validate before setup")
        saved_shared, saved_private = get_shared_state(model), get_private_state(model)
        try:
            load_shared_state(model, self._to_torch(global_state))
            if self._private is not None:
                load_private_state(model, self._private)
            start_round(model)
            dataset = open_split(data, site=self._site, split=split, image_size=model.config.encoder.image_size)
            if self.validate_max_studies:
                dataset = Subset(dataset, range(min(self.validate_max_studies, len(dataset))))
            if len(dataset) == 0:
                return {}
            rows = generate_for_dataset(
                model, dataset, batch_size=self._load_config().training.eval_batch_size,
                generic_only=not personalized, progress=False,
            )  # fmt: skip
            h = headline(score_rows(rows))
            out = {"bleu4": h["BLEU_4"], "rouge_l": h["ROUGE_L"], "ce_f1": h.get("CE_F1", 0.0), "n": float(len(rows))}
            diag = diagnosis_f1(rows)
            return out if diag is None else out | {"diag_f1": diag}
        finally:
            load_shared_state(model, saved_shared)
            load_private_state(model, saved_private)
            start_round(model)

    def save_private(self, directory: str) -> None:
        from safetensors.torch import save_file

        if self._private:
            save_file({k: v.contiguous() for k, v in self._private.items()}, str(Path(directory) / PRIVATE_FILE))
        if self._trainer is not None and self._trainer.dp is not None:  # the DP-SGD ledger travels with S2
            self._trainer.dp.save(directory)

    def load_private(self, directory: str) -> None:
        from safetensors.torch import load_file

        path = Path(directory) / PRIVATE_FILE
        if path.is_file():
            self._private = load_file(str(path))
        if self._trainer is not None and self._trainer.dp is not None:
            self._trainer.dp.load(directory)
