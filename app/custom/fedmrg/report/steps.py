"""Local training steps: FedMRG's alternating G step and S step with mutual distillation (paper 3.3.2).

G step (``phase="generic"``): G active; G, encoder, projector, diagnosis head, state tokens (and the decoder in CLM
mode) train on::

    L_G = L_lm(G) + lambda_cls * L_cls + lambda_con * L_con + lambda_kd * (L_cos(h_G, h_S) + KL(p_S || p_G))

S step (``phase="specialized"``): S1 + S2 active; only S2 trains on::

    L_S = L_lm(S) + lambda_kd * (L_cos(h_S, h_G) + KL(p_G || p_S))

The teacher of each distillation term runs under ``torch.no_grad`` with the other adapter active, so its gradient
never reaches the teacher's adapter (tests check both directions). The S step reuses the G step's visual tokens,
detached (the encoder is not trained in the S step). Models without S (baselines, ``no_specialized``) run only the
G step without distillation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedmrg.report.losses import distillation_losses
from fedmrg.report.model import EncodedImages, FedMRGModel, FedMRGOutput
from fedmrg.training.steps import weight_decay_groups


@dataclass
class StepLosses:
    """Losses of one step; ``total`` is weighted and differentiable, the parts are unweighted (None when off)."""

    total: torch.Tensor
    lm: torch.Tensor
    cls: torch.Tensor | None = None
    con: torch.Tensor | None = None
    kd_cos: torch.Tensor | None = None
    kd_kl: torch.Tensor | None = None
    encoded: EncodedImages | None = None

    def as_floats(self, prefix: str = "") -> dict[str, float]:
        """The non-None parts as Python floats, keys prefixed (e.g. ``"g/lm"``) for logging."""
        parts = {"total": self.total, "lm": self.lm, "cls": self.cls, "con": self.con}
        parts |= {"kd_cos": self.kd_cos, "kd_kl": self.kd_kl}
        return {f"{prefix}{k}": float(v.detach()) for k, v in parts.items() if v is not None}

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The loss dict of :func:`fedmrg.training.run_round`: ``loss`` (the weighted total) and the non-None parts."""
        parts = {"loss": self.total, "lm": self.lm, "cls": self.cls, "con": self.con}
        parts |= {"kd_cos": self.kd_cos, "kd_kl": self.kd_kl}
        return {k: v for k, v in parts.items() if v is not None}


def detach_encoded(encoded: EncodedImages) -> EncodedImages:
    """A copy of ``encoded`` cut from the graph (no contrastive features), to reuse the visual tokens in a second pass."""
    return EncodedImages(
        tokens=encoded.tokens.detach(),
        pooled=encoded.pooled.detach(),
        state_logits=None if encoded.state_logits is None else encoded.state_logits.detach(),
        contrast_features=None,
    )


def _teacher(
    model: FedMRGModel, batch: Mapping[str, torch.Tensor], adapter: str, encoded: EncodedImages
) -> FedMRGOutput:
    with torch.no_grad():
        return model(batch, adapter=adapter, encoded=detach_encoded(encoded))  # type: ignore[arg-type]


