"""The diagnosis prompt: observation names in words, each followed by its state token (or state word)."""

from __future__ import annotations

import pytest
import torch

from fedmrg.observations import NUM_OBSERVATIONS, OBSERVATIONS, State
from fedmrg.report.diagnosis_prompt import STATE_WORDS, DiagnosisPrompt, labels_word_prompts


@pytest.fixture
def tokenizer(make_config):
    from fedmrg.report.decoder import load_decoder

    return load_decoder(make_config().decoder).tokenizer


def test_ids_put_each_state_token_after_its_observation_name(tokenizer):
    state_ids = tokenizer.convert_tokens_to_ids(["[BLA]", "[POS]", "[NEG]", "[UNC]"])
    prompt = DiagnosisPrompt(tokenizer, state_ids)
    states = torch.zeros(2, NUM_OBSERVATIONS, dtype=torch.long)
    states[0, OBSERVATIONS.index("Cardiomegaly")] = State.POSITIVE
    states[1, OBSERVATIONS.index("Pleural Effusion")] = State.UNCERTAIN
    ids = prompt.ids(states)
    assert ids.shape == (2, prompt.length)
    text = tokenizer.decode(ids[0])
    assert "cardiomegaly[POS]" in text.replace(" ", "") and text.count("[BLA]") == NUM_OBSERVATIONS - 1
    assert "pleuraleffusion[UNC]" in tokenizer.decode(ids[1]).replace(" ", "")
    # only the 14 slots differ between the two prompts, and each slot holds a state token
    assert (ids[0] != ids[1]).sum() == 2
    assert set(ids[:, prompt.slots].flatten().tolist()) <= set(state_ids)
    with pytest.raises(ValueError, match="must have shape"):
        prompt.ids(torch.zeros(2, 13, dtype=torch.long))


def test_word_ids_differ_from_ids_only_at_the_state_positions(tokenizer):
    state_ids = tokenizer.convert_tokens_to_ids(["[BLA]", "[POS]", "[NEG]", "[UNC]"])
    prompt = DiagnosisPrompt(tokenizer, state_ids)
    states = [int(State.NEGATIVE), int(State.POSITIVE)] * (NUM_OBSERVATIONS // 2)
    ids = prompt.ids(torch.tensor([states]))[0].tolist()
    slots = set(prompt.slots.tolist())
    expected = []
    for i, token in enumerate(ids):
        expected += prompt.state_word_ids[states[len([j for j in slots if j < i])]] if i in slots else [token]
    assert prompt.word_ids(states) == expected
    assert tokenizer.decode(prompt.state_word_ids[State.POSITIVE]).strip() == STATE_WORDS[State.POSITIVE]
    with pytest.raises(ValueError, match="without `state_token_ids`"):
        DiagnosisPrompt(tokenizer).ids(torch.zeros(1, NUM_OBSERVATIONS, dtype=torch.long))


def test_labels_word_prompts_follow_the_labeler(tokenizer):
    texts = ["There is cardiomegaly. No pleural effusion.", "Normal chest.", "Small left pneumothorax."]
    prompts = labels_word_prompts(tokenizer, texts, fraction=1.0, seed=0)
    first = tokenizer.decode(prompts[0]).split()
    assert first[first.index("cardiomegaly") + 1] == "positive"
    assert first[first.index("effusion") + 1] == "negative"
    third = tokenizer.decode(prompts[2]).split()
    assert third[third.index("pneumothorax") + 1] == "positive"
    assert labels_word_prompts(tokenizer, texts, fraction=0.0, seed=0) == [None, None, None]
