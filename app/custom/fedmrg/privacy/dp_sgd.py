"""Patient-level DP-SGD for the FedMRG local trainer, with Opacus (Abadi et al. 2016).

:class:`PatientLevelDP` replaces the trainer's optimizer loop for one round when ``privacy.dp_sgd.enabled``:

- **Sampling**: each optimizer step draws a Poisson batch (every study independently with probability
  ``q = batch_size / N``, Opacus ``UniformWithReplacementSampler``), the sampling the accountant assumes. Batches
  may be empty: the step then releases noise only.
- **Per-sample gradients**: Opacus ``GradSampleHooks`` on the model (no wrapper; the trainer keeps calling the
  model). A custom grad sampler covers :class:`~fedmrg.report.state_tokens.StateTokenEmbedding`; Opacus's functorch
  fallback covers other custom layers (e.g. ``LlamaRMSNorm`` in CLM mode).
- **Losses are per-sample**: the LM and distillation losses are averaged per study, then over the batch (the
  model's own losses average over every token of the batch, which makes one study's gradient depend on the other
  studies' lengths and breaks the sensitivity bound). The diagnosis loss is already a per-study mean.
- **BatchNorm**: frozen (:class:`FrozenBatchNorm2d`: running statistics and affine parameters become constants,
  normalisation always uses the running statistics). Chosen over Opacus's ``ModuleValidator.fix`` (BatchNorm ->
  GroupNorm) because it keeps the shared-key contract and the architecture identical at every site and on the
  server, so one hospital can switch DP on alone, and because it keeps a pretrained encoder's statistics. The
  encoder's convolutions still train; the BN statistics are never updated from private batches (they would be an
  un-noised release).
- **Two noisy steps per batch**: the G step (encoder, projector, head, state tokens, G; DPOptimizer over AdamW) and
  the S step (S2 only; its own DPOptimizer) both clip every study's gradient to ``C`` and add ``N(0, (sigma C)^2)``.
  They release two functions of the same Poisson batch, each with L2 sensitivity ``C``: together a Gaussian
  mechanism with sensitivity ``sqrt(2) C`` and noise ``sigma C``, i.e. noise multiplier ``sigma / sqrt(2)``. The
  ledger records one sampled Gaussian step per batch at ``sigma / sqrt(2)`` (``sigma`` without S). S must be DP too:
  it never leaves the site, but it distils into G.
- **Accounting**: :class:`~fedmrg.privacy.accounting.PrivacyLedger` (Opacus RDP by default), saved with the site's
  private state; a round that would exceed ``max_epsilon`` is refused before it starts.
- **Randomness**: Poisson sampling and noise come from generators seeded from the OS entropy pool (``secrets``),
  never from the run's seed, which is in the job configuration. Tests pass a seeded generator explicitly. Opacus's
  ``secure_mode`` (floating-point-attack-resistant noise) needs ``torchcsprng``, which is not installed.
"""

from __future__ import annotations

import math
import secrets
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from opacus.accountants.utils import get_noise_multiplier
from opacus.grad_sample import GradSampleHooks, register_grad_sampler
from opacus.optimizers import DPOptimizer
from opacus.utils.module_utils import trainable_modules
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.utils.data import DataLoader

from fedmrg.errors import ConfigError, FedMRGError
from fedmrg.privacy.accounting import PrivacyLedger
from fedmrg.privacy.dp_config import DPSGDConfig
from fedmrg.report.losses import distillation_losses
from fedmrg.report.prompt_layout import IGNORE_INDEX
from fedmrg.report.state_tokens import StateTokenEmbedding
from fedmrg.report.steps import StepLosses, detach_encoded

if TYPE_CHECKING:
    from fedmrg.report.model import FedMRGModel
    from fedmrg.report.trainer import LocalTrainer

#: File of the patient-level ledger in the site's private-state folder.
LEDGER_FILE = "dp_sgd_ledger.json"
#: Metric keys that may leave the site under DP-SGD (privacy parameters and data-independent bookkeeping); the
#: losses, computed on private batches without noise, stay in the local TensorBoard.
RELEASABLE_METRICS = ("steps", "lr", "seconds")
METRIC_PREFIX = "dp/"
#: Trainable layers whose buffers are constants (not data statistics), allowed under DP-SGD.
_CONSTANT_BUFFER_MODULES = (StateTokenEmbedding,)


