from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from fedmrg.data.records import StudyRecord
from fedmrg.errors import DataError
from fedmrg.observations import OBSERVATIONS, STATE_TOKENS, State
from fedmrg.report.tokenization import ReportCollator, encode_report, make_sample, record_states


@pytest.fixture
def tokenizer(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    tok.add_tokens(list(STATE_TOKENS), special_tokens=True)
    return tok


def test_report_ids_end_with_eos_and_respect_the_cap(tokenizer):
    ids = encode_report(tokenizer, "the heart is normal .", max_tokens=10)
    assert ids[-1] == tokenizer.eos_token_id and len(ids) == 6
    assert tokenizer.decode(ids[:-1]) == "the heart is normal ."
    short = encode_report(tokenizer, "the heart is normal .", max_tokens=3)
    assert short == ids[:2] + [tokenizer.eos_token_id]
    with pytest.raises(DataError, match="s9.*empty report"):
        encode_report(tokenizer, "  ", max_tokens=10, study_id="s9")


def test_collator_pads_right_and_keeps_states(tokenizer):
    samples = [
        {"image": torch.rand(3, 32, 32), "report": "the heart is normal .", "states": [0] * 14, "study_id": "a"},
        {"image": torch.rand(3, 32, 32), "report": "mild cardiomegaly [POS] .", "states": [1] * 14, "study_id": "b"},
    ]
    batch = ReportCollator(tokenizer, max_report_tokens=20)(samples)
    assert batch["images"].shape == (2, 3, 32, 32) and "views" not in batch
    assert batch["input_ids"].dtype == torch.int64 and batch["input_ids"].shape == (2, 6)
    pos_id = tokenizer.convert_tokens_to_ids("[POS]")
    assert pos_id not in batch["input_ids"].tolist()[1]  # a literal prompt token in a report is dropped
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert batch["input_ids"][1, 4:].tolist() == [tokenizer.pad_token_id] * 2
    assert batch["states"].tolist() == [[0] * 14, [1] * 14]
    bad = [dict(samples[0], states=[5] * 14)]
    with pytest.raises(DataError, match="states"):
        ReportCollator(tokenizer)(bad)


def test_record_states_from_labels_or_labeler():
    labels = {name: None for name in OBSERVATIONS} | {"Cardiomegaly": 1, "Edema": 0, "Pneumonia": -1}
    rec = StudyRecord(study_id="x", patient_id="p", findings="Heart is enlarged.", labels=labels)
    states = record_states(rec)
    assert states[OBSERVATIONS.index("Cardiomegaly")] == State.POSITIVE
    assert states[OBSERVATIONS.index("Edema")] == State.NEGATIVE
    assert states[OBSERVATIONS.index("Pneumonia")] == State.UNCERTAIN
    assert states[OBSERVATIONS.index("Fracture")] == State.BLANK
    unlabeled = StudyRecord(study_id="y", patient_id="p", findings="text")
    assert record_states(unlabeled, labeler=lambda text: {"Edema": 1})[OBSERVATIONS.index("Edema")] == State.POSITIVE
    sample = make_sample(rec, torch.rand(3, 32, 32), view=torch.rand(3, 32, 32))
    assert sample["states"] == states and sample["report"] == "Heart is enlarged." and "view" in sample
    with pytest.raises(DataError, match="'z'.*empty report"):
        make_sample(StudyRecord(study_id="z", patient_id="p", labels=labels), torch.rand(3, 32, 32))


def test_finding_weight_falls_on_the_tokens_of_finding_sentences(tokenizer):
    from fedmrg.report.tokenization import encode_report_weighted

    text = "the heart is normal . mild cardiomegaly . no effusion ."
    ids, weights = encode_report_weighted(tokenizer, text, max_tokens=40, finding_weight=3.0)
    assert ids == encode_report(tokenizer, text, max_tokens=40)
    heavy = tokenizer.decode([i for i, w in zip(ids, weights, strict=True) if w == 3.0]).strip()
    assert heavy == "mild cardiomegaly"
    assert weights[-1] == 1.0 and set(weights) == {1.0, 3.0}
    assert encode_report_weighted(tokenizer, text, max_tokens=40)[1] == [1.0] * len(ids)  # weight 1: unlabeled


def test_collator_adds_token_weights_only_when_weighting(tokenizer):
    samples = [
        {"image": torch.rand(3, 8, 8), "report": "mild cardiomegaly .", "states": [0] * 14},
        {"image": torch.rand(3, 8, 8), "report": "the heart is normal . the lungs are clear .", "states": [0] * 14},
    ]
    assert "token_weights" not in ReportCollator(tokenizer)(samples)
    batch = ReportCollator(tokenizer, finding_weight=2.0)(samples)
    w, mask = batch["token_weights"], batch["attention_mask"]
    assert w.shape == batch["input_ids"].shape and w.dtype == torch.float32
    assert torch.equal(w == 0, mask == 0)  # padding weighs nothing
    assert w[0, 0] == 2.0 and w[1][mask[1].bool()].eq(1.0).all()  # "mild ..." is a finding sentence, row 1 not
    with pytest.raises(ValueError, match="finding_weight"):
        ReportCollator(tokenizer, finding_weight=0.0)
