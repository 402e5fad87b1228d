"""scripts/prompt_sensitivity.py: each setting hands the model the prompt states it names, and the scores tell a
prompt-following decoder from one that ignores its prompt."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fedmrg.observations import OBSERVATIONS, State

SCRIPT = Path(__file__).parents[2] / "scripts" / "prompt_sensitivity.py"
_spec = importlib.util.spec_from_file_location("prompt_sensitivity", SCRIPT)
prompt_sensitivity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prompt_sensitivity)  # type: ignore[union-attr]

PTX, NF = OBSERVATIONS.index("Pneumothorax"), OBSERVATIONS.index("No Finding")
TEXT = {PTX: "there is a large right pneumothorax.", NF: "the lungs are clear. no acute cardiopulmonary abnormality."}


def _study(i: int, finding: int) -> dict:
    states = [int(State.BLANK)] * len(OBSERVATIONS)
    states[finding] = int(State.POSITIVE)
    return {"study_id": f"s{i}", "image": torch.full((3, 8, 8), float(i)), "report": TEXT[finding], "states": states}


class Follower:
    """Writes the sentence of the state it is told; with no states (``head``) always the normal one."""

    def __init__(self, follows: bool) -> None:
        self.follows, self.calls = follows, []

    def generate(self, images, *, states=None, generic_only=False):
        self.calls.append(None if states is None else states.clone())
        told = (
            [NF] * len(images)
            if states is None or not self.follows
            else [int(r[PTX] == State.POSITIVE) for r in states]
        )
        return SimpleNamespace(reports=[TEXT[PTX] if t == 1 else TEXT[NF] for t in told])


@pytest.fixture
def dataset() -> list[dict]:
    return [_study(i, PTX if i % 2 else NF) for i in range(16)]


def test_a_prompt_follower_scores_oracle_above_shuffled(dataset):
    result = prompt_sensitivity.sensitivity(Follower(follows=True), False, dataset, n=16)
    assert list(result) == ["oracle", "oracle + blank image", "shuffled states", "head"]
    assert result["oracle"]["ce_f1"] == pytest.approx(1.0)
    assert result["oracle + blank image"]["ce_f1"] == pytest.approx(1.0)
    assert result["shuffled states"]["ce_f1"] < 0.9
    assert result["oracle"]["distinct"] == 2 and result["head"]["distinct"] == 1


def test_a_decoder_that_ignores_its_prompt_scores_them_alike(dataset):
    model = Follower(follows=False)
    result = prompt_sensitivity.sensitivity(model, False, dataset, n=16)
    assert result["oracle"]["ce_f1"] == pytest.approx(result["shuffled states"]["ce_f1"])
    # oracle and blank-image get the ground truth, shuffled a permutation of it, head none
    truth = torch.cat(model.calls[0:1])
    assert torch.equal(torch.cat(model.calls[1:2]), truth)
    shuffled = model.calls[2]
    assert not torch.equal(shuffled, truth) and sorted(map(tuple, shuffled.tolist())) == sorted(
        map(tuple, truth.tolist())
    )
    assert model.calls[3] is None
