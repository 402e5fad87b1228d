"""The shared-key contract: what travels, in which spelling, and what never leaves the site."""

from __future__ import annotations

import pytest
import torch

from fedmrg.report.adapters import ADAPTER_NAMES, SPEC_LOCAL, adapter_tensors
from fedmrg.report.model import FedMRGModel
from fedmrg.report.shared_state import (
    get_private_state,
    get_shared_state,
    load_private_state,
    load_shared_state,
    shared_keys,
    state_nbytes,
)


def _model(make_config, seed: int = 0, **kw) -> FedMRGModel:
    torch.manual_seed(seed)
    return FedMRGModel(make_config(**kw))


def test_llm_mode_shares_encoder_projector_head_tokens_and_g_only(make_config, randomize_adapters):
    model = _model(make_config, mode="llm")
    randomize_adapters(model)
    keys = shared_keys(model)
    prefixes = {k.split(".", 1)[0] for k in keys}
    assert prefixes == {"encoder", "projector", "diagnosis_head", "state_tokens", "adapter"}
    assert not [k for k in keys if set(k.split(".")) & set(ADAPTER_NAMES)]  # adapter-name-free spelling
    assert "adapter.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "state_tokens.weight" in keys  # the four state rows
    assert not [k for k in keys if "num_batches_tracked" in k]
    assert [k for k in keys if k.endswith("running_mean")]  # BatchNorm statistics travel with the encoder
    # nothing of S2: no key for it, no tensor equal to one of its weights, and changing S2 changes nothing shared
    state = get_shared_state(model)
    s2 = adapter_tensors(model.decoder, SPEC_LOCAL)
    assert s2
    for value in s2.values():
        assert not any(v.shape == value.shape and torch.equal(v, value.float()) for v in state.values())
    with torch.no_grad():
        for value in s2.values():
            value.add_(1.0)
    after = get_shared_state(model)
    assert all(torch.equal(after[k], state[k]) for k in state)
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values())
    assert state_nbytes(state) == 4 * sum(v.numel() for v in state.values())


def test_clm_mode_adds_the_decoder_under_checkpoint_names(make_config):
    model = _model(make_config, mode="clm")
    keys = shared_keys(model)
    assert "decoder.model.layers.0.self_attn.q_proj.weight" in keys  # PEFT's `.base_layer` dropped
    assert "decoder.model.embed_tokens.weight" in keys
    assert not [k for k in keys if "lora_" in k and k.startswith("decoder.")]


def test_round_trip_between_sites_and_strict_loading(make_config, randomize_adapters):
    site_a, site_b = _model(make_config, seed=0), _model(make_config, seed=1)
    randomize_adapters(site_a, seed=3)
    randomize_adapters(site_b, seed=4)
    s2_b = get_private_state(site_b)
    load_shared_state(site_b, get_shared_state(site_a))
    assert all(torch.equal(v, get_shared_state(site_a)[k]) for k, v in get_shared_state(site_b).items())
    assert all(torch.equal(v, s2_b[k]) for k, v in get_private_state(site_b).items())  # S2 untouched

    state = get_shared_state(site_a)
    with pytest.raises(ValueError, match=r"missing keys \['adapter\."):
        load_shared_state(site_b, {k: v for k, v in state.items() if not k.startswith("adapter.")})
    with pytest.raises(ValueError, match=r"unknown keys \['bogus'\]"):
        load_shared_state(site_b, state | {"bogus": torch.zeros(1)})
    key = "projector.linear.bias"
    with pytest.raises(ValueError, match=rf"shape mismatch.*`{key}`"):
        load_shared_state(site_b, state | {key: torch.zeros(3)})


def test_private_state_is_s2_only_and_restores(make_config, randomize_adapters):
    model = _model(make_config)
    randomize_adapters(model)
    private = get_private_state(model)
    assert private and all(k.startswith("specialized.") for k in private)
    assert set(private) == {f"specialized.{k}" for k in adapter_tensors(model.decoder, SPEC_LOCAL)}
    assert not set(private) & set(shared_keys(model))
    fresh = _model(make_config, seed=5)
    load_private_state(fresh, private)
    assert all(torch.equal(v, private[k]) for k, v in get_private_state(fresh).items())
    with pytest.raises(ValueError, match="private state does not match"):
        load_private_state(fresh, {})


def test_frozen_encoder_stays_out_of_the_shared_state(make_config):
    from fedmrg.report.config import EncoderConfig

    model = _model(make_config, encoder=EncoderConfig(preset="resnet-tiny", image_size=64, trainable=False))
    assert not [k for k in shared_keys(model) if k.startswith("encoder.")]
    assert not any(p.requires_grad for p in model.encoder.parameters())


def test_a_frozen_encoder_keeps_its_batchnorm_statistics_in_training(make_config):
    from fedmrg.report.config import EncoderConfig

    images = torch.randn(4, 3, 64, 64) * 3 + 1
    for trainable in (False, True):
        model = _model(make_config, encoder=EncoderConfig(preset="resnet-tiny", image_size=64, trainable=trainable))
        bn = {k: v.clone() for k, v in model.encoder.state_dict().items() if "running_" in k}
        model.train()
        assert model.encoder.training is trainable and model.projector.training
        with torch.no_grad():
            model.encoder(images)
        moved = any(not torch.equal(v, model.encoder.state_dict()[k]) for k, v in bn.items())
        assert moved is trainable, f"trainable={trainable}: running statistics moved={moved}"
    model.eval()
    assert not model.encoder.training
