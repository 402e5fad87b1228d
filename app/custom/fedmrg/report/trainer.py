"""The local trainer: one FedMRG client round (paper 3.4, Algorithm 1) behind the interface FLARE calls.

:meth:`LocalTrainer.train_round` takes the global shared state (encoder + generic adapter G + ...) and the site's
private state (specialized adapter S2), copies G into the frozen S1 (:func:`~fedmrg.report.shared_state.start_round`),
trains for a number of optimizer steps and returns the new shared and private states, metrics, the sample count that
weights the site in FedAvg and fresh memory-bank features.

One optimizer step (``training.grad_accum_steps`` = k micro-batches):

1. G step: for each micro-batch, :func:`~fedmrg.report.steps.generic_step_losses` (LM + diagnosis + contrastive
   with memory-bank negatives + distillation from S), backward of ``loss / k``; clip; AdamW step.
2. S step (FedMRG with S): for each micro-batch, :func:`~fedmrg.report.steps.specialized_step_losses` on the G
   step's visual tokens, backward; clip; AdamW step (only S2 has gradients, so only S2 moves).

A micro-batch whose loss is not finite is skipped and counted (``skipped_batches``), and the BatchNorm statistics it
touched are restored; a step whose gradient norm is
not finite is skipped and counted (``skipped_steps``); a round with more than ``training.max_skipped_fraction``
skipped micro-batches fails with :class:`~fedmrg.errors.FedMRGError`. Nothing is dropped silently.

The learning rate follows a cosine schedule with linear warm-up over ``training.rounds`` rounds; the position inside
it is derived from ``round_num`` (no state carried between rounds, so a restarted client resumes correctly). AdamW
moments start fresh each round, as the global model they belonged to has been replaced by the server's average.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from fedmrg.errors import FedMRGError
from fedmrg.report.data_loading import make_loader, site_datasets
from fedmrg.report.model import EncodedImages, FedMRGModel
from fedmrg.report.precision import autocast_dtype
from fedmrg.report.run_config import TrainingConfig
from fedmrg.report.shared_state import (
    get_private_state,
    get_shared_state,
    load_private_state,
    load_shared_state,
    start_round,
)
from fedmrg.report.steps import detach_encoded, generic_step_losses, optimizer_groups, specialized_step_losses
from fedmrg.report.tokenization import ReportCollator

_BATCH_TENSORS = ("images", "views", "input_ids", "attention_mask", "states")


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


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; other names as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise FedMRGError(f"`training.device`: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FedMRGError(f"`training.device` is {name!r} but no CUDA GPU is available; use 'cpu' or 'auto'")
    return device


def cosine_factor(step: int, *, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier at optimizer ``step`` (0-based): linear warm-up, then cosine from 1 to ``min_ratio``.

    Written out rather than taken from ``transformers.get_cosine_schedule_with_warmup`` because a federated round
    starts in the middle of the schedule (at ``round_num * steps_per_round``) and that helper has no offset.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def batch_to(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a collated batch to ``device`` (other entries unchanged)."""
    return {k: v.to(device, non_blocking=True) if k in _BATCH_TENSORS else v for k, v in batch.items()}


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
        self.collator = ReportCollator(model.tokenizer, max_report_tokens=model.config.decoder.max_report_tokens)
        self._writer = None
        if tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(tb_dir))
        self.dp = None  # patient-level DP-SGD replaces the optimizer loop when the config enables it
        if model.config.privacy.dp_sgd.enabled:
            from fedmrg.privacy.dp_sgd import PatientLevelDP

            self.dp = PatientLevelDP(model.config.privacy.dp_sgd, self)
        self._set_logit_adjustment()

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
        parts = site_datasets(self.dataset)
        if not parts:
            raise FedMRGError(
                f"site {self.site!r}: `losses.logit_adjustment` needs the training states; the dataset "
                f"{type(self.dataset).__name__} is not a ReportDataset (set `losses.logit_adjustment: 0`)"
            )
        states = torch.tensor([s for part in parts for s in part.states], dtype=torch.long)
        head.set_logit_adjustment(states.to(head.loss_bias.device), tau)

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
            if self.dp is not None:
                metrics, num_samples = self.dp.run_round(n_steps, round_num)
            else:
                metrics, num_samples = self._run(n_steps, round_num, negatives)
            bank = self._bank_features(round_num)
        self._log_scalars(metrics, step=round_num, prefix="round/")
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
        )
        epoch = 0
        while True:
            for part in site_datasets(self.dataset):
                part.set_epoch(round_num * 10_000 + epoch)
            yield from loader
            epoch += 1

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _run(self, n_steps: int, round_num: int, bank: torch.Tensor | None) -> tuple[dict[str, float], int]:
        cfg, model = self.config, self.model
        model.train()
        model.set_phase("generic")
        optimizer = torch.optim.AdamW(optimizer_groups(model, weight_decay=cfg.weight_decay), lr=cfg.learning_rate)
        total_steps = cfg.rounds * n_steps
        first = round_num * n_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: cosine_factor(first + s, total=total_steps, warmup=cfg.warmup_steps, min_ratio=cfg.min_lr_ratio),
        )
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        gen = torch.Generator().manual_seed(cfg.seed * 7 + round_num)
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        samples = tokens = micro_total = skipped_batches = skipped_steps = 0
        batches = self._batches(round_num)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_steps, desc=f"{self.site} round {round_num}", unit="step", leave=False)
        t0 = time.perf_counter()
        for step in range(n_steps):
            micro = [batch_to(next(batches), self.device) for _ in range(cfg.grad_accum_steps)]
            micro_total += len(micro)
            negatives = None
            if bank is not None and model.config.memory_bank.negatives_per_step > 0:
                idx = torch.randperm(bank.shape[0], generator=gen)[: model.config.memory_bank.negatives_per_step]
                negatives = bank[idx].to(self.device)
            kept, logs = self._generic_phase(micro, negatives, optimizer, scaler)
            skipped_batches += len(micro) - len(kept)
            if kept and logs.pop("_skipped_step", 0.0):
                skipped_steps += 1
            if model.has_specialized and kept:
                s_logs = self._specialized_phase(kept, optimizer, scaler)
                skipped_batches += int(s_logs.pop("_skipped_batches", 0.0))
                skipped_steps += int(s_logs.pop("_skipped_step", 0.0))
                logs |= s_logs
            with warnings.catch_warnings():  # a step skipped as non-finite leaves the optimizer un-stepped: expected
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                scheduler.step()
            for k, v in logs.items():
                sums[k] += v
                counts[k] += 1
            for b, _ in kept:
                samples += b["input_ids"].shape[0]
                tokens += int(b["attention_mask"].sum())
            if skipped_batches > cfg.max_skipped_fraction * cfg.grad_accum_steps * n_steps:
                raise FedMRGError(
                    f"site {self.site!r} round {round_num}: {skipped_batches} of {micro_total} micro-batches had a "
                    f"non-finite loss (limit {cfg.max_skipped_fraction:.0%} of the round); lower "
                    "`training.learning_rate`, check the data, or use `training.mixed_precision: no`"
                )
            if bar is not None:
                bar.update(1)
                if step % cfg.log_every == 0 or step == n_steps - 1:
                    bar.set_postfix({k: f"{sums[k] / counts[k]:.3f}" for k in ("g/lm", "s/lm") if counts[k]})
            if step % cfg.log_every == 0 or step == n_steps - 1:
                self._log_scalars(logs | {"lr": scheduler.get_last_lr()[0]}, step=first + step, prefix="train/")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        metrics = {k: sums[k] / counts[k] for k in sorted(sums)}
        metrics |= {
            "steps": float(n_steps),
            "micro_batches": float(micro_total),
            "samples": float(samples),
            "skipped_batches": float(skipped_batches),
            "skipped_steps": float(skipped_steps),
            "seconds": seconds,
            "samples_per_s": samples / seconds if seconds > 0 else 0.0,
            "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
            "lr": float(scheduler.get_last_lr()[0]),
        }
        return metrics, samples

    def _step(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, n_used: int, n_all: int) -> bool:
        """Rescale for skipped micro-batches, clip, step; False (and no step) when the gradient is not finite."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        scaler.unscale_(optimizer)
        if n_used < n_all:
            for p in params:
                p.grad.mul_(n_all / n_used)
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
        if not torch.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
            scaler.update()
            return False
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return True

    def _float_buffers(self) -> dict[str, torch.Tensor]:
        """Copies of the float buffers (BatchNorm running statistics) a forward pass in train mode updates."""
        return {n: b.detach().clone() for n, b in self.model.named_buffers() if b.is_floating_point()}

    @torch.no_grad()
    def _restore_buffers(self, saved: Mapping[str, torch.Tensor]) -> None:
        buffers = dict(self.model.named_buffers())
        for name, value in saved.items():
            buffers[name].copy_(value)

    def _generic_phase(
        self,
        micro: list[dict[str, Any]],
        negatives: torch.Tensor | None,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
    ) -> tuple[list[tuple[dict[str, Any], EncodedImages]], dict[str, float]]:
        optimizer.zero_grad(set_to_none=True)
        kept: list[tuple[dict[str, Any], EncodedImages]] = []
        logs: dict[str, float] = defaultdict(float)
        for b in micro:
            saved = self._float_buffers()
            with self._autocast():
                losses = generic_step_losses(self.model, b, negatives=negatives)
            if not torch.isfinite(losses.total.detach()):
                self._restore_buffers(saved)  # BatchNorm statistics must not keep what the bad batch put there
                continue
            scaler.scale(losses.total / len(micro)).backward()
            kept.append((b, detach_encoded(losses.encoded)))
            for k, v in losses.as_floats("g/").items():
                logs[k] += v
        if not kept:
            optimizer.zero_grad(set_to_none=True)
            return kept, {}
        out = {k: v / len(kept) for k, v in logs.items()}
        out["_skipped_step"] = 0.0 if self._step(optimizer, scaler, len(kept), len(micro)) else 1.0
        return kept, out

    def _specialized_phase(
        self,
        kept: list[tuple[dict[str, Any], EncodedImages]],
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
    ) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        logs: dict[str, float] = defaultdict(float)
        used = 0
        for b, encoded in kept:
            with self._autocast():
                losses = specialized_step_losses(self.model, b, encoded=encoded)
            if not torch.isfinite(losses.total.detach()):
                continue
            scaler.scale(losses.total / len(kept)).backward()
            used += 1
            for k, v in losses.as_floats("s/").items():
                logs[k] += v
        out: dict[str, float] = {k: v / used for k, v in logs.items()} if used else {}
        out["_skipped_batches"] = float(len(kept) - used)
        out["_skipped_step"] = 0.0
        if used:
            out["_skipped_step"] = 0.0 if self._step(optimizer, scaler, used, len(kept)) else 1.0
        else:
            optimizer.zero_grad(set_to_none=True)
        self.model.set_phase("generic")
        return out

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
                with self._autocast():
                    feats.append(self.model.pooled_features(images.to(self.device)).float().cpu())
        finally:
            self.model.train(was_training)
        return torch.cat(feats)

    # ------------------------------------------------------------------ logging
    def _log_scalars(self, scalars: Mapping[str, float], *, step: int, prefix: str) -> None:
        if self._writer is None:
            return
        for k, v in scalars.items():
            self._writer.add_scalar(f"{self.site}/{prefix}{k}", float(v), step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


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
