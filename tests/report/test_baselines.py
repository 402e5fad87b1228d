"""The baselines are configurations: each builds, trains only what it should, travels only that, and decodes."""

from __future__ import annotations

import pytest
import torch

from fedmrg.report.model import FedMRGModel
from fedmrg.report.shared_state import get_shared_state, shared_keys
from fedmrg.report.steps import train_step


def _model(make_config, method, mode, **fields) -> FedMRGModel:
    torch.manual_seed(0)
    return FedMRGModel(make_config(method, mode=mode, **fields))


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


@pytest.mark.parametrize(
    ("method", "adapter_marker"),
    [("fedadalora", "lora_"), ("fedpara", "hada_w"), ("promptmrg", "lora_")],
)
def test_added_baselines_train_a_step_and_average_like_fedavg(make_config, make_batch, method, adapter_marker):
    """AdaLoRA, LoHa (FedPara) and PromptMRG: one adapter only, a step changes it, and the FedAvg of two sites'
    shared states loads back (same keys and shapes at every site, so the elementwise mean is defined)."""
    model = _model(make_config, method, "llm")
    assert not model.has_specialized
    assert (model.diagnosis_head is not None) == (method == "promptmrg")
    keys = shared_keys(model)
    adapter_keys = [k for k in keys if k.startswith("adapter.")]
    assert adapter_keys and all(adapter_marker in k for k in adapter_keys)
    assert not [k for k in keys if "ranknum" in k]  # AdaLoRA's constant rank counter neither trains nor travels
    batch = make_batch(model, views=False)
    before = get_shared_state(model)
    logs = train_step(model, batch, torch.optim.AdamW(model.trainable_parameters(), lr=1e-2))
    assert ("g/cls" in logs) == (method == "promptmrg") and "g/con" not in logs and "g/kd" not in logs
    site_a = get_shared_state(model)
    assert any(not torch.equal(site_a[k], before[k]) for k in adapter_keys)
    other = _model(make_config, method, "llm")
    site_b = get_shared_state(other)
    assert site_a.keys() == site_b.keys() and all(site_a[k].shape == site_b[k].shape for k in site_a)
    mean = {k: (site_a[k] + site_b[k]) / 2 for k in site_a}
    from fedmrg.report.shared_state import load_shared_state

    load_shared_state(other, mean)
    assert all(torch.allclose(get_shared_state(other)[k], mean[k]) for k in adapter_keys)
    gen = other.generate(batch["images"][:2], max_new_tokens=4, num_beams=1)
    assert len(gen.reports) == 2 and (gen.states is not None) == (method == "promptmrg")


def test_adalora_ranknum_is_a_constant_buffer(make_config):
    from peft.tuners.adalora.layer import AdaLoraLayer

    model = _model(make_config, "fedadalora", "llm")
    layers = [m for m in model.decoder.modules() if isinstance(m, AdaLoraLayer)]
    assert layers and all(float(m.ranknum["generic"]) == 12.0 for m in layers)
    assert not [n for n, _ in model.named_parameters() if "ranknum" in n]


def test_fedprompt_reparametrisation_choices(make_config):
    from fedmrg.report.config import AdapterConfig

    mlp = _model(make_config, "fedprompt", "llm")
    plain = _model(make_config, "fedprompt", "llm", adapter=AdapterConfig(num_virtual_tokens=3, prompt_encoder="none"))
    n_mlp = sum(v.numel() for k, v in get_shared_state(mlp).items() if k.startswith("adapter."))
    n_plain = sum(v.numel() for k, v in get_shared_state(plain).items() if k.startswith("adapter."))
    d = mlp.lm.config.hidden_size
    assert n_plain == 3 * d and n_mlp == 3 * d + 3 * d * d + 3 * d  # embeddings + 3 linear layers with biases
    with pytest.raises(ValueError, match="prompt_encoder"):
        AdapterConfig(prompt_encoder="lstm")


@pytest.mark.slow
def test_comm_column_at_llama_2_7b_within_5_percent_of_the_paper():
    """`fedmrg inspect-model --config llama2-7b.yaml --meta --decoder-shape llama-2-7b --method all`, in-process."""
    from fedmrg.report.inspect_model import PAPER_COMM, comm_table

    rows = {r["method"]: r for r in comm_table(_llama2_7b_model_config(), "llama-2-7b", list(PAPER_COMM))}
    assert set(rows) == set(PAPER_COMM)
    for method, row in rows.items():
        assert abs(row["ratio_to_paper"] - 1) < 0.05, (method, row)
    assert rows["fedprompt"]["shared_parameters"] < rows["fedprefix"]["shared_parameters"]


def _llama2_7b_model_config():
    import dataclasses

    from fedmrg.config import load_yaml
    from fedmrg.report.cli import _config_path
    from fedmrg.report.run_config import resolve_builtin_paths, run_config_from_dict

    path = _config_path("llama2-7b.yaml")
    raw, _ = resolve_builtin_paths(load_yaml(path), progress=False)
    raw["decoder"] = {**raw["decoder"], "path": str(path.parent.resolve())}  # placeholder path, as the CLI does
    config = run_config_from_dict(raw, source=str(path), base_dir=path.parent)
    return dataclasses.replace(config.model, decoder=dataclasses.replace(config.model.decoder, path=str(path.parent)))


def test_inspect_model_method_refusals(capsys):
    from fedmrg.cli import main

    assert main(["inspect-model", "--method", "all"]) != 0
    assert "--meta" in capsys.readouterr().err
    from fedmrg.errors import ConfigError
    from fedmrg.report.inspect_model import with_method

    with pytest.raises(ConfigError, match="--method must be one of"):
        with_method(_llama2_7b_model_config(), "fedsomething")


@pytest.mark.parametrize("method", ["fedlora", "fedprompt", "fedprefix"])
@pytest.mark.parametrize("virtual_tokens", [3, 40])  # fewer and more virtual tokens than the decoder input has
def test_generation_reads_the_same_input_as_training(make_config, make_batch, method, virtual_tokens):
    """The first generated token is the teacher-forced argmax at BOS: generation sees the visual tokens and the
    virtual tokens exactly as training does (transformers' ``generate`` counts a prefix cache as part of its input)."""
    from dataclasses import replace

    cfg = make_config(method, mode="llm")
    model = _model(lambda *a, **k: replace(cfg, adapter=replace(cfg.adapter, num_virtual_tokens=virtual_tokens)),
                   method, "llm").eval()  # fmt: skip
    # open the zero-gated visual path wide, so that the next token depends on every visual token
    torch.nn.init.constant_(model.projector.norm.weight, 30.0)
    batch = make_batch(model, n=2, views=False)
    with torch.no_grad():
        out = model(batch)
    bos = out.labels.shape[1] - batch["input_ids"].shape[1] - 1
    logits = out.logits[:, bos].clone()
    logits[:, list(model.state_token_ids)] = -torch.inf  # generation suppresses the prompt-only tokens
    gen = model.generate(batch["images"], max_new_tokens=1, min_new_tokens=0, num_beams=1)
    assert gen.token_ids[:, 0].tolist() == logits.argmax(-1).tolist()
