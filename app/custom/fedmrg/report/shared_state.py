"""The shared-key contract, declared once: what a site sends to the server and what stays private (paper 3.4).

Shared (FedAvg'ed), in an adapter-name-free spelling that is the same at every site and on the server:

- ``encoder.*``: encoder parameters and float buffers (BatchNorm running statistics; ``num_batches_tracked`` is an
  integer counter and stays local), when ``encoder.trainable``;
- ``projector.*``, ``diagnosis_head.*`` and ``state_tokens.*`` (the four prompt-token state rows
  and the 14 observation rows);
- ``adapter.*``: the generic adapter G under its PEFT name without the adapter segment
  (``adapter.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``), or the single adapter of a baseline;
- ``decoder.*``: every base decoder weight under its checkpoint name, only in CLM mode (``method: full`` included).

Private (never sent): ``specialized.*``, the local specialized adapter S2. S1 is neither: it is a copy of G made by
:func:`start_round` at the beginning of each round.

Tensors leave as float32 CPU copies (the FL layer sends numpy float32) and are cast back to each parameter's dtype
on load. Loading is strict: missing or unknown keys and shape mismatches raise, naming the keys.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedmrg.report.adapters import GENERIC, SPEC_GLOBAL, SPEC_LOCAL, adapter_tensors, base_decoder_tensors, copy_adapter
from fedmrg.report.model import FedMRGModel


def _module_tensors(prefix: str, module: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    if module is None:
        return {}
    out = {f"{prefix}.{n}": p for n, p in module.named_parameters()}
    persistent = module.state_dict(keep_vars=True)
    for name, buf in module.named_buffers():
        if name in persistent and buf.is_floating_point():
            out[f"{prefix}.{name}"] = buf
    return out


def _shared_tensors(model: FedMRGModel) -> dict[str, torch.Tensor]:
    """Shared key -> the live parameter / buffer it reads from and writes to."""
    out: dict[str, torch.Tensor] = {}
    if model.config.encoder.trainable:
        out |= _module_tensors("encoder", model.encoder)
    out |= _module_tensors("projector", model.projector)
    out |= _module_tensors("diagnosis_head", model.diagnosis_head)
    out |= _module_tensors("state_tokens", model.state_tokens)
    out |= {f"adapter.{k}": v for k, v in adapter_tensors(model.decoder, GENERIC).items()}
    if model.decoder_trainable:
        out |= {f"decoder.{k}": v for k, v in base_decoder_tensors(model.lm).items()}
    return out


def _private_tensors(model: FedMRGModel) -> dict[str, torch.Tensor]:
    if not model.has_specialized:
        return {}
    return {f"specialized.{k}": v for k, v in adapter_tensors(model.decoder, SPEC_LOCAL).items()}


def shared_keys(model: FedMRGModel) -> list[str]:
    """Sorted names of everything a site uploads and the server averages."""
    return sorted(_shared_tensors(model))


def _export(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: tensors[k].detach().to("cpu", torch.float32).clone() for k in sorted(tensors)}


@torch.no_grad()
def _import(targets: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], what: str) -> None:
    missing = sorted(set(targets) - set(state))
    unknown = sorted(set(state) - set(targets))
    if missing or unknown:
        raise ValueError(
            f"{what} does not match this model: missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
            f"unknown keys {unknown[:10]}{' ...' if len(unknown) > 10 else ''} "
            "(are server and site using the same model configuration?)"
        )
    bad = [k for k in targets if tuple(torch.as_tensor(state[k]).shape) != tuple(targets[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(
            f"{what}: shape mismatch for {len(bad)} key(s), e.g. `{k}`: got {tuple(torch.as_tensor(state[k]).shape)}, "
            f"expected {tuple(targets[k].shape)}"
        )
    for key, target in targets.items():
        target.copy_(torch.as_tensor(state[key]).to(device=target.device, dtype=target.dtype))


def get_shared_state(model: FedMRGModel) -> dict[str, torch.Tensor]:
    """Float32 CPU copies of the shared tensors, keyed by :func:`shared_keys`."""
    return _export(_shared_tensors(model))


def load_shared_state(model: FedMRGModel, state: Mapping[str, torch.Tensor]) -> None:
    """Write a (global) shared state into the model in place; strict on keys and shapes."""
    _import(_shared_tensors(model), state, "shared state")


def get_private_state(model: FedMRGModel) -> dict[str, torch.Tensor]:
    """Float32 CPU copies of the site's private specialized adapter S2 (empty without S)."""
    return _export(_private_tensors(model))


def load_private_state(model: FedMRGModel, state: Mapping[str, torch.Tensor]) -> None:
    """Restore S2 from :func:`get_private_state` (e.g. from the site's workspace); strict on keys and shapes."""
    _import(_private_tensors(model), state, "private state")


def start_round(model: FedMRGModel) -> None:
    """Begin a local round (call after :func:`load_shared_state`): copy G into the frozen S1. No-op without S."""
    if model.has_specialized:
        copy_adapter(model.decoder, GENERIC, SPEC_GLOBAL)


def state_nbytes(state: Mapping[str, torch.Tensor]) -> int:
    """Payload size of a state in bytes (as float32), for communication accounting."""
    return sum(t.numel() * 4 for t in state.values())
