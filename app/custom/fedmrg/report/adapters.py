"""PEFT adapters on the decoder: FedMRG's dual LoRA adapters and the baselines' single adapter (paper 3.3).

FedMRG (``method: fedmrg``) puts three LoRA adapters on the same layers with PEFT's multi-adapter support:

- ``generic`` (G): trained in the G step, averaged by the server.
- ``spec_global`` (S1): a frozen copy of G made at the start of every round (:func:`copy_adapter`).
- ``spec_local`` (S2): trained in the S step, never leaves the site.

S = S1 + S2 (both active, each at LoRA scale). Mixed inference (paper eq. 6) activates all three and sets PEFT's
per-adapter LoRA scaling: ``h = W0 x + alpha * G(x) + (1 - alpha) * (S1(x) + S2(x))``.

Baselines are one PEFT adapter named ``generic``: LoRA (``fedlora``, and ``promptmrg`` which adds the diagnosis head
and prompt tokens), prompt tuning (``fedprompt``), prefix tuning (``fedprefix``), VeRA (``fedvera``), AdaLoRA
(``fedadalora``) or LoHa (``fedpara``); ``full`` has none. The paper's communicated parameters ("Comm.") per method
at Llama-2-7B scale are reproduced by ``fedmrg inspect-model --config llama2-7b.yaml --meta --decoder-shape
llama-2-7b --method all``:

- ``fedprompt`` 102M: 200 virtual tokens reparametrised by PEFT's P-tuning MLP (``PromptEncoderConfig``, hidden
  width d_model = 4096: 3 x 4096^2 + 200 x 4096 = 51.2M on top of the 50.9M encoder + projector). Plain prompt
  tuning (``adapter.prompt_encoder: none``, ``PromptTuningConfig``) would need ~12,500 tokens to reach 102M.
- ``fedprefix`` 103M: 200 virtual tokens of raw prefix (``PrefixTuningConfig``, ``prefix_projection`` off):
  200 x 2 x 32 x 4096 = 52.4M.
- ``fedadalora`` 57M: AdaLoRA's P / Lambda / Q at ``init_r`` 12 on q/v (6.3M). AdaLoRA's budget allocation
  (``update_and_allocate``) is not run: its importance scores and rank masks are per site, so averaging pruned
  singular values has no FedAvg meaning; every site keeps the full ``init_r`` and FedAvg averages P, Lambda and Q
  elementwise (same shapes everywhere). Its constant ``ranknum`` is turned into a buffer so it neither trains nor
  travels.
- ``fedpara`` 76M: LoHa r=24 on q/v, four factors per layer (25.2M).
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from peft import (
    AdaLoraConfig,
    LoHaConfig,
    LoraConfig,
    PeftConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptEncoderReparameterizationType,
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


def peft_config_for(config: FedMRGConfig, hidden_size: int | None = None) -> PeftConfig | None:
    """The PEFT config of ``config.method`` (None for ``full``).

    ``hidden_size`` (the decoder's d_model) sizes the reparametrisation MLPs of ``fedprompt`` (``prompt_encoder:
    mlp``) and ``fedprefix`` (``prefix_projection``); required for those.
    """
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
    if kind == "prompt" and a.prompt_encoder == "none":
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=a.num_virtual_tokens)
    if kind == "prompt":
        return PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=a.num_virtual_tokens,
            encoder_reparameterization_type=PromptEncoderReparameterizationType.MLP,
            encoder_hidden_size=_need_hidden(hidden_size, "adapter.prompt_encoder: mlp"),
        )
    if kind == "prefix":
        extra = {}
        if a.prefix_projection:
            extra["encoder_hidden_size"] = _need_hidden(hidden_size, "adapter.prefix_projection")
        return PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=a.num_virtual_tokens,
            prefix_projection=a.prefix_projection,
            **extra,
        )
    if kind == "adalora":
        # total_step is required by PEFT's schedule check; the allocator that reads it is never run (module docstring)
        return AdaLoraConfig(
            init_r=a.adalora_init_r,
            target_r=a.adalora_init_r,
            lora_alpha=a.alpha,
            lora_dropout=a.dropout,
            target_modules=list(a.target_modules),
            total_step=1,
        )
    if kind == "loha":
        return LoHaConfig(r=a.loha_r, alpha=a.loha_r, target_modules=list(a.target_modules))
    return None


def _need_hidden(hidden_size: int | None, key: str) -> int:
    if hidden_size is None:
        raise ValueError(f"`{key}` needs the decoder's hidden size to size its MLP")
    return hidden_size


class _ConstantDict(nn.Module):
    """Non-persistent buffers read like PEFT's ``ParameterDict`` (``d[name]``); holds AdaLoRA's constant ``ranknum``."""

    def __init__(self, values: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for name, value in values.items():
            self.register_buffer(name, value.detach().clone(), persistent=False)

    def __getitem__(self, name: str) -> torch.Tensor:
        return getattr(self, name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._buffers

    def keys(self) -> list[str]:
        return list(self._buffers)


def _freeze_adalora_ranknum(model: nn.Module) -> None:
    """Replace every AdaLoRA layer's ``ranknum`` parameters by buffers (they are constants without the allocator)."""
    from peft.tuners.adalora.layer import AdaLoraLayer

    for module in model.modules():
        if isinstance(module, AdaLoraLayer) and isinstance(module.ranknum, nn.ParameterDict):
            values = {name: p.data for name, p in module.ranknum.items()}
            del module.ranknum
            module.ranknum = _ConstantDict(values)


def attach_adapters(model: PreTrainedModel, config: FedMRGConfig) -> nn.Module:
    """Wrap ``model`` with the method's PEFT adapter(s); returns a ``PeftModel`` (or ``model`` itself for ``full``)."""
    hidden = getattr(model.config, "hidden_size", None)
    peft_config = peft_config_for(config, hidden_size=hidden)
    if peft_config is None:
        return model
    try:
        with warnings.catch_warnings():
            # AdaLoRA: PEFT notes that without the allocator the ranks stay at init_r, which is the choice here
            warnings.filterwarnings("ignore", message=".*total_step.*")
            peft_model = get_peft_model(model, peft_config, adapter_name=GENERIC)
    except ValueError as e:  # e.g. target modules not found in the base model
        raise ConfigError(f"`adapter`: cannot attach {config.peft_type} adapters to the decoder: {e}") from e
    if config.peft_type == "adalora":
        _freeze_adalora_ranknum(peft_model)
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
