"""FedMRG as a :class:`~fedmrg.fl.learner.SharedStateLearner`: the bridge between FLARE and :class:`LocalTrainer`.

Job config (client executor / server persistor)::

    "learner_path": "fedmrg.report.fl_learner.FedMRGLearner",
    "learner_args": {"config": "default.yaml", "local_steps": null, "validate_max_studies": 16}

``config`` is a run-configuration YAML path or the name of a packaged one. The site's data root (resolved by the
executor) must be a federated dataset directory holding this site (``fedmrg data prepare``). Shared states travel as
numpy float32 dicts; the private specialized adapter S2 is saved as safetensors in the folder FLARE gives; memory-bank
features travel as the extra payload ``"bank"`` (patient-derived: count them in the privacy design).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmrg.errors import ConfigError

BANK_KEY = "bank"
PRIVATE_FILE = "private_state.safetensors"


class FedMRGLearner:
    """A site's FedMRG trainer behind the FL learner protocol.

    Args:
        config: run configuration YAML path, or a packaged config name (``"default.yaml"``).
        local_steps: optimizer steps per round (None: the config's ``training.local_steps`` / ``local_epochs``).
        validate_max_studies: studies generated per validation call (generation is slow on CPU); 0 = all.
    """

    def __init__(self, config: str = "default.yaml", local_steps: int | None = None, validate_max_studies: int = 16):
        self.config = config
        self.local_steps = local_steps
        self.validate_max_studies = validate_max_studies
        self._run_config: Any = None
        self._model: Any = None
        self._trainer: Any = None
        self._private: dict[str, torch.Tensor] | None = None
        self._site = ""
        self._data: Any = None

    # ------------------------------------------------------------------ helpers
    def _load_config(self, *, progress: bool = False) -> Any:
        """The run configuration, resolved once (``progress``: show the built-in models' build on stderr)."""
        if self._run_config is None:
            from fedmrg.report.run_config import load_run_config, packaged_config

            path = Path(self.config)
            self._run_config = load_run_config(
                path if path.is_file() else packaged_config(self.config), progress=progress
            )
        return self._run_config

    def _build_model(self) -> Any:
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

    # ------------------------------------------------------------------ protocol
    def setup(self, site_name: str, workspace_dir: str, config: dict[str, Any]) -> None:
        from fedmrg.data.dataset_dir import FederatedDataset
        from fedmrg.report.data_loading import open_split
        from fedmrg.report.trainer import LocalTrainer

        if config.get("model_paths") and not callable(getattr(self, "apply_site_config", None)):
            raise ConfigError(
                f"site {site_name!r}: `model_paths` in fedmrg_site.json needs a learner that applies them "
                f"(fedmrg.report.fl_job_learner.JobFedMRGLearner); {type(self).__name__} takes its models from the job"
            )
        data_root = config.get("data_root") or ""
        if not data_root:
            raise ConfigError(f"site {site_name!r}: no data root; set it in fedmrg_site.json or the job template")
        cfg = self._load_config()
        if config.get("dp_sgd") is not None:  # a site switches DP-SGD on (or tunes it) in its own fedmrg_site.json
            from fedmrg.privacy.dp_config import apply_site_dp_sgd

            cfg.model = apply_site_dp_sgd(cfg.model, config["dp_sgd"], site=site_name)
        if config.get("device"):
            import dataclasses

            cfg.training = dataclasses.replace(cfg.training, device=str(config["device"]))
        self._site = site_name
        self._data = FederatedDataset.open(data_root)
        if config.get("role") == "evaluate":  # an evaluation-only site (e.g. unseen): no training data, no trainer
            self._model = self._build_model()
            return
        m, t = cfg.model, cfg.training
        train = open_split(self._data, site=site_name, split="train", image_size=m.encoder.image_size,
                           views=m.uses_contrastive and t.augment, seed=t.seed, cache_images=t.cache_images)  # fmt: skip
        self._model = self._build_model()
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

    def train(self, global_state: dict[str, np.ndarray], *, round_num: int, extra: dict[str, Any]) -> Any:
        from fedmrg.fl.learner import TrainOutcome

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

        model = self._model
        saved_shared, saved_private = get_shared_state(model), get_private_state(model)
        try:
            load_shared_state(model, self._to_torch(global_state))
            if self._private is not None:
                load_private_state(model, self._private)
            start_round(model)
            dataset = open_split(self._data, site=self._site, split=split, image_size=model.config.encoder.image_size)
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
