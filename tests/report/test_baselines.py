"""The baselines are configurations: each builds, trains only what it should, travels only that, and decodes."""

from __future__ import annotations

import pytest
import torch

from fedmrg.report.model import FedMRGModel
from fedmrg.report.shared_state import get_shared_state, shared_keys
from fedmrg.report.steps import train_step


def _model(make_config, method, mode) -> FedMRGModel:
    torch.manual_seed(0)
    return FedMRGModel(make_config(method, mode=mode))


@pytest.mark.parametrize(
    ("method", "adapter_marker"),
    [
        ("fedlora", "lora_"),
        ("fedprompt", "prompt_encoder"),
        ("fedprefix", "prompt_encoder"),
        ("fedvera", "vera_lambda"),
    ],
)
def test_peft_baselines_train_and_share_only_their_adapter(make_config, make_batch, method, adapter_marker):
    model = _model(make_config, method, "llm")
    assert model.diagnosis_head is None and model.state_tokens is None and not model.has_specialized
    keys = shared_keys(model)
    adapter_keys = [k for k in keys if k.startswith("adapter.")]
    assert adapter_keys and all(adapter_marker in k for k in adapter_keys)
    assert {k.split(".", 1)[0] for k in keys} == {"encoder", "projector", "adapter"}
    batch = make_batch(model)
    before = get_shared_state(model)
    base_before = {n: p.detach().clone() for n, p in model.lm.named_parameters() if "lora" not in n and "vera" not in n}
    logs = train_step(model, batch, torch.optim.AdamW(model.trainable_parameters(), lr=1e-2))
    assert set(logs) == {"g/total", "g/lm"}  # no cls / con / kd for baselines
    after = get_shared_state(model)
    assert any(not torch.equal(after[k], before[k]) for k in adapter_keys)
    assert all(torch.equal(p, base_before[n]) for n, p in model.lm.named_parameters() if n in base_before)
    gen = model.generate(batch["images"][:2], max_new_tokens=4, num_beams=2)
    assert len(gen.reports) == 2 and gen.states is None


def test_full_method_trains_and_shares_the_whole_decoder(make_config, make_batch):
    model = _model(make_config, "full", "auto")
    assert model.decoder_mode == "clm"
    keys = shared_keys(model)
    assert not [k for k in keys if k.startswith("adapter.")]
    n_decoder = sum(1 for k in keys if k.startswith("decoder."))
    assert n_decoder == len(dict(model.lm.named_parameters()))
    before = get_shared_state(model)
    train_step(model, make_batch(model), torch.optim.AdamW(model.trainable_parameters(), lr=1e-2))
    after = get_shared_state(model)
    assert not torch.equal(
        after["decoder.model.layers.0.mlp.up_proj.weight"], before["decoder.model.layers.0.mlp.up_proj.weight"]
    )


@pytest.mark.parametrize("method", ["fedprompt", "fedprefix"])
def test_own_virtual_token_path_equals_peft_forward(make_config, make_batch, method):
    """The model adds prompt / prefix virtual tokens itself (so generation works with inputs_embeds); same logits."""
    model = _model(make_config, method, "llm").eval()
    batch = make_batch(model, n=2)
    with torch.no_grad():
        ours = model(batch)
        embeds = torch.randn(2, 7, 32)
        mask = torch.ones(2, 7, dtype=torch.long)
        peft_logits = model.decoder(inputs_embeds=embeds, attention_mask=mask).logits[:, -7:]
        from fedmrg.report.prompt_layout import DecoderInputs

        inputs = DecoderInputs(embeds, mask, torch.full((2, 7), -100), 0)
        mine, _ = model._run_decoder(inputs)
    assert torch.allclose(mine, peft_logits, atol=1e-5)
    assert torch.isfinite(ours.lm_loss)
