"""Fixtures for the report-model tests: a tiny random Llama + word-level tokenizer saved as a local HF directory,
configs with a tiny ResNet, and batches of synthetic studies. Everything is built here; nothing is downloaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from fedmrg.report.config import AdapterConfig, DecoderConfig, EncoderConfig, FedMRGConfig
from fedmrg.report.diagnosis_prompt import PROMPT_VOCABULARY

#: Eight distinct studies: report text and 14 states (State order: 0 blank, 1 pos, 2 neg, 3 unc).
STUDIES: list[tuple[str, list[int]]] = [
    ("the heart is normal in size . the lungs are clear .", [0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
    ("mild cardiomegaly . no pleural effusion or pneumothorax .", [0, 1, 0, 0, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0]),
    ("there is a small left pleural effusion . heart size is normal .", [0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
    ("right lower lobe consolidation concerning for pneumonia .", [0, 0, 1, 0, 0, 1, 3, 0, 0, 0, 0, 0, 0, 0]),
    ("no acute cardiopulmonary abnormality . lungs are clear .", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
    ("moderate pulmonary edema with bilateral pleural effusions .", [0, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
    ("a right pneumothorax is present . no consolidation .", [0, 0, 0, 0, 0, 2, 0, 0, 1, 0, 0, 0, 0, 0]),
    (
        "stable cardiomediastinal silhouette . degenerative changes of the spine .",
        [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ),
]
IMAGE_SIZE = 64


def _tokenizer() -> PreTrainedTokenizerFast:
    # the reports' words and the diagnosis prompt's (observation names, state words), as a pretrained LLM knows them
    words = sorted({w for text, _ in STUDIES for w in text.split()} | set(PROMPT_VOCABULARY.split()))
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def save_tiny_llama(path: Path, *, hidden_size: int = 32, num_layers: int = 2, seed: int = 0) -> Path:
    """A random LlamaForCausalLM + tokenizer written with ``save_pretrained`` to ``path``."""
    tokenizer = _tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny random Llama (hidden 32, 2 layers) and its word-level tokenizer."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture
def make_config(tiny_llama_dir: Path) -> Callable[..., FedMRGConfig]:
    """``make_config(method="fedmrg", mode="auto", **fields)``: tiny ResNet, tiny Llama, LoRA r=4, no dropout."""

    def make(method: str = "fedmrg", *, mode: str = "auto", **fields) -> FedMRGConfig:
        fields.setdefault("encoder", EncoderConfig(preset="resnet-tiny", image_size=IMAGE_SIZE))
        fields.setdefault("adapter", AdapterConfig(r=4, alpha=8, dropout=0.0, num_virtual_tokens=3, vera_r=8))
        return FedMRGConfig(decoder=DecoderConfig(path=str(tiny_llama_dir), mode=mode), method=method, **fields)

    return make


@pytest.fixture
def make_batch() -> Callable[..., dict]:
    """``make_batch(model, n=4, views=True, seed=0)``: the first n studies, random images, collated."""
    from fedmrg.report.tokenization import ReportCollator

    def make(model, n: int = 4, *, views: bool = True, seed: int = 0) -> dict:
        g = torch.Generator().manual_seed(seed)
        samples = []
        for i, (text, states) in enumerate(STUDIES[:n]):
            sample = {"image": torch.rand(3, IMAGE_SIZE, IMAGE_SIZE, generator=g), "report": text, "states": states}
            sample["study_id"] = f"s{i}"
            if views:
                sample["view"] = sample["image"] + 0.05 * torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
            samples.append(sample)
        return ReportCollator(model.tokenizer, max_report_tokens=32)(samples)

    return make


def _randomize_adapters(model, *, scale: float = 0.5, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.decoder.named_parameters():
            if "lora_" in name:
                p.copy_(scale * torch.randn(p.shape, generator=g))


@pytest.fixture
def randomize_adapters() -> Callable[..., None]:
    """``randomize_adapters(model)``: random values in every LoRA weight, so G, S1, S2 differ and are non-zero."""
    return _randomize_adapters


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread (and don't fight other processes for the 2 cores); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
