"""Dual-adapter mechanics: S1 = G at round start, alpha-mix, gradient isolation of the G and S steps."""

from __future__ import annotations

import pytest
import torch

from fedmrg.report.adapters import GENERIC, SPEC_GLOBAL, SPEC_LOCAL, adapter_plan, adapter_tensors
from fedmrg.report.model import FedMRGModel
from fedmrg.report.shared_state import get_shared_state, load_shared_state, start_round
from fedmrg.report.steps import generic_step_losses, specialized_step_losses


def _model(make_config, **kw) -> FedMRGModel:
    torch.manual_seed(0)
    return FedMRGModel(make_config(**kw))


def _grads(model, role):
    return [p.grad for n, p in model.named_parameters() if model.role_of(n) == role]


def test_s1_equals_g_at_the_start_of_a_round(make_config, randomize_adapters):
    model = _model(make_config)
    g, s1 = adapter_tensors(model.decoder, GENERIC), adapter_tensors(model.decoder, SPEC_GLOBAL)
    assert g.keys() == s1.keys() and len(g) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    assert all(torch.equal(g[k], s1[k]) for k in g)  # at construction
    randomize_adapters(model)
    assert not all(torch.equal(g[k], s1[k]) for k in g)
    # a new global G arrives: load it, start the round -> S1 is an exact copy, S2 untouched
    s2_before = {k: v.clone() for k, v in adapter_tensors(model.decoder, SPEC_LOCAL).items()}
    state = get_shared_state(model)
    state = {k: (v + 1.0 if k.startswith("adapter.") else v) for k, v in state.items()}
    load_shared_state(model, state)
    start_round(model)
    assert all(torch.equal(g[k], s1[k]) for k in g)
    assert all(torch.equal(g[k], state[f"adapter.{k}"]) for k in g)
    assert all(torch.equal(v, s2_before[k]) for k, v in adapter_tensors(model.decoder, SPEC_LOCAL).items())


def test_alpha_mix_equals_manual_computation_on_one_layer(make_config, randomize_adapters):
    model = _model(make_config, alpha_mix=0.3)
    randomize_adapters(model)
    layer = model.lm.model.layers[0].self_attn.q_proj
    x = torch.randn(2, 5, 32)
    scale = 8 / 4  # lora_alpha / r

    def delta(name):
        return scale * (x @ layer.lora_A[name].weight.T @ layer.lora_B[name].weight.T)

    base = layer.base_layer(x)
    expected = {
        "generic": base + delta(GENERIC),
        "specialized": base + delta(SPEC_GLOBAL) + delta(SPEC_LOCAL),
        "mixed": base + 0.3 * delta(GENERIC) + 0.7 * (delta(SPEC_GLOBAL) + delta(SPEC_LOCAL)),
    }
    with torch.no_grad():
        for mode, want in expected.items():
            with model.use_adapters(mode):
                assert torch.allclose(layer(x), want, atol=1e-5), mode
        # scales and the active set are restored afterwards: plain G at scale 1
        assert torch.allclose(layer(x), expected["generic"], atol=1e-5)
    assert adapter_plan("mixed", alpha=0.3) == {GENERIC: 0.3, SPEC_GLOBAL: 0.7, SPEC_LOCAL: 0.7}


def test_nested_adapter_contexts_restore_the_enclosing_mode(make_config, randomize_adapters):
    model = _model(make_config, alpha_mix=0.3)
    randomize_adapters(model)
    layer = model.lm.model.layers[0].self_attn.q_proj
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        outputs = {}
        for mode in ("generic", "specialized", "mixed"):
            with model.use_adapters(mode):
                outputs[mode] = layer(x)
        with model.use_adapters("specialized"):
            with model.use_adapters("generic"):
                assert torch.allclose(layer(x), outputs["generic"], atol=1e-6)
            assert torch.allclose(layer(x), outputs["specialized"], atol=1e-6)  # back to S, not to the resting G
            with model.use_adapters("specialized"):  # same mode: no switch, still S afterwards
                assert torch.allclose(layer(x), outputs["specialized"], atol=1e-6)
            assert torch.allclose(layer(x), outputs["specialized"], atol=1e-6)
        assert torch.allclose(layer(x), outputs["generic"], atol=1e-6)
    model.set_phase("specialized")  # trainability follows the phase after switches, not PEFT's set_adapter
    with model.use_adapters("generic"):
        pass
    trainable = {model.role_of(n) for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"spec_local"}


def test_generic_only_inference_differs_from_the_mix_once_s_differs(make_config, make_batch, randomize_adapters):
    model = _model(make_config).eval()
    randomize_adapters(model, scale=0.3)
    batch = make_batch(model, n=2)
    with torch.no_grad():
        mixed, generic = model(batch, adapter="mixed").logits, model(batch, adapter="generic").logits
    assert not torch.allclose(mixed, generic, atol=1e-4)


def test_g_step_gradients_reach_only_g_and_shared_parts(make_config, make_batch, randomize_adapters):
    model = _model(make_config, mode="llm")
    randomize_adapters(model)  # S != G, so the distillation terms are non-zero
    batch = make_batch(model)
    losses = generic_step_losses(model, batch)
    assert losses.kd_cos.item() > 1e-4 and losses.kd_kl.item() > 1e-6
    (losses.kd_cos + losses.kd_kl).backward()  # the distillation term alone
    assert all(g is None for g in _grads(model, "spec_local") + _grads(model, "spec_global"))
    assert all(g is None for g in _grads(model, "decoder"))  # frozen base in LLM mode
    assert sum(g.abs().sum() for g in _grads(model, "generic")) > 0
    model.zero_grad(set_to_none=True)
    generic_step_losses(model, batch).total.backward()  # the whole G-step loss
    assert all(g is None for g in _grads(model, "spec_local") + _grads(model, "spec_global"))
    for role in ("generic", "encoder", "projector", "diagnosis_head", "state_tokens"):
        grads = _grads(model, role)
        assert grads and all(g is not None for g in grads), role


def test_s_step_gradients_reach_only_s2(make_config, make_batch, randomize_adapters):
    model = _model(make_config, mode="clm")
    randomize_adapters(model)
    batch = make_batch(model)
    losses = specialized_step_losses(model, batch)
    assert losses.cls is None and losses.con is None
    (losses.kd_cos + losses.kd_kl).backward()
    trained = {model.role_of(n) for n, p in model.named_parameters() if p.grad is not None}
    assert trained == {"spec_local"}
    assert sum(g.abs().sum() for g in _grads(model, "spec_local")) > 0
    model.zero_grad(set_to_none=True)
    specialized_step_losses(model, batch).total.backward()
    assert {model.role_of(n) for n, p in model.named_parameters() if p.grad is not None} == {"spec_local"}


def test_ablations_drop_kd_terms_and_the_s_adapter(make_config, make_batch):
    from fedmrg.report.config import AblationConfig

    model = _model(make_config, ablations=AblationConfig(no_kd_s2g=True))
    batch = make_batch(model, n=2)
    assert generic_step_losses(model, batch).kd_cos is None
    assert specialized_step_losses(model, batch).kd_cos is not None
    single = _model(make_config, ablations=AblationConfig(no_specialized=True, no_prompts=True))
    assert not adapter_tensors(single.decoder, SPEC_LOCAL) and single.diagnosis_head is None
    with pytest.raises(ValueError, match="no specialized adapter"):
        single.set_phase("specialized")
    out = generic_step_losses(single, make_batch(single, n=2))
    assert out.cls is None and out.kd_cos is None and out.con is not None
