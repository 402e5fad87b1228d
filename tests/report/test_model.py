"""The real-model path: a tiny random Llama saved with save_pretrained, loaded by path, trained and decoded."""

from __future__ import annotations

import pytest
import torch

from fedmrg.errors import ConfigError, DataError
from fedmrg.report.config import DecoderConfig, FedMRGConfig
from fedmrg.report.model import FedMRGModel
from fedmrg.report.steps import optimizer_groups, train_step


def _build(cfg) -> FedMRGModel:
    torch.manual_seed(0)
    return FedMRGModel(cfg)


def test_tiny_llama_loads_by_path_and_a_step_lowers_the_loss(make_config, make_batch):
    model = _build(make_config(mode="llm"))
    assert model.decoder_mode == "llm" and model.lm.config.hidden_size == 32
    batch = make_batch(model)
    adapter_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".generic." in n}
    base_before = {n: p.detach().clone() for n, p in model.lm.named_parameters() if "lora_" not in n}
    model.eval()
    with torch.no_grad():
        loss_before = model(batch).lm_loss.item()
    groups = optimizer_groups(model, weight_decay=0.05)
    assert sum(len(g["params"]) for g in groups) == len(model.trainable_parameters())
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    logs = train_step(model, batch, optimizer)
    assert {"g/lm", "g/cls", "g/con", "g/kd_cos", "g/kd_kl", "s/lm", "s/kd_cos", "s/kd_kl"} <= set(logs)
    model.eval()
    with torch.no_grad():
        loss_after = model(batch).lm_loss.item()
    assert loss_after < loss_before
    changed = [n for n, p in model.named_parameters() if n in adapter_before and not torch.equal(p, adapter_before[n])]
    assert changed, "no generic adapter weight changed"
    # LLM mode: the base decoder is frozen
    for name, p in model.lm.named_parameters():
        if name in base_before:
            assert torch.equal(p, base_before[name]), name


def test_auto_mode_picks_clm_for_a_small_decoder(make_config):
    model = _build(make_config(mode="auto"))
    assert model.decoder_mode == "clm" and model.decoder_trainable
    roles = {model.role_of(n) for n, p in model.named_parameters() if p.requires_grad}
    assert roles == {"encoder", "projector", "diagnosis_head", "state_tokens", "generic", "decoder"}


def test_outputs_and_loss_parts(make_config, make_batch):
    model = _build(make_config())
    batch = make_batch(model, n=3)
    out = model(batch, adapter="mixed")
    assert out.encoded.tokens.shape == (3, 4, 32)  # 64 px / stride 32 = 2 x 2 patches, projected to d_model 32
    length = 4 + model.diagnosis_prompt.length + 1 + batch["input_ids"].shape[1]  # visual + prompt + BOS + report
    assert out.logits.shape == (3, length, len(model.tokenizer)) and out.labels.shape == (3, length)
    assert out.hidden.shape == (3, length, 32)
    assert out.lm_loss.ndim == 0 and out.cls_loss.ndim == 0 and out.con_loss.ndim == 0
    no_views = dict(batch)
    del no_views["views"]
    assert model(no_views).con_loss is None  # contrastive needs a second view
    del no_views["states"]
    with pytest.raises(DataError, match="states"):
        model(no_views)


def test_prompt_states_are_ground_truth_in_training_and_predicted_at_inference(make_config, make_batch):
    model = _build(make_config())
    batch = make_batch(model, n=2)
    seen: list[torch.Tensor] = []
    original = model._embed
    model._embed = lambda ids: (seen.append(ids.clone()), original(ids))[1]
    # make the head predict a known pattern that differs from the ground truth: state = observation index % 4
    pattern = torch.arange(14) % 4
    with torch.no_grad():
        model.diagnosis_head.linear.weight.zero_()
        bias = torch.full((14, 4), -5.0)
        bias[torch.arange(14), pattern] = 5.0
        model.diagnosis_head.linear.bias.copy_(bias.flatten())
    token_ids = torch.tensor(model.state_token_ids)
    slots = model.diagnosis_prompt.slots  # positions of the 14 state tokens in the prompt

    model(batch)
    assert torch.equal(seen[-1][:, slots], token_ids[batch["states"]])  # training: ground truth
    assert not torch.equal(batch["states"][0], pattern)

    seen.clear()
    gen = model.generate(batch["images"], max_new_tokens=3, num_beams=1)
    assert torch.equal(gen.states, pattern.expand(2, 14))  # inference: the head's argmax
    assert torch.equal(seen[0][:, slots], token_ids[pattern].expand(2, 14))
    assert gen.state_probs.shape == (2, 14, 4)
    assert torch.allclose(gen.state_probs.sum(-1), torch.ones(2, 14))