# ---------------------------------------------------------------------------------------------------- BatchNorm
class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with constant statistics and affine parameters, always normalising with the running statistics.

    Written here because torchvision (which has one) is not a dependency. Keeps BatchNorm's state-dict names
    (``weight``, ``bias``, ``running_mean``, ``running_var``) as float buffers, so the shared state is unchanged;
    ``num_batches_tracked`` (an int counter, never shared) is dropped.
    """

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        n = bn.num_features
        self.eps = bn.eps
        for name, default in (("weight", torch.ones(n)), ("bias", torch.zeros(n))):
            value = getattr(bn, name)
            self.register_buffer(name, (value.detach() if value is not None else default).clone())
        for name, default in (("running_mean", torch.zeros(n)), ("running_var", torch.ones(n))):
            value = getattr(bn, name)
            self.register_buffer(name, (value.detach() if value is not None else default).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W): per-channel affine map, the same for every sample (no batch coupling)."""
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def freeze_batchnorm(module: nn.Module) -> int:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` by :class:`FrozenBatchNorm2d` in place; returns the count."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child).to(child.running_mean.device))
            count += 1
        else:
            count += freeze_batchnorm(child)
    return count


# ---------------------------------------------------------------------------------------------------- grad sampler
@register_grad_sampler(StateTokenEmbedding)
def compute_state_token_grad_sample(
    layer: StateTokenEmbedding, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of the state rows (B, K, d) of StateTokenEmbedding (and of its per-observation rows
    (B, 14, d) when the layer has them).

    The layer writes ``weight[state]`` (``+ observation[slot]``, the k-th state token of a sequence being slot k) at
    the state-token positions, so each row's per-sample gradient is the sum of the output gradient ``backprops``
    (B, T, d) over the positions that read it. Written by hand because the layer's forward is not vmap-able (Opacus's
    functorch fallback), and checked against autograd in the tests.
    """
    input_ids = activations[0]
    hits = input_ids.unsqueeze(-1) == layer.token_ids.to(input_ids.device)  # (B, T, K)
    g = backprops.to(layer.weight.dtype)
    ret = {}
    if layer.weight.requires_grad:
        ret[layer.weight] = torch.einsum("btk,btd->bkd", hits.to(g.dtype), g)
    observation = getattr(layer, "observation", None)
    if isinstance(observation, nn.Parameter) and observation.requires_grad:
        is_state = hits.any(-1)
        slot = (is_state.long().cumsum(-1) - 1).clamp(0, observation.shape[0] - 1)
        slot_onehot = F.one_hot(slot, observation.shape[0]) * is_state.unsqueeze(-1)  # (B, T, 14)
        ret[observation] = torch.einsum("btj,btd->bjd", slot_onehot.to(g.dtype), g)
    return ret


# ---------------------------------------------------------------------------------------------------- losses
def per_sample_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) mean next-token cross-entropy over each study's own report tokens; logits (B, L, V), labels (B, L)."""
    targets = labels[:, 1:]
    tok = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )  # (B, L-1)
    mask = (targets != IGNORE_INDEX).to(tok.dtype)
    return (tok * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _distil(model: FedMRGModel, batch: Mapping[str, Any], teacher: str, out: Any) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        t = model(batch, adapter=teacher, encoded=detach_encoded(out.encoded))  # type: ignore[arg-type]
    return distillation_losses(
        out.logits, out.hidden, t.logits, t.hidden, out.report_positions,
        temperature=model.config.losses.kd_temperature, per_sample=True,
    )  # fmt: skip


def dp_generic_losses(model: FedMRGModel, batch: Mapping[str, Any]) -> StepLosses:
    """G-step losses with per-study normalisation (see the module docstring); no contrastive term."""
    cfg = model.config
    model.set_phase("generic")
    out = model(batch, adapter="generic")
    per_study = per_sample_lm_loss(out.logits, out.labels)
    lm = per_study.mean()
    kd_cos = kd_kl = None
    if cfg.kd_specialized_to_generic:
        c, k = _distil(model, batch, "specialized", out)
        per_study = per_study + cfg.losses.lambda_kd * (c + k)
        kd_cos, kd_kl = c.mean(), k.mean()
    total = per_study.mean()
    if out.cls_loss is not None:  # mean over (B, 14): already a per-study mean averaged over the batch
        total = total + cfg.losses.lambda_cls * out.cls_loss
    return StepLosses(total, lm, out.cls_loss, None, kd_cos, kd_kl, out.encoded)


def dp_specialized_losses(model: FedMRGModel, batch: Mapping[str, Any], encoded: Any) -> StepLosses:
    """S-step losses (only S2 trains) with per-study normalisation, on the G step's detached visual tokens."""
    cfg = model.config
    model.set_phase("specialized")
    encoded = detach_encoded(encoded)
    out = model(batch, adapter="specialized", encoded=encoded)
    per_study = per_sample_lm_loss(out.logits, out.labels)
    lm = per_study.mean()
    kd_cos = kd_kl = None
    if cfg.kd_generic_to_specialized:
        c, k = _distil(model, batch, "generic", out)
        per_study = per_study + cfg.losses.lambda_kd * (c + k)
        kd_cos, kd_kl = c.mean(), k.mean()
    return StepLosses(per_study.mean(), lm, None, None, kd_cos, kd_kl, encoded)


# ---------------------------------------------------------------------------------------------------- engine
def _collate_or_none(collate: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> Callable[[list], Any]:
    def fn(samples: list[dict[str, Any]]) -> dict[str, Any] | None:
        return collate(samples) if samples else None  # an empty Poisson batch: a noise-only step

    return fn


def _fill_missing_grad_samples(params: list[nn.Parameter], batch_size: int) -> None:
    """Zero per-sample gradients (batch_size, *shape) for parameters the batch did not reach (or an empty batch)."""
    for p in params:
        if getattr(p, "grad_sample", None) is None:
            p.grad_sample = torch.zeros((batch_size, *p.shape), dtype=p.dtype, device=p.device)


class PatientLevelDP:
    """DP-SGD for one site's :class:`~fedmrg.report.trainer.LocalTrainer` (see the module docstring).

    Args:
        config: the ``privacy.dp_sgd`` section (must be enabled).
        trainer: the site's trainer; its model gets frozen BatchNorm and Opacus hooks here.
        generator: torch generator for Poisson sampling and noise; None (production) seeds one from ``secrets``.
            Tests pass a seeded one. Never derive it from the run's seed.

    Raises:
        ConfigError: when the run's configuration is incompatible with DP-SGD (the message says what to change).
    """

    def __init__(self, config: DPSGDConfig, trainer: LocalTrainer, *, generator: torch.Generator | None = None) -> None:
        if not config.enabled:
            raise ValueError("PatientLevelDP needs `privacy.dp_sgd.enabled: true`")
        model, training = trainer.model, trainer.config
        where = f"site {trainer.site!r}: `privacy.dp_sgd.enabled`"
        if model.config.uses_contrastive:
            raise ConfigError(
                f"{where} requires `ablations.no_contrastive: true`: the contrastive loss couples the studies of a "
                "batch (no per-study gradient) and the memory bank uploads raw patient-derived features"
            )
        if training.grad_accum_steps != 1:
            raise ConfigError(f"{where} requires `training.grad_accum_steps: 1` (one Poisson batch per step)")
        if trainer.amp_dtype == torch.float16:
            raise ConfigError(f"{where} does not support `training.mixed_precision: fp16`; use bf16 or no")
        self.config = config
        self.trainer = trainer
        self.dataset_size = len(trainer.dataset)  # type: ignore[arg-type]
        self.sample_rate = min(1.0, training.batch_size / self.dataset_size)
        self.releases_per_batch = 2 if model.has_specialized else 1
        self.noise_multiplier: float | None = config.noise_multiplier
        self.ledger = PrivacyLedger(config.accountant, delta=config.delta)
        self.generator = generator or torch.Generator().manual_seed(secrets.randbits(63))
        self.frozen_batchnorms = freeze_batchnorm(model)
        model.to(trainer.device)
        self.hooks = self._attach_hooks(model)

    @staticmethod
    def _attach_hooks(model: FedMRGModel) -> GradSampleHooks:
        """Opacus hooks on every module that trains in some phase (set trainable for the call, then the phase)."""
        trainable = {id(p) for p in model.trainable_parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
        try:
            # Opacus's strict check rejects any trainable layer with buffers, because buffers such as BatchNorm's
            # running statistics are un-noised functions of the data. Ours are frozen away; the one left is
            # StateTokenEmbedding's constant vocabulary ids. Check that here, then let Opacus run non-strict.
            with_buffers = [
                f"{name} ({type(m).__name__})"
                for name, m in trainable_modules(model)
                if list(m.buffers(recurse=False)) and not isinstance(m, _CONSTANT_BUFFER_MODULES)
            ]
            if with_buffers:
                raise ConfigError(f"DP-SGD: trainable layers with data-dependent buffers: {', '.join(with_buffers)}")
            return GradSampleHooks(model, batch_first=True, loss_reduction="mean", strict=False)
        finally:
            model.set_phase("generic")

    # -- accounting ---------------------------------------------------------------------------------------------
    @property
    def accounted_noise_multiplier(self) -> float:
        """The noise multiplier of the one sampled Gaussian step recorded per batch: sigma / sqrt(releases)."""
        if self.noise_multiplier is None:
            raise RuntimeError("noise multiplier not resolved yet (call prepare_round first)")
        return self.noise_multiplier / math.sqrt(self.releases_per_batch)

    def prepare_round(self, n_steps: int, round_num: int) -> float:
        """Resolve sigma (from ``target_epsilon`` over ``training.rounds`` rounds of ``n_steps``) and check the budget.

        Returns the projected epsilon after the round; raises PrivacyBudgetExhausted when it exceeds ``max_epsilon``.
        """
        cfg = self.config
        if self.noise_multiplier is None:
            total = self.trainer.config.rounds * n_steps
            sigma_eff = get_noise_multiplier(
                target_epsilon=cfg.target_epsilon,
                target_delta=cfg.delta,
                sample_rate=self.sample_rate,
                steps=total,
                accountant=cfg.accountant,
            )
            self.noise_multiplier = sigma_eff * math.sqrt(self.releases_per_batch)
        return self.ledger.check_budget(
            cfg.max_epsilon,
            noise_multiplier=self.accounted_noise_multiplier,
            sample_rate=self.sample_rate,
            steps=n_steps,
            who=f"site {self.trainer.site!r} round {round_num}",
        )

    def metrics(self) -> dict[str, float]:
        """The releasable privacy metrics: epsilon at delta so far and the mechanism's parameters."""
        return {
            f"{METRIC_PREFIX}epsilon": self.ledger.epsilon(),
            f"{METRIC_PREFIX}delta": self.config.delta,
            f"{METRIC_PREFIX}noise_multiplier": float(self.noise_multiplier or 0.0),
            f"{METRIC_PREFIX}max_grad_norm": self.config.max_grad_norm,
            f"{METRIC_PREFIX}sample_rate": self.sample_rate,
            f"{METRIC_PREFIX}steps_total": float(self.ledger.steps),
        }

    @staticmethod
    def releasable(metrics: Mapping[str, float]) -> dict[str, float]:
        """The subset of round metrics that may leave the site (``dp/*`` and data-independent bookkeeping)."""
        return {k: v for k, v in metrics.items() if k.startswith(METRIC_PREFIX) or k in RELEASABLE_METRICS}

    def save(self, directory: str | Path) -> None:
        """Write the ledger into the site's private-state folder."""
        self.ledger.save(Path(directory) / LEDGER_FILE)

    def load(self, directory: str | Path) -> bool:
        """Restore the ledger from the private-state folder; False when none was saved there."""
        return self.ledger.load(Path(directory) / LEDGER_FILE)

    # -- training -----------------------------------------------------------------------------------------------
    def _optimizer(self, params: list[nn.Parameter], lr: float, weight_decay: float) -> DPOptimizer:
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        optimizer = DPOptimizer(
            torch.optim.AdamW(groups, lr=lr),
            noise_multiplier=float(self.noise_multiplier),
            max_grad_norm=self.config.max_grad_norm,
            expected_batch_size=self.trainer.config.batch_size,
            loss_reduction="mean",
            generator=self.generator,
        )
        for p in params:  # DPOptimizer initialises only the parameters trainable in the current phase
            if not hasattr(p, "summed_grad"):
                p.summed_grad = None
        return optimizer

    def _loader(self, n_steps: int, round_num: int) -> DataLoader:
        from fedmrg.report.data_loading import site_datasets

        for part in site_datasets(self.trainer.dataset):
            part.set_epoch(round_num * 10_000)
        sampler = UniformWithReplacementSampler(
            num_samples=self.dataset_size, sample_rate=self.sample_rate, generator=self.generator, steps=n_steps
        )
        return DataLoader(
            self.trainer.dataset,
            batch_sampler=sampler,
            collate_fn=_collate_or_none(self.trainer.collator),
            num_workers=self.trainer.config.num_workers,
        )

    def _dp_step(self, optimizer: DPOptimizer, loss: torch.Tensor | None, batch_size: int) -> None:
        if loss is not None:
            with warnings.catch_warnings():  # frozen inputs (images, frozen LM layers) before the first trainable layer
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
        _fill_missing_grad_samples(optimizer.params, batch_size)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def run_round(self, n_steps: int, round_num: int) -> tuple[dict[str, float], int]:
        """Train ``n_steps`` DP-SGD steps; returns (metrics incl. ``dp/*``, the FedAvg weight).

        The weight is the expected number of studies, ``batch_size * n_steps``, not the realised Poisson count (which
        is data-dependent and would leave the site un-noised).
        """
        from fedmrg.report.trainer import batch_to, cosine_factor

        trainer, cfg, model = self.trainer, self.trainer.config, self.trainer.model
        self.prepare_round(n_steps, round_num)
        model.train()
        model.set_phase("generic")
        g_params = [p for p in model.trainable_parameters() if p.requires_grad]
        s_params = [p for p in model.trainable_parameters() if not p.requires_grad]
        g_opt = self._optimizer(g_params, cfg.learning_rate, cfg.weight_decay)
        s_opt = self._optimizer(s_params, cfg.learning_rate, cfg.weight_decay) if model.has_specialized else None
        first = round_num * n_steps

        def factor(s: int) -> float:
            return cosine_factor(
                first + s, total=cfg.rounds * n_steps, warmup=cfg.warmup_steps, min_ratio=cfg.min_lr_ratio
            )

        schedulers = [torch.optim.lr_scheduler.LambdaLR(o.original_optimizer, factor) for o in (g_opt, s_opt) if o]
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        empty = realised = 0
        t0 = time.perf_counter()
        for step, batch in enumerate(self._loader(n_steps, round_num)):
            b = 0 if batch is None else int(batch["input_ids"].shape[0])
            realised += b
            empty += b == 0
            logs: dict[str, float] = {}
            with trainer._autocast():
                g = dp_generic_losses(model, batch_to(batch, trainer.device)) if b else None
            self._check_finite(g, round_num, step)
            self._dp_step(g_opt, None if g is None else g.total, b)
            if g is not None:
                logs |= g.as_floats("g/")
            if s_opt is not None:
                s = None
                if g is not None:
                    with trainer._autocast():
                        s = dp_specialized_losses(model, batch_to(batch, trainer.device), g.encoded)
                    self._check_finite(s, round_num, step)
                else:
                    model.set_phase("specialized")
                self._dp_step(s_opt, None if s is None else s.total, b)
                model.set_phase("generic")
                if s is not None:
                    logs |= s.as_floats("s/")
            self.ledger.step(noise_multiplier=self.accounted_noise_multiplier, sample_rate=self.sample_rate)
            for sch in schedulers:
                sch.step()
            for k, v in logs.items():
                sums[k] += v
                counts[k] += 1
            if step % cfg.log_every == 0 or step == n_steps - 1:
                trainer._log_scalars(logs | {"lr": schedulers[0].get_last_lr()[0]}, step=first + step, prefix="train/")
        seconds = time.perf_counter() - t0
        metrics = {k: sums[k] / counts[k] for k in sorted(sums)}
        metrics |= {
            "steps": float(n_steps),
            "samples": float(realised),
            "empty_batches": float(empty),
            "skipped_batches": 0.0,  # under DP-SGD a non-finite loss fails the round instead of skipping a batch
            "skipped_steps": 0.0,
            "seconds": seconds,
            "samples_per_s": realised / seconds if seconds > 0 else 0.0,
            "lr": float(schedulers[0].get_last_lr()[0]),
        }
        metrics |= self.metrics()
        return metrics, cfg.batch_size * n_steps

    def _check_finite(self, losses: StepLosses | None, round_num: int, step: int) -> None:
        if losses is not None and not torch.isfinite(losses.total.detach()):
            # skipping a batch would be a data-dependent, un-noised decision: fail the round instead
            raise FedMRGError(
                f"site {self.trainer.site!r} round {round_num} step {step}: non-finite loss under DP-SGD; the round "
                "is refused (lower `training.learning_rate` or use `training.mixed_precision: no`)"
            )


__all__ = [
    "FrozenBatchNorm2d",
    "PatientLevelDP",
    "dp_generic_losses",
    "dp_specialized_losses",
    "freeze_batchnorm",
    "per_sample_lm_loss",
]
