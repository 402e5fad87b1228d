"""PEFT adapters on the decoder: FedMRG's dual LoRA adapters and the baselines' single adapter (paper 3.3).

FedMRG (``method: fedmrg``) puts three LoRA adapters on the same layers with PEFT's multi-adapter support:

- ``generic`` (G): trained in the G step, averaged by the server.
- ``spec_global`` (S1): a frozen copy of G made at the start of every round (:func:`copy_adapter`).
- ``spec_local`` (S2): trained in the S step, never leaves the site.

S = S1 + S2 (both active, each at LoRA scale). Mixed inference (paper eq. 6) activates all three and sets PEFT's
per-adapter LoRA scaling: ``h = W0 x + alpha * G(x) + (1 - alpha) * (S1(x) + S2(x))``.

Baselines are one PEFT adapter named ``generic``: LoRA (``fedlora``), prompt tuning (``fedprompt``), prefix tuning
(``fedprefix``) or VeRA (``fedvera``); ``full`` has none.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from peft import (
    LoraConfig,
    PeftConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    TaskType,
    VeraConfig,
    get_peft_model,
)
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import PreTrainedModel

from fedmrg.errors import ConfigError
from fedmrg.report.config import FedMRGConfig

GENERIC = "generic"
SPEC_GLOBAL = "spec_global"
SPEC_LOCAL = "spec_local"
ADAPTER_NAMES: tuple[str, ...] = (GENERIC, SPEC_GLOBAL, SPEC_LOCAL)

AdapterMode = Literal["generic", "specialized", "mixed"]


def peft_config_for(config: FedMRGConfig) -> PeftConfig | None:
    """The PEFT config of ``config.method`` (None for ``full``)."""
    a = config.adapter
    kind = config.peft_type
    if kind == "lora":
        return LoraConfig(
            r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules=list(a.target_modules), bias="none"
        )
    if kind == "vera":
        # save_projection=False: VeRA's frozen random projections are regenerated from `projection_prng_key`
        # (identical at every site), so only the trained scaling vectors travel.
        with warnings.catch_warnings():  # PEFT warns about exactly this choice
            warnings.filterwarnings("ignore", message="Specified to not save vera_A and vera_B")
            return VeraConfig(
                r=a.vera_r, target_modules=list(a.target_modules), vera_dropout=a.dropout, save_projection=False
            )
    if kind == "prompt":
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=a.num_virtual_tokens)
    if kind == "prefix":
        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=a.num_virtual_tokens)
    return None


def attach_adapters(model: PreTrainedModel, config: FedMRGConfig) -> nn.Module:
    """Wrap ``model`` with the method's PEFT adapter(s); returns a ``PeftModel`` (or ``model`` itself for ``full``)."""
    peft_config = peft_config_for(config)
    if peft_config is None:
        return model
    try:
        peft_model = get_peft_model(model, peft_config, adapter_name=GENERIC)
    except ValueError as e:  # e.g. target modules not found in the base model
        raise ConfigError(f"`adapter`: cannot attach {config.peft_type} adapters to the decoder: {e}") from e
    if config.uses_specialized:
        peft_model.add_adapter(SPEC_GLOBAL, peft_config)
        peft_model.add_adapter(SPEC_LOCAL, peft_config)
        copy_adapter(peft_model, GENERIC, SPEC_GLOBAL)
        activate(peft_model, {GENERIC: 1.0})
    return peft_model


def adapter_plan(mode: AdapterMode, *, alpha: float) -> dict[str, float]:
    """Active adapters and their LoRA scale factors for ``mode`` (dual-adapter models only).

    ``generic``: G at 1. ``specialized``: S1 and S2 at 1. ``mixed``: G at ``alpha``, S1 and S2 at ``1 - alpha``.
    """
    if mode == "generic":
        return {GENERIC: 1.0}
    if mode == "specialized":
        return {SPEC_GLOBAL: 1.0, SPEC_LOCAL: 1.0}
    if mode == "mixed":
        return {GENERIC: alpha, SPEC_GLOBAL: 1.0 - alpha, SPEC_LOCAL: 1.0 - alpha}
    raise ValueError(f"`adapter` must be 'generic', 'specialized' or 'mixed', got {mode!r}")


def activate(peft_model: PeftModel, plan: dict[str, float]) -> None:
    """Make exactly the adapters in ``plan`` active, each LoRA layer scaled by its factor (others reset to 1).

    PEFT's ``set_adapter`` also flips ``requires_grad``; callers re-apply their own trainability afterwards.
    """
    peft_model.base_model.set_adapter(list(plan))
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            for name in module.scaling:
                module.set_scale(name, plan.get(name, 1.0))


def split_adapter_name(param_name: str) -> tuple[str | None, str]:
    """``"...q_proj.lora_A.generic.weight"`` -> ``("generic", "...q_proj.lora_A.weight")``; no adapter -> None."""
    parts = param_name.split(".")
    hits = [p for p in parts if p in ADAPTER_NAMES]
    if not hits:
        return None, param_name
    return hits[0], ".".join(p for p in parts if p not in ADAPTER_NAMES)


def adapter_tensors(decoder: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """Parameters of one adapter keyed by their adapter-name-free PEFT name (identical spelling for G, S1, S2)."""
    out: dict[str, torch.Tensor] = {}
    for name, param in decoder.named_parameters():
        owner, stable = split_adapter_name(name)
        if owner == adapter:
            out[stable] = param
    return out


def base_decoder_tensors(lm: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters of the base causal LM (no adapter weights) keyed by their original HF names.

    ``lm`` is the underlying HF model (adapters injected or not); PEFT's ``.base_layer`` segment is dropped so the
    spelling is the checkpoint's own (``model.layers.0.self_attn.q_proj.weight``). Tied weights appear once.
    """
    out: dict[str, torch.Tensor] = {}
    for name, param in lm.named_parameters():
        owner, _ = split_adapter_name(name)
        if owner is None:
            out[".".join(p for p in name.split(".") if p != "base_layer")] = param
    return out


@torch.no_grad()
def copy_adapter(decoder: nn.Module, src: str, dst: str) -> None:
    """Copy every weight of adapter ``src`` into adapter ``dst`` (same PEFT config required)."""
    source, target = adapter_tensors(decoder, src), adapter_tensors(decoder, dst)
    if source.keys() != target.keys():
        raise ValueError(f"adapters {src!r} and {dst!r} have different layouts; cannot copy")
    for key, value in source.items():
        target[key].copy_(value)
