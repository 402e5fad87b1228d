"""Patient-level DP-SGD for the FedMRG local trainer, with Opacus (Abadi et al. 2016).

:class:`PatientLevelDP` prepares a FedMRG model for DP-SGD and plugs it into the project's one round loop
(:func:`fedmrg.training.run_round`, with :class:`fedmrg.training.dp.DPSGD` for the steps, batches and ledger) when
``privacy.dp_sgd.enabled``:

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

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from opacus.grad_sample import GradSampleHooks, register_grad_sampler
from opacus.utils.module_utils import trainable_modules
from torch import nn

from fedmrg.errors import ConfigError
from fedmrg.privacy.dp_config import DPSGDConfig
from fedmrg.report.losses import distillation_losses, language_model_loss
from fedmrg.report.run_config import TrainingConfig
from fedmrg.report.state_tokens import StateTokenEmbedding
from fedmrg.report.steps import StepLosses, detach_encoded, generic_step_groups
from fedmrg.training.dp import DPSGD, LEDGER_FILE, METRIC_PREFIX, RELEASABLE_METRICS
from fedmrg.training.loop import Phase
from fedmrg.training.steps import weight_decay_groups

if TYPE_CHECKING:
    from fedmrg.report.model import FedMRGModel

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
def per_sample_lm_loss(out: Any) -> torch.Tensor:
    """(B,) LM loss of a :class:`~fedmrg.report.model.FedMRGOutput`, each over its own study's report tokens."""
    return language_model_loss(out.logits, out.labels, out.label_weights, per_sample=True)


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
    per_study = per_sample_lm_loss(out)
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
    per_study = per_sample_lm_loss(out)
    lm = per_study.mean()
    kd_cos = kd_kl = None
    if cfg.kd_generic_to_specialized:
        c, k = _distil(model, batch, "generic", out)
        per_study = per_study + cfg.losses.lambda_kd * (c + k)
        kd_cos, kd_kl = c.mean(), k.mean()
    return StepLosses(per_study.mean(), lm, None, None, kd_cos, kd_kl, encoded)


# ---------------------------------------------------------------------------------------------------- engine
class PatientLevelDP(DPSGD):
    """DP-SGD for one site's FedMRG model (see the module docstring): the :class:`~fedmrg.training.dp.DPSGD`
    accounting plus frozen BatchNorm, Opacus hooks and the per-study G and S losses as two loop phases.

    Args:
        config: the ``privacy.dp_sgd`` section (must be enabled).
        model: the site's model, already on ``device``; it gets frozen BatchNorm and Opacus hooks here.
        training: the ``training`` section of the run configuration.
        site: the site's name (in messages).
        dataset_size: the number of training studies N.
        device: the training device.
        amp_dtype: the autocast dtype of the run (float16 is refused).
        generator: torch generator for Poisson sampling and noise; None (production) seeds one from ``secrets``.
            Tests pass a seeded one. Never derive it from the run's seed.

    Raises:
        ConfigError: when the run's configuration is incompatible with DP-SGD (the message says what to change).
    """

    def __init__(
        self,
        config: DPSGDConfig,
        model: FedMRGModel,
        training: TrainingConfig,
        *,
        site: str,
        dataset_size: int,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not config.enabled:
            raise ValueError("PatientLevelDP needs `privacy.dp_sgd.enabled: true`")
        where = f"site {site!r}: `privacy.dp_sgd.enabled`"
        if model.config.uses_contrastive:
            raise ConfigError(
                f"{where} requires `ablations.no_contrastive: true`: the contrastive loss couples the studies of a "
                "batch (no per-study gradient) and the memory bank uploads raw patient-derived features"
            )
        if training.grad_accum_steps != 1:
            raise ConfigError(f"{where} requires `training.grad_accum_steps: 1` (one Poisson batch per step)")
        if amp_dtype == torch.float16:
            raise ConfigError(f"{where} does not support `training.mixed_precision: fp16`; use bf16 or no")
        super().__init__(
            config,
            dataset_size=dataset_size,
            batch_size=training.batch_size,
            rounds=training.rounds,
            releases_per_batch=2 if model.has_specialized else 1,
            who=f"site {site!r}",
            generator=generator,
        )
        self.model = model
        self.training = training
        self.frozen_batchnorms = freeze_batchnorm(model)
        model.to(device)
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

    def phases(self, g_params: list[nn.Parameter], s_params: list[nn.Parameter]) -> list[Phase]:
        """The loop phases of a round: the G step on ``g_params`` and (with S) the S step on ``s_params``, each a
        noisy :class:`~fedmrg.training.dp.DPSGDStep` over AdamW. Call :meth:`prepare_round` first (sigma)."""
        model, lr, wd = self.model, self.training.learning_rate, self.training.weight_decay

        def g_loss(batch: Mapping[str, Any], carry: dict[str, Any]) -> dict[str, torch.Tensor]:
            g = dp_generic_losses(model, batch)
            carry["encoded"] = g.encoded
            return g.as_dict()

        def s_loss(batch: Mapping[str, Any], carry: dict[str, Any]) -> dict[str, torch.Tensor]:
            return dp_specialized_losses(model, batch, carry["encoded"]).as_dict()

        phases = [
            Phase("g", g_loss, self.make_step(generic_step_groups(model, g_params, weight_decay=wd, lr=lr,
                  head_lr_scale=self.training.head_lr_scale), lr=lr),
                  enter=lambda: model.set_phase("generic"), loss_name="total"),
        ]  # fmt: skip
        if s_params:
            phases.append(
                Phase("s", s_loss, self.make_step(weight_decay_groups(s_params, wd), lr=lr),
                      enter=lambda: model.set_phase("specialized"), loss_name="total")
            )  # fmt: skip
        return phases


__all__ = [
    "LEDGER_FILE",
    "METRIC_PREFIX",
    "RELEASABLE_METRICS",
    "FrozenBatchNorm2d",
    "PatientLevelDP",
    "dp_generic_losses",
    "dp_specialized_losses",
    "freeze_batchnorm",
    "per_sample_lm_loss",
]
