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
