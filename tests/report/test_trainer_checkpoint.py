"""Run folders (safetensors + PEFT exports), parameter counting on the meta device, evaluation rows."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from fedmrg.errors import FedMRGError
from fedmrg.report.checkpoint import list_private_sites, load_run, save_checkpoint
from fedmrg.report.data_loading import ReportDataset
from fedmrg.report.evaluation import describe_states, generate_for_dataset, headline, score_rows
from fedmrg.report.inspect_model import build_meta_model, count_parameters
from fedmrg.report.model import FedMRGModel
from fedmrg.report.run_config import RunConfig, TrainingConfig
from fedmrg.report.shared_state import get_private_state, get_shared_state, shared_keys, start_round
from fedmrg.report.trainer import LocalTrainer

from .conftest import IMAGE_SIZE
from .test_trainer import write_records


@pytest.fixture
def trained(make_config, tmp_path):
    records = write_records(tmp_path / "images")
    torch.manual_seed(0)
    config = RunConfig(model=make_config(mode="llm"), training=TrainingConfig(batch_size=4, device="cpu"))
    model = FedMRGModel(config.model)
    dataset = ReportDataset(records, image_size=IMAGE_SIZE)
    out = LocalTrainer(model, config.training, site="site-1", train_dataset=dataset, progress=False).train_round(
        None, None, steps=2
    )
    return config, model, out, dataset


def test_checkpoint_round_trip_and_peft_export(trained, tmp_path):
    config, model, out, dataset = trained
    run = save_checkpoint(
        tmp_path / "run", model, config, shared_state=out.shared_state, private_states={"site-1": out.private_state}
    )
    assert list_private_sites(run) == ["site-1"]
    info = json.loads((run / "checkpoint.json").read_text())
    assert info["shared_keys"] == len(shared_keys(model)) and info["private_sites"] == ["site-1"]

    loaded = load_run(run)  # the only private state is picked: mixed inference with S
    assert loaded.adapter == "mixed" and loaded.private_site == "site-1"
    restored = get_shared_state(loaded.model)
    assert all(torch.equal(restored[k], out.shared_state[k]) for k in out.shared_state)
    assert all(torch.equal(get_private_state(loaded.model)[k], v) for k, v in out.private_state.items())
    assert load_run(run, generic_only=True).adapter == "generic"

    # the same reports as the model in memory (greedy, mixed adapters), once its S1 is G as at load time (in memory,
    # S1 is still the copy of G made when the round started)
    start_round(model)
    images = torch.stack([dataset[i]["image"] for i in range(3)])
    model.eval()
    assert model.generate(images, num_beams=1).reports == loaded.model.generate(images, num_beams=1).reports

    # PEFT can load G onto the plain base decoder; its LoRA weights are the shared `adapter.*` values
    base = AutoModelForCausalLM.from_pretrained(config.model.decoder.path)
    peft = PeftModel.from_pretrained(base, str(run / "peft" / "generic"))
    lora = {k: v for k, v in peft.state_dict().items() if "lora_" in k}
    assert lora
    for k, v in lora.items():
        key = "adapter." + k.replace(".default", "")
        assert torch.equal(v, out.shared_state[key]), key
    assert not (run / "peft" / "generic" / "adapter_model.safetensors").stat().st_size > 1_000_000


def test_load_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(FedMRGError, match="not a FedMRG run folder"):
        load_run(tmp_path)


def test_meta_counts_equal_real_counts(make_config):
    config = make_config(mode="llm")
    torch.manual_seed(0)
    real = count_parameters(FedMRGModel(config))
    meta_model = build_meta_model(config)
    assert next(meta_model.parameters()).device.type == "meta"
    meta = count_parameters(meta_model)
    for key in ("total", "trainable", "frozen", "shared", "shared_buffers", "private"):
        assert meta[key]["parameters"] == real[key]["parameters"], key
    # the shared count is what get_shared_state sends (parameters + float buffers)
    model = FedMRGModel(config)
    sent = sum(v.numel() for v in get_shared_state(model).values())
    assert sent == real["shared"]["parameters"] + real["shared_buffers"]["parameters"]
    assert real["private"]["parameters"] == sum(v.numel() for v in get_private_state(model).values())
    assert real["trainable"]["parameters"] == real["shared"]["parameters"] + real["private"]["parameters"]


def test_llama2_7b_with_resnet101_matches_the_papers_59m():
    """Llama-2-7B shape + ResNet-101 + LoRA r=16 on q/v: the shared part is the paper's ~59M (Tables 1-3)."""
    from fedmrg.config import load_yaml
    from fedmrg.report.run_config import packaged_config, run_config_from_dict

    raw = load_yaml(packaged_config("llama2-7b.yaml"))
    raw["decoder"]["path"] = "."
    config = run_config_from_dict(raw).model
    counts = count_parameters(build_meta_model(config, "llama-2-7b"))
    # encoder 42.50M + projector 8.40M + G 8.39M + head + prompt rows (4 state rows of 4096)
    assert counts["shared"]["parameters"] == 59_420_792
    assert counts["by_role"]["generic"] == 32 * 2 * 16 * (4096 + 4096)  # 32 layers, q and v, r=16
    assert counts["shared_share_of_total"] == pytest.approx(0.00872, abs=5e-5)


def test_generation_rows_and_scores(trained):
    _, model, _, dataset = trained
    rows = generate_for_dataset(model, dataset, batch_size=4, progress=False, num_beams=1, max_new_tokens=12)
    assert [r["study_id"] for r in rows] == [f"s{i}" for i in range(8)]
    assert all(set(r["states"]) == set(describe_states(torch.zeros(1, 14, dtype=torch.long),
                                                        torch.full((1, 14, 4), 0.25))[0]) for r in rows)  # fmt: skip
    first = next(iter(rows[0]["states"].values()))
    assert sum(first["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    result = score_rows(rows)
    h = headline(result)
    assert result["n_reports"] == 8 and 0.0 <= h["BLEU_4"] <= 1.0 and 0.0 <= h["CE_F1"] <= 1.0
