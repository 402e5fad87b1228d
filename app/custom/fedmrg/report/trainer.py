"""The local trainer: one FedMRG client round (paper 3.4, Algorithm 1) behind the interface FLARE calls.

:meth:`LocalTrainer.train_round` takes the global shared state (encoder + generic adapter G + ...) and the site's
private state (specialized adapter S2), copies G into the frozen S1 (:func:`~fedmrg.report.shared_state.start_round`),
trains for a number of optimizer steps and returns the new shared and private states, metrics, the sample count that
weights the site in FedAvg and fresh memory-bank features.

The round runs in the project's one loop, :func:`fedmrg.training.run_round`; this module plugs FedMRG into it. One
optimizer step (``training.grad_accum_steps`` = k micro-batches) has two phases, each with its own optimizer:

1. G phase: for each micro-batch, :func:`~fedmrg.report.steps.generic_step_losses` (LM + diagnosis + contrastive
   with memory-bank negatives + distillation from S), backward of ``loss / k``; clip; AdamW step.
2. S phase (FedMRG with S): for each micro-batch the G phase kept, :func:`~fedmrg.report.steps.
   specialized_step_losses` on the G phase's visual tokens, backward; clip; AdamW step (S2 only).

Under ``privacy.dp_sgd`` the same two phases run with Opacus DP-SGD steps on Poisson batches
(:class:`~fedmrg.privacy.dp_sgd.PatientLevelDP`). A micro-batch whose loss is not finite is skipped and counted
(``skipped_batches``) and the BatchNorm statistics it touched are restored; a step whose gradient norm is not finite
is skipped and counted (``skipped_steps``); a round with more than ``training.max_skipped_fraction`` skipped
micro-batches fails with :class:`~fedmrg.errors.FedMRGError`. Nothing is dropped silently.

The learning rate follows a cosine schedule with linear warm-up over ``training.rounds`` rounds; the position inside
it is derived from ``round_num`` (no state carried between rounds, so a restarted client resumes correctly). AdamW
moments start fresh each round, as the global model they belonged to has been replaced by the server's average.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from fedmrg.errors import FedMRGError
from fedmrg.report.data_loading import finding_balance_weights, make_loader, site_datasets
from fedmrg.report.model import FedMRGModel
from fedmrg.report.run_config import TrainingConfig
from fedmrg.report.shared_state import (
    get_private_state,
    get_shared_state,
    load_private_state,
    load_shared_state,
    start_round,
)
from fedmrg.report.steps import detach_encoded, generic_step_groups, generic_step_losses, specialized_step_losses
from fedmrg.report.tokenization import ReportCollator
from fedmrg.training import (
    AdamWStep,
    CosineSchedule,
    Phase,
    ScalarLog,
    autocast,
    autocast_dtype,
    batch_to,
    cosine_factor,
    resolve_device,
    run_round,
)
from fedmrg.training.steps import weight_decay_groups

if TYPE_CHECKING:
    from fedmrg.privacy.dp_sgd import PatientLevelDP


@dataclass
class RoundOutput:
    """Result of one local round.

    Attributes:
        shared_state: the new shared state, float32 CPU tensors keyed by :func:`~fedmrg.report.shared_state.
            shared_keys` (the full state, not a difference).
        private_state: the new private state (S2), float32 CPU tensors; empty without S.
        metrics: finite scalar metrics of the round (mean losses, ``samples_per_s``, ``tokens_per_s``,
            ``skipped_batches``, ``skipped_steps``, ``lr``, ``seconds``, ...).
        num_samples: studies trained on this round (skipped micro-batches excluded); the FedAvg weight.
        bank_features: (n, C) float32 L2-normalised pooled features of n random local studies for the global memory
            bank, or None (no contrastive loss, or ``memory_bank.upload_per_round: 0``). Patient-derived data.
    """

    shared_state: dict[str, torch.Tensor]
    private_state: dict[str, torch.Tensor]
    metrics: dict[str, float]
    num_samples: int
    bank_features: torch.Tensor | None


class LocalTrainer:
    """Trains one site's FedMRG model, round by round.

    Args:
        model: the site's model (moved to the training device here).
        config: the ``training`` section of the run configuration.
        site: the site's name (FLARE client name; ``"centralized"`` for pooled training). Memory-bank negatives
            are drawn from other sites' features.
        train_dataset: the site's training samples (a :class:`~fedmrg.report.data_loading.ReportDataset` or a
            ``ConcatDataset`` of them).
        workspace: a folder the trainer may write to (unused today besides being created), or None.
        tb_dir: folder for TensorBoard event files, or None for no TensorBoard.
        progress: show a tqdm progress bar per round.
    """

    def __init__(
        self,
        model: FedMRGModel,
        config: TrainingConfig,
        *,
        site: str,
        train_dataset: Dataset,
        workspace: str | Path | None = None,
        tb_dir: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        if len(train_dataset) == 0:  # type: ignore[arg-type]
            raise FedMRGError(f"site {site!r}: the training split is empty")
        self.model = model
        self.config = config
        self.site = site
        self.dataset = train_dataset
        self.workspace = Path(workspace) if workspace is not None else None
        if self.workspace is not None:
            self.workspace.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.device = resolve_device(config.device)
        self.amp_dtype = autocast_dtype(config.mixed_precision, self.device)
        self.model.to(self.device)
        if config.gradient_checkpointing:
            self.model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.collator = ReportCollator(
            model.tokenizer,
            max_report_tokens=model.config.decoder.max_report_tokens,
            finding_weight=model.config.losses.finding_weight,
        )
        self.scalars = ScalarLog(tb_dir, tag_prefix=site)
        self.dp = None  # patient-level DP-SGD: the same loop with Opacus steps on Poisson batches
        if model.config.privacy.dp_sgd.enabled and config.balance_findings > 0:
            raise FedMRGError(
                f"site {site!r}: `training.balance_findings` cannot be combined with DP-SGD (its accounting "
                "assumes Poisson sampling); set `training.balance_findings: 0`"
            )
        if model.config.privacy.dp_sgd.enabled:
            from fedmrg.privacy.dp_sgd import PatientLevelDP

            self.dp = PatientLevelDP(
                model.config.privacy.dp_sgd,
                model,
                config,
                site=site,
                dataset_size=len(train_dataset),  # type: ignore[arg-type]
                device=self.device,
                amp_dtype=self.amp_dtype,
            )
        self._set_logit_adjustment()
        #: per-study sampling weights under ``training.balance_findings`` (None: a plain reshuffled pass)
        self.sample_weights = (
            finding_balance_weights(self._training_states("training.balance_findings"), config.balance_findings)
            if config.balance_findings > 0
            else None
        )

    def _set_logit_adjustment(self) -> None:
        """PromptMRG's logit adjustment of the diagnosis loss from this site's training states (``losses.
        logit_adjustment``); off under DP-SGD, whose accounting covers per-study gradients, not a prior computed
        from every study."""
        tau, head = self.model.config.losses.logit_adjustment, self.model.diagnosis_head
        if head is None or tau == 0:
            return
        if self.dp is not None:
            warnings.warn(
                f"site {self.site!r}: `losses.logit_adjustment` is off under DP-SGD (the positive-rate prior is a "
                "statistic of all training studies, outside the DP accounting)",
                stacklevel=3,
            )
            return
        states = torch.tensor(self._training_states("losses.logit_adjustment"), dtype=torch.long)
        head.set_logit_adjustment(states.to(head.loss_bias.device), tau)

    def _training_states(self, key: str) -> list[list[int]]:
        """The 14 states of every training study, in dataset order; FedMRGError naming ``key`` (the setting that
        needs them) when the dataset is not made of ReportDatasets."""
        parts = site_datasets(self.dataset)
        if not parts or sum(len(p) for p in parts) != len(self.dataset):  # type: ignore[arg-type]
            raise FedMRGError(
                f"site {self.site!r}: `{key}` needs every training study's states; the dataset "
                f"{type(self.dataset).__name__} is not made of ReportDatasets (set `{key}: 0`)"
            )
        return [s for part in parts for s in part.states]

    # ------------------------------------------------------------------ schedule
    @property
    def micro_batches_per_epoch(self) -> int:
        return math.ceil(len(self.dataset) / self.config.batch_size)  # type: ignore[arg-type]

    def steps_per_round(self, *, steps: int | None = None, epochs: float | None = None) -> int:
        """Optimizer steps of one round: ``steps``, else ``training.local_steps``, else from the epochs."""
        if steps is not None:
            if steps < 1:
                raise ValueError(f"`steps` must be >= 1, got {steps}")
            return steps
        if epochs is None and self.config.local_steps is not None:
            return self.config.local_steps
        epochs = self.config.local_epochs if epochs is None else epochs
        if epochs <= 0:
            raise ValueError(f"`epochs` must be > 0, got {epochs}")
        return max(1, math.ceil(epochs * self.micro_batches_per_epoch / self.config.grad_accum_steps))

    # ------------------------------------------------------------------ round
    def train_round(
        self,
        shared_state: Mapping[str, torch.Tensor] | None,
        private_state: Mapping[str, torch.Tensor] | None,
        *,
        round_num: int = 0,
        bank_negatives: torch.Tensor | None = None,
        steps: int | None = None,
        epochs: float | None = None,
    ) -> RoundOutput:
        """Run one local round.

        Args:
            shared_state: the global shared state to start from (None: keep the model's current one).
            private_state: this site's S2 from its last round (None: keep the model's current one, e.g. fresh).
            round_num: the FL round (0-based); places the round in the learning-rate schedule and the seeds.
            bank_negatives: (K, C) memory-bank features of other sites (extra contrastive negatives), or None.
            steps: optimizer steps this round (overrides ``training.local_steps`` / ``local_epochs``).
            epochs: passes over the local data this round (used when ``steps`` is None).
        """
        cfg, model = self.config, self.model
        if shared_state is not None:
            load_shared_state(model, shared_state)
        if private_state is not None:
            load_private_state(model, private_state)
        start_round(model)
        n_steps = self.steps_per_round(steps=steps, epochs=epochs)
        negatives = self._check_negatives(bank_negatives)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(cfg.seed * 100_003 + round_num)
            metrics, num_samples = self._run(n_steps, round_num, negatives)
            bank = self._bank_features(round_num)
        self.scalars.log(metrics, step=round_num, group="round/")
        return RoundOutput(get_shared_state(model), get_private_state(model), metrics, num_samples, bank)

    def _check_negatives(self, bank: torch.Tensor | None) -> torch.Tensor | None:
        if bank is None or not self.model.config.uses_contrastive:
            return None
        dim = self.model.encoder.out_dim
        if bank.ndim != 2 or bank.shape[1] != dim:
            raise ValueError(f"`bank_negatives` must have shape (K, {dim}), got {tuple(bank.shape)}")
        if not torch.isfinite(bank).all():
            raise ValueError("`bank_negatives` holds non-finite values")
        return bank.float() if bank.shape[0] else None

    def _batches(self, round_num: int) -> Iterator[dict[str, Any]]:
        """Endless micro-batches: a reshuffled pass per epoch, order and augmentation seeded by round and epoch."""
        cfg = self.config
        loader = make_loader(
            self.dataset,
            self.collator,
            batch_size=cfg.batch_size,
            shuffle=True,
            seed=cfg.seed * 1_000_003 + round_num,
            num_workers=cfg.num_workers,
            weights=self.sample_weights,
        )
        epoch = 0
        while True:
            for part in site_datasets(self.dataset):
                part.set_epoch(round_num * 10_000 + epoch)
            yield from loader
            epoch += 1

    def _run(self, n_steps: int, round_num: int, bank: torch.Tensor | None) -> tuple[dict[str, float], int]:
        """One round in :func:`fedmrg.training.run_round`: (metrics, FedAvg weight)."""
        cfg, model = self.config, self.model
        model.train()
        model.set_phase("generic")
        g_params = [p for p in model.trainable_parameters() if p.requires_grad]
        s_params = [p for p in model.trainable_parameters() if not p.requires_grad] if model.has_specialized else []
        schedule = CosineSchedule(cfg.rounds, n_steps, warmup=cfg.warmup_steps, min_ratio=cfg.min_lr_ratio)
        who = f"site {self.site!r} round {round_num}"
        common: dict[str, Any] = {
            "n_steps": n_steps,
            "device": self.device,
            "amp_dtype": self.amp_dtype,
            "schedule": schedule,
            "first_step": schedule.first_step(round_num),
            "measure": _count_studies,
            "scalars": self.scalars,
            "log_every": cfg.log_every,
            "progress": f"{self.site} round {round_num}" if self.progress else None,
            "progress_keys": ("g/lm", "s/lm"),
            "who": who,
        }
        try:
            if self.dp is not None:
                return self._run_dp(self.dp, n_steps, round_num, g_params, s_params, common)
            negatives: dict[str, torch.Tensor | None] = {"now": None}
            gen = torch.Generator().manual_seed(cfg.seed * 7 + round_num)
            per_step = model.config.memory_bank.negatives_per_step

            def draw_negatives(step: int) -> None:
                if bank is not None and per_step > 0:
                    negatives["now"] = bank[torch.randperm(bank.shape[0], generator=gen)[:per_step]].to(self.device)

            def g_loss(batch: Mapping[str, Any], carry: dict[str, Any]) -> dict[str, torch.Tensor]:
                losses = generic_step_losses(model, batch, negatives=negatives["now"])
                carry["encoded"] = detach_encoded(losses.encoded)
                return losses.as_dict()

            def s_loss(batch: Mapping[str, Any], carry: dict[str, Any]) -> dict[str, torch.Tensor]:
                return specialized_step_losses(model, batch, encoded=carry["encoded"]).as_dict()

            step_args: dict[str, Any] = {
                "lr": cfg.learning_rate,
                "max_grad_norm": cfg.max_grad_norm,
                "fp16": self.amp_dtype == torch.float16,
                "device_type": self.device.type,
            }
            phases = [
                Phase("g", g_loss, AdamWStep(generic_step_groups(model, g_params, weight_decay=cfg.weight_decay,
                      lr=cfg.learning_rate, head_lr_scale=cfg.head_lr_scale), **step_args),
                      enter=lambda: model.set_phase("generic"), loss_name="total"),
            ]  # fmt: skip
            if s_params:
                phases.append(
                    Phase("s", s_loss, AdamWStep(weight_decay_groups(s_params, cfg.weight_decay), **step_args),
                          enter=lambda: model.set_phase("specialized"), loss_name="total")
                )  # fmt: skip
            metrics = run_round(
                model,
                phases,
                self._batches(round_num),
                grad_accum_steps=cfg.grad_accum_steps,
                max_skipped_fraction=cfg.max_skipped_fraction,
                before_step=draw_negatives,
                remedy="lower `training.learning_rate`, check the data, or use `training.mixed_precision: no`",
                **common,
            )
            return metrics, int(metrics["samples"])
        finally:
            model.set_phase("generic")

    def _run_dp(
        self,
        dp: PatientLevelDP,
        n_steps: int,
        round_num: int,
        g_params: list[torch.nn.Parameter],
        s_params: list[torch.nn.Parameter],
        loop_args: dict[str, Any],
    ) -> tuple[dict[str, float], int]:
        """A DP-SGD round: Poisson batches, noisy G and S steps, one ledger step per batch.

        The FedAvg weight is the expected number of studies, ``batch_size * n_steps``, not the realised Poisson count
        (which is data-dependent and would leave the site un-noised). A non-finite loss fails the round (skipping a
        batch would be a data-dependent, un-noised decision).
        """
        cfg = self.config
        dp.prepare_round(n_steps, round_num)  # sigma, and the budget check before anything trains
        for part in site_datasets(self.dataset):
            part.set_epoch(round_num * 10_000)
        metrics = run_round(
            self.model,
            dp.phases(g_params, s_params),
            dp.batches(self.dataset, self.collator, steps=n_steps, num_workers=cfg.num_workers),
            after_step=dp.record_step,
            remedy="lower `training.learning_rate` or use `training.mixed_precision: no`",
            **loop_args,
        )
        return metrics | dp.metrics(), cfg.batch_size * n_steps

    # ------------------------------------------------------------------ memory bank
    @torch.no_grad()
    def _bank_features(self, round_num: int) -> torch.Tensor | None:
        """Pooled features of ``memory_bank.upload_per_round`` random local studies (eval mode, no augmentation)."""
        mcfg = self.model.config
        n = mcfg.memory_bank.upload_per_round
        if not mcfg.uses_contrastive or n == 0:
            return None
        gen = torch.Generator().manual_seed(self.config.seed * 13 + round_num)
        size = len(self.dataset)  # type: ignore[arg-type]
        idx = torch.randperm(size, generator=gen)[: min(n, size)].tolist()
        was_training = self.model.training
        self.model.eval()
        try:
            feats = []
            for start in range(0, len(idx), self.config.eval_batch_size):
                images = torch.stack(
                    [self.dataset[i]["image"] for i in idx[start : start + self.config.eval_batch_size]]
                )
                with autocast(self.device, self.amp_dtype):
                    feats.append(self.model.pooled_features(images.to(self.device)).float().cpu())
        finally:
            self.model.train(was_training)
        return torch.cat(feats)

    # ------------------------------------------------------------------ logging
    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        self.scalars.close()


def _count_studies(batch: Mapping[str, Any]) -> dict[str, float]:
    """Studies and report tokens of a micro-batch (``samples``, ``tokens``: the round's throughput)."""
    return {"samples": float(batch["input_ids"].shape[0]), "tokens": float(batch["attention_mask"].sum())}


@torch.no_grad()
def evaluate_loss(
    model: FedMRGModel,
    dataset: Dataset,
    *,
    batch_size: int = 16,
    adapter: str = "generic",
    device: torch.device | None = None,
) -> dict[str, float]:
    """Teacher-forced mean LM loss (nats / report token) and diagnosis loss over ``dataset`` (no augmentation).

    A cheap validation signal for every round; :mod:`fedmrg.report.evaluation` scores generated text.
    """
    device = device or next(model.parameters()).device
    collator = ReportCollator(model.tokenizer, max_report_tokens=model.config.decoder.max_report_tokens)
    was_training = model.training
    model.eval()
    lm_sum = cls_sum = 0.0
    n_tokens = n = 0
    try:
        for batch in make_loader(dataset, collator, batch_size=batch_size, shuffle=False):
            batch = batch_to({k: v for k, v in batch.items() if k != "views"}, device)
            out = model(batch, adapter=adapter)  # type: ignore[arg-type]
            t = int((out.labels != -100).sum())
            lm_sum += float(out.lm_loss) * t
            n_tokens += t
            if out.cls_loss is not None:
                cls_sum += float(out.cls_loss) * batch["input_ids"].shape[0]
            n += batch["input_ids"].shape[0]
    finally:
        model.train(was_training)
    result = {"lm_loss": lm_sum / max(1, n_tokens), "studies": float(n)}
    if model.config.uses_prompts:
        result["cls_loss"] = cls_sum / max(1, n)
    return result


__all__ = ["LocalTrainer", "RoundOutput", "batch_to", "cosine_factor", "evaluate_loss", "resolve_device"]
