"""The vision system's :class:`~fedmrg.fl.learner.SharedStateLearner`: one federated code path for every method.

``learner_args`` are the fields of :class:`~fedmrg.vision.config.VisionConfig` (unknown keys and wrong types are
refused, naming the key). What travels: the trained parameters (:func:`~fedmrg.vision.bundle.shared_names`), e.g.
the prompt generator with its task embedding and the head / mask decoder; never the frozen backbone. Local training
runs through :func:`fedmrg.training.run_round` (AdamW with clipping, cosine schedule over all rounds).

``local``: a site trains its own model from the round-0 global model on and never loads the aggregate again; its
validation and ``save_private`` use its own model. Metrics: ``accuracy``, ``auc``, ``loss`` (classification);
``dice``, ``hd95``, ``loss`` (segmentation). Every ``train`` outcome also reports ``trained_share`` and
``shared_bytes`` (float32 bytes of the shared state).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedmrg.errors import ConfigError
from fedmrg.fl.learner import State, TrainOutcome, state_nbytes
from fedmrg.fl.site_config import SiteConfig
from fedmrg.fl.state_files import load_state, save_state
from fedmrg.vision.bundle import build_model, get_state, set_state, shared_names, to_tensors
from fedmrg.vision.config import VisionConfig, load_vision_config
from fedmrg.vision.data import CONVERSIONS, TASK_KINDS
from fedmrg.vision.metrics import classification_metrics, segmentation_metrics
from fedmrg.vision.tasks import site_index, site_splits

_PRIVATE_FILE = "vision_local_model.safetensors"


class VisionLearner:
    """Federated visual prompt generation (and its baselines) at one site. Args: the :class:`VisionConfig` fields."""

    def __init__(self, **config: Any) -> None:
        self.cfg: VisionConfig = load_vision_config(dict(config), source="vision learner_args")
        self.kind = TASK_KINDS[self.cfg.task]
        self.model = None
        self._names: list[str] | None = None
        self.own_state: State | None = None
        self.site_name = ""

    # -- model -----------------------------------------------------------------------------------------------------
    def _ensure_model(self) -> None:
        if self.model is None:
            self.model, self.pre = build_model(self.cfg)
            self._names = shared_names(self.model)

    def shared_keys(self) -> list[str]:
        self._ensure_model()
        return list(self._names)

    def initial_shared_state(self) -> State:
        self._ensure_model()
        return get_state(self.model, self._names)

    # -- life cycle ------------------------------------------------------------------------------------------------
    def setup(self, site_name: str, workspace_dir: str, config: SiteConfig) -> None:
        if config.requires_dp_sgd:
            raise ConfigError(
                f"{config.where('dp_sgd')}: site {site_name!r} requires DP-SGD, which the vision "
                f"learner does not implement; remove `dp_sgd` for vision jobs or use the site-level "
                f"DP filter (SiteDPFilter) of the job"
            )
        threads = config.torch_threads if config.torch_threads is not None else self.cfg.torch_threads
        if threads:
            torch.set_num_threads(threads)
        self.site_name = site_name
        self.device = torch.device(config.device or self.cfg.device)
        self._ensure_model()
        self.model.to(self.device)
        idx = site_index(site_name, self.cfg.num_sites)
        splits = site_splits(self.cfg, config.data_root, idx)
        self.data = {k: to_tensors(v, self.pre, self.kind) for k, v in splits.items()}
        info = {
            "site": site_name,
            "sizes": {k: len(v) for k, v in splits.items()},
            "conversions": dict(CONVERSIONS),
            **self.model.share_report(),
        }
        if self.kind == "classification":
            info["train_class_counts"] = np.bincount(self.data["train"]["labels"].numpy()).tolist()
        Path(workspace_dir).mkdir(parents=True, exist_ok=True)
        (Path(workspace_dir) / "vision_site_info.json").write_text(json.dumps(info, indent=1) + "\n")
        self._gen = torch.Generator().manual_seed(self.cfg.seed * 1009 + idx)

    def _loss(self, batch: dict[str, torch.Tensor], carry: dict) -> dict[str, torch.Tensor]:
        out = self.model(batch["pixel_values"])
        if self.kind == "classification":
            return {"loss": F.cross_entropy(out, batch["labels"])}
        m = batch["masks"]
        bce = F.binary_cross_entropy_with_logits(out, m)
        p = torch.sigmoid(out)
        dice = 1 - (2 * (p * m).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + m.sum((1, 2, 3)) + 1)
        return {"loss": bce + dice.mean(), "bce": bce.detach(), "dice_loss": dice.mean().detach()}

    def _batches(self):
        data = self.data["train"]
        n = len(next(iter(data.values())))
        while True:
            perm = torch.randperm(n, generator=self._gen)
            for i in range(0, n, self.cfg.batch_size):
                idx = perm[i : i + self.cfg.batch_size]
                if len(idx) < min(self.cfg.batch_size, n):
                    break
                yield {k: v[idx] for k, v in data.items()}

    def train(self, global_state: State, *, round_num: int, extra: dict[str, Any]) -> TrainOutcome:
        from fedmrg.training import AdamWStep, CosineSchedule, Phase, run_round

        if self.cfg.method == "local" and self.own_state is not None:
            set_state(self.model, self.own_state)
        else:
            set_state(self.model, global_state)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        step = AdamWStep(
            params,
            lr=self.cfg.learning_rate,
            weight_decay=self.cfg.weight_decay,
            max_grad_norm=1.0,
            device_type=self.device.type,
        )
        schedule = CosineSchedule(
            rounds=self.cfg.rounds,
            steps_per_round=self.cfg.local_steps,
            warmup=min(10, self.cfg.local_steps),
            min_ratio=0.05,
        )
        metrics = run_round(
            self.model,
            [Phase("train", self._loss, step)],
            self._batches(),
            n_steps=self.cfg.local_steps,
            device=self.device,
            schedule=schedule,
            first_step=schedule.first_step(min(round_num, self.cfg.rounds - 1)),
            who=f"vision site {self.site_name!r} round {round_num}",
        )
        self.model.eval()
        state = get_state(self.model, self._names)
        if self.cfg.method == "local":
            self.own_state = state
        share = self.model.share_report()
        m = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)}
        m.update(trained_share=share["trained_share"], shared_bytes=float(state_nbytes(state)))
        return TrainOutcome(shared_state=state, num_samples=len(self.data["train"]["pixel_values"]), metrics=m)

    @torch.no_grad()
    def predict(self, pixel_values: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Logits of ``(n, 3, S, S)`` images in batches (model in eval mode)."""
        self.model.eval()
        outs = [
            self.model(pixel_values[i : i + batch].to(self.device)).float().cpu()
            for i in range(0, len(pixel_values), batch)
        ]
        return torch.cat(outs)

    def validate(self, global_state: State, *, personalized: bool, split: str) -> dict[str, float]:
        if split not in self.data:
            raise ValueError(f"unknown split {split!r}; this site has {sorted(self.data)}")
        saved = get_state(self.model, self._names)
        use_own = personalized and self.cfg.method == "local" and self.own_state is not None
        set_state(self.model, self.own_state if use_own else global_state)
        try:
            return evaluate_tensors(self, self.data[split], self.cfg.eval_max_images)
        finally:
            set_state(self.model, saved)

    def save_private(self, directory: str) -> None:
        if self.own_state is not None:
            save_state(Path(directory) / _PRIVATE_FILE, self.own_state)

    def load_private(self, directory: str) -> None:
        f = Path(directory) / _PRIVATE_FILE
        if f.is_file():
            self.own_state, _ = load_state(f)


def evaluate_tensors(learner: Any, data: dict[str, torch.Tensor], max_images: int = 0) -> dict[str, float]:
    """Metrics of ``learner.predict`` on a tensor split (see :mod:`fedmrg.vision.metrics`)."""
    x = data["pixel_values"][:max_images] if max_images else data["pixel_values"]
    logits = learner.predict(x)
    if "labels" in data:
        y = data["labels"][: len(x)]
        m = classification_metrics(torch.softmax(logits, 1).numpy(), y.numpy())
        m["loss"] = float(F.cross_entropy(logits, y))
    else:
        y = data["masks"][: len(x)]
        m = segmentation_metrics(logits, y)
        m["loss"] = float(F.binary_cross_entropy_with_logits(logits, y))
    return {k: v for k, v in m.items() if np.isfinite(v)}
