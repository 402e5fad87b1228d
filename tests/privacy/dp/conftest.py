"""Fixtures for the differential-privacy tests: a tiny random Llama, a tiny ResNet config, a few synthetic studies.

Everything is built here (nothing is downloaded); the helpers mirror tests/report/conftest.py on a smaller scale.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from fedmrg.data.records import ImageRef, StudyRecord
from fedmrg.observations import OBSERVATIONS, state_to_csv
from fedmrg.report.config import AblationConfig, AdapterConfig, DecoderConfig, EncoderConfig, FedMRGConfig

IMAGE_SIZE = 32
STUDIES: list[tuple[str, list[int]]] = [
    ("the heart is normal in size . the lungs are clear .", [0, 2] + [0] * 11 + [1]),
    ("mild cardiomegaly . no pleural effusion .", [0, 1] + [0] * 6 + [2, 2] + [0] * 4),
    ("right lower lobe consolidation .", [0, 0, 1, 0, 0, 1, 3] + [0] * 7),
    ("moderate pulmonary edema with bilateral pleural effusions .", [0, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
]


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random LlamaForCausalLM (hidden 16, 1 layer) and a word-level tokenizer saved with ``save_pretrained``."""
    path = tmp_path_factory.mktemp("dp_tiny_llama")
    words = sorted({w for text, _ in STUDIES for w in text.split()})
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=96,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def make_config(tiny_llama_dir: Path) -> Callable[..., FedMRGConfig]:
    """``make_config(dp=None | dict, mode="llm", **fields)``: tiny ResNet + Llama, LoRA r=2, contrastive off."""
    from fedmrg.privacy.dp_config import DPSGDConfig, PrivacyConfig

    def make(dp: dict | None = None, *, mode: str = "llm", **fields) -> FedMRGConfig:
        fields.setdefault("encoder", EncoderConfig(preset="resnet-tiny", image_size=IMAGE_SIZE))
        fields.setdefault("adapter", AdapterConfig(r=2, alpha=4, dropout=0.0))
        fields.setdefault("ablations", AblationConfig(no_contrastive=True))
        if dp is not None:
            fields["privacy"] = PrivacyConfig(dp_sgd=DPSGDConfig(**dp))
        return FedMRGConfig(decoder=DecoderConfig(path=str(tiny_llama_dir), mode=mode, max_report_tokens=16), **fields)

    return make


def write_records(folder: Path, n: int) -> list[StudyRecord]:
    """``n`` studies (the reports above, cycling) with distinct random 40 px PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        text, states = STUDIES[i % len(STUDIES)]
        path = folder / f"s{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(path)
        labels = {obs: state_to_csv(s) for obs, s in zip(OBSERVATIONS, states, strict=True)}
        records.append(StudyRecord(f"s{i}", f"p{i}", images=[ImageRef(str(path), "PA")], findings=text, labels=labels))
    return records


@pytest.fixture
def records(tmp_path: Path) -> list[StudyRecord]:
    return write_records(tmp_path / "images", 12)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