def _distill_from(
    model: FedMRGModel,
    batch: Mapping[str, torch.Tensor],
    teacher_adapter: str,
    out: FedMRGOutput,
    encoded: EncodedImages,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper eq. 4-5: (cosine-embedding, KL) of the student ``out`` against the ``teacher_adapter`` pass (no grad)."""
    teacher = _teacher(model, batch, teacher_adapter, encoded)
    return distillation_losses(
        out.logits,
        out.hidden,
        teacher.logits,
        teacher.hidden,
        out.report_positions,
        temperature=model.config.losses.kd_temperature,
    )


def generic_step_losses(
    model: FedMRGModel, batch: Mapping[str, torch.Tensor], *, negatives: torch.Tensor | None = None
) -> StepLosses:
    """Losses of the G step (sets ``phase="generic"``); call ``.total.backward()`` then the optimizer."""
    cfg = model.config
    model.set_phase("generic")
    out = model(batch, adapter="generic", negatives=negatives)
    total = out.lm_loss
    if out.cls_loss is not None:
        total = total + cfg.losses.lambda_cls * out.cls_loss
    if out.con_loss is not None:
        total = total + cfg.losses.lambda_con * out.con_loss
    kd_cos = kd_kl = None
    if cfg.kd_specialized_to_generic:
        kd_cos, kd_kl = _distill_from(model, batch, "specialized", out, out.encoded)
        total = total + cfg.losses.lambda_kd * (kd_cos + kd_kl)
    return StepLosses(total, out.lm_loss, out.cls_loss, out.con_loss, kd_cos, kd_kl, out.encoded)


def specialized_step_losses(
    model: FedMRGModel, batch: Mapping[str, torch.Tensor], *, encoded: EncodedImages | None = None
) -> StepLosses:
    """Losses of the S step (sets ``phase="specialized"``: only S2 trains).

    Args:
        encoded: the G step's visual side to reuse (detached here); None recomputes it without gradient.
    """
    cfg = model.config
    model.set_phase("specialized")
    if encoded is None:
        with torch.no_grad():
            encoded = model.encode(batch["images"])
    encoded = detach_encoded(encoded)
    out = model(batch, adapter="specialized", encoded=encoded)
    total = out.lm_loss
    kd_cos = kd_kl = None
    if cfg.kd_generic_to_specialized:
        kd_cos, kd_kl = _distill_from(model, batch, "generic", out, encoded)
        total = total + cfg.losses.lambda_kd * (kd_cos + kd_kl)
    return StepLosses(total, out.lm_loss, None, None, kd_cos, kd_kl, encoded)


def train_step(
    model: FedMRGModel,
    batch: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    negatives: torch.Tensor | None = None,
    max_grad_norm: float | None = None,
) -> dict[str, float]:
    """One local iteration: G step, then (with S) S step, each with its own backward and optimizer step.

    ``optimizer`` holds :meth:`FedMRGModel.trainable_parameters`; parameters frozen in a step get no gradient and
    are skipped by the optimizer (``zero_grad`` sets grads to None). Returns the losses as floats, keys ``g/...``
    and ``s/...``. Leaves the model in the generic phase.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    g = generic_step_losses(model, batch, negatives=negatives)
    g.total.backward()
    _clip(model, max_grad_norm)
    optimizer.step()
    logs = g.as_floats("g/")
    if model.has_specialized:
        optimizer.zero_grad(set_to_none=True)
        s = specialized_step_losses(model, batch, encoded=g.encoded)
        s.total.backward()
        _clip(model, max_grad_norm)
        optimizer.step()
        logs |= s.as_floats("s/")
    optimizer.zero_grad(set_to_none=True)
    model.set_phase("generic")
    return logs


def optimizer_groups(model: FedMRGModel, *, weight_decay: float = 0.05) -> list[dict]:
    """AdamW parameter groups over :meth:`FedMRGModel.trainable_parameters`: weight decay on matrices, none on
    biases, norms and embedding-row vectors (ndim <= 1), as PromptMRG (paper 4.2: AdamW, weight decay 0.05)."""
    return weight_decay_groups(model.trainable_parameters(), weight_decay)


def generic_step_groups(
    model: FedMRGModel, params: Sequence[torch.nn.Parameter], *, weight_decay: float, lr: float, head_lr_scale: float
) -> list[dict]:
    """AdamW groups of the G step: :func:`~fedmrg.training.steps.weight_decay_groups` over ``params``, the diagnosis
    head's own at ``lr * head_lr_scale`` (a linear head on features that move under it needs larger steps than the
    adapters around it: see ``training.head_lr_scale``)."""
    head = set() if model.diagnosis_head is None else {id(p) for p in model.diagnosis_head.parameters()}
    rest = [p for p in params if id(p) not in head]
    mine = [p for p in params if id(p) in head]
    groups = weight_decay_groups(rest, weight_decay)
    if mine:
        groups += weight_decay_groups(mine, weight_decay, lr=lr * head_lr_scale)
    return [g for g in groups if g["params"]]


def _clip(model: FedMRGModel, max_grad_norm: float | None) -> None:
    if max_grad_norm is not None:
        params = [p for p in model.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