def test_generate_returns_text_and_never_emits_prompt_tokens(make_config, make_batch):
    model = _build(make_config())
    batch = make_batch(model, n=2)
    for generic_only in (False, True):
        gen = model.generate(batch["images"], max_new_tokens=6, num_beams=3, generic_only=generic_only)
        assert len(gen.reports) == 2 and all(isinstance(r, str) for r in gen.reports)
        assert gen.token_ids.shape[0] == 2 and gen.token_ids.shape[1] <= 6
        assert not set(gen.token_ids.flatten().tolist()) & set(model.state_token_ids)
    assert model.training  # generate restores the mode it found


def test_missing_or_wrong_decoder_directory(tmp_path, make_config):
    with pytest.raises(ConfigError, match=r"decoder\.path.*not found.*nowhere"):
        FedMRGModel(FedMRGConfig(decoder=DecoderConfig(path=str(tmp_path / "nowhere"))))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        FedMRGModel(FedMRGConfig(decoder=DecoderConfig(path=str(tmp_path / "empty"))))


def test_one_yaml_file_builds_the_model(tmp_path, tiny_llama_dir):
    from fedmrg.config import load_config

    path = tmp_path / "fedmrg.yaml"
    path.write_text(
        f"method: fedmrg\ndecoder: {{path: {tiny_llama_dir}, mode: llm}}\n"
        "encoder: {preset: resnet-tiny, image_size: 64}\nadapter: {r: 2, alpha: 4}\nalpha_mix: 0.25\n"
    )
    model = _build(load_config(path, FedMRGConfig))
    assert model.decoder_mode == "llm" and model.config.alpha_mix == 0.25
    layer = model.lm.model.layers[1].self_attn.v_proj
    assert layer.r["generic"] == 2 and layer.scaling["generic"] == 2.0


def test_visual_tokens_after_the_prompt_leave_the_prompt_unread_by_the_image(make_config, make_batch):
    from dataclasses import replace

    cfg = make_config(mode="llm")
    model = _build(replace(cfg, decoder=replace(cfg.decoder, visual_position="after_prompt"))).eval()
    torch.nn.init.ones_(model.projector.norm.weight)  # open the zero-gated visual path, as training does
    batch = make_batch(model, n=2, views=False)
    other = dict(batch, images=torch.rand_like(batch["images"]))
    with torch.no_grad():
        out, out_other = model(batch), model(other)
    p = model.diagnosis_prompt.template.shape[-1]  # the diagnosis prompt's length P
    prompt_len = out.labels.shape[1] - batch["input_ids"].shape[1]
    assert prompt_len > p
    # causal decoder, prompt first: the prompt's hidden states ignore the image; BOS onwards read it
    assert torch.equal(out.hidden[:, :p], out_other.hidden[:, :p])
    assert not torch.equal(out.hidden[:, prompt_len - 1], out_other.hidden[:, prompt_len - 1])
    # generation uses the same layout as training: its first token is the teacher-forced argmax at BOS
    gen = model.generate(batch["images"], states=batch["states"], max_new_tokens=1, num_beams=1)
    with torch.no_grad():
        mixed = model(batch, adapter="mixed")
    assert gen.token_ids[:, 0].tolist() == mixed.logits[:, prompt_len - 1].argmax(-1).tolist()


def test_token_weights_reach_the_lm_loss_at_the_report_positions(make_config, make_batch):
    model = _build(make_config())
    batch = make_batch(model, n=3, views=False)
    plain = model(batch)
    assert plain.label_weights is None
    ones = model(dict(batch, token_weights=batch["attention_mask"].float()))
    assert ones.lm_loss.item() == pytest.approx(plain.lm_loss.item(), rel=1e-5)
    weights = batch["attention_mask"].float()
    weights[:, 0] = 50.0  # the first report token of every study
    heavy = model(dict(batch, token_weights=weights))
    assert heavy.label_weights.shape == heavy.labels.shape
    first = heavy.labels.ne(-100).float().argmax(1)  # the first scored position of each row
    assert heavy.label_weights[torch.arange(3), first].eq(50.0).all()
    assert heavy.lm_loss.item() != pytest.approx(plain.lm_loss.item(), rel=1e-3)
