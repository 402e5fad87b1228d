"""Consistency reranking: the agreement score, the pick, and the model's decoding with ``rerank_samples``."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import fedmrg.report.rerank as rerank
from fedmrg.observations import OBSERVATIONS, State
from fedmrg.report.config import FedMRGConfig, GenerationConfig
from fedmrg.report.model import FedMRGModel
from fedmrg.report.rerank import pick_consistent, positive_agreement


def _states(*positive: str) -> list[int]:
    return [int(State.POSITIVE) if o in positive else int(State.NEGATIVE) for o in OBSERVATIONS]


def test_agreement_is_the_f1_of_positive_observations():
    device = "there is a left-sided pacemaker. the lungs are clear."
    assert positive_agreement(_states("Support Devices", "No Finding"), device) == 1.0
    # prompt {Cardiomegaly, Support Devices}, report {Support Devices, No Finding}: tp 1 -> 2 / 4
    assert positive_agreement(_states("Cardiomegaly", "Support Devices"), device) == 0.5
    assert positive_agreement(_states(), "") == 1.0  # neither side states anything
    assert positive_agreement(_states("Cardiomegaly"), "") == 0.0
    with pytest.raises(ValueError, match="14 values"):
        positive_agreement([1, 2], device)


def test_pick_keeps_the_first_best_candidate():
    normal = "the heart is normal in size. the lungs are clear."
    effusion = "there is a small right pleural effusion."
    states = torch.tensor([_states("Pleural Effusion"), _states("No Finding"), _states("Cardiomegaly")])
    picks = pick_consistent([[normal, effusion], [normal, effusion], [normal, effusion, normal]], states)
    # study 3: no candidate states cardiomegaly; both normal reports score 0 like the effusion -> the greedy one
    assert picks == [1, 0, 0]
    # a prompt without any positive state (an unlearned head) keeps the greedy report, though "" agrees "better"
    assert pick_consistent([[normal, ""]], torch.tensor([_states()])) == [0]
    with pytest.raises(ValueError, match="2 candidate lists for 3 studies"):
        pick_consistent([[normal], [normal]], states)


def _with_rerank(cfg: FedMRGConfig, samples: int) -> FedMRGConfig:
    return dataclasses.replace(cfg, generation=GenerationConfig(num_beams=1, max_new_tokens=8, rerank_samples=samples))


def test_generate_keeps_the_best_scoring_candidate(make_config, make_batch, monkeypatch):
    torch.manual_seed(0)
    model = FedMRGModel(_with_rerank(make_config(), 4))
    images = make_batch(model, n=3)["images"]
    states = torch.tensor([_states("Cardiomegaly")] * 3)  # prompt states with a positive (else nothing to agree with)
    greedy = model.generate(images, rerank_samples=0, states=states)
    # a scorer the tiny random decoder can satisfy: longer reports agree "better"
    monkeypatch.setattr(rerank, "positive_agreement", lambda states, report: float(len(report)))
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    first = model.generate(images, states=states)
    after = torch.rand(3)
    assert torch.equal(before, after), "sampling must not consume the caller's random stream"
    second = model.generate(images, states=states)
    assert first.reports == second.reports  # seeded sampling: reproducible
    assert all(len(r) >= len(g) for r, g in zip(first.reports, greedy.reports, strict=True))
    assert any(len(r) > len(g) for r, g in zip(first.reports, greedy.reports, strict=True))
    decoded = [t.strip() for t in model.tokenizer.batch_decode(first.token_ids, skip_special_tokens=True)]
    assert decoded == first.reports and first.token_ids.shape[0] == 3
    # every candidate ties: the greedy report is kept
    monkeypatch.setattr(rerank, "positive_agreement", lambda states, report: 0.0)
    assert model.generate(images, states=states).reports == greedy.reports


def test_rerank_needs_diagnosis_prompts(make_config):
    with pytest.raises(ValueError, match=r"rerank_samples: 2.*method: fedlora.*generation.rerank_samples: 0"):
        _with_rerank(make_config("fedlora"), 2)
    model = FedMRGModel(make_config("fedlora"))
    with pytest.raises(ValueError, match=r"no diagnosis prompts to rerank against"):
        model.generate(torch.rand(1, 3, 64, 64), max_new_tokens=2, rerank_samples=2)
    with pytest.raises(ValueError, match=r"rerank_samples.*>= 0"):
        GenerationConfig(rerank_samples=-1)
    with pytest.raises(ValueError, match=r"rerank_temperature.*> 0"):
        GenerationConfig(rerank_temperature=0.0)
