"""Load the causal-LM decoder and its tokenizer from a local Hugging Face directory (paper 3.1.3, 4.2).

Any ``AutoModelForCausalLM`` works (Llama, GPT-2, Qwen, ...). The diagnosis prompt tokens are added to the tokenizer
(and, when the vocabulary grows, to the embedding matrix); whether the decoder is a frozen "LLM" or a fully trained
"CLM" is decided here from ``decoder.mode`` and the parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from fedmrg.errors import ConfigError
from fedmrg.observations import STATE_TOKENS
from fedmrg.report.config import DecoderConfig

#: Decoders with at least this many parameters are "LLMs" (frozen, adapters only) under ``mode: auto`` (paper 4.2).
LLM_MIN_PARAMS = 1_000_000_000

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedDecoder:
    """A decoder ready for FedMRG.

    Attributes:
        model: the causal LM (not yet wrapped by PEFT).
        tokenizer: its tokenizer, with :data:`~fedmrg.observations.STATE_TOKENS` added and a pad token set.
        mode: ``"llm"`` (frozen base) or ``"clm"`` (base trains and is shared).
        num_parameters: parameter count of the base model (before adapters).
        bos_token_id: the id that opens the report (BOS, or EOS for tokenizers without BOS such as GPT-2's).
        state_token_ids: ids of ``[BLA] [POS] [NEG] [UNC]`` in State order.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    mode: Literal["llm", "clm"]
    num_parameters: int
    bos_token_id: int
    state_token_ids: list[int]


def resolve_mode(mode: str, num_parameters: int) -> Literal["llm", "clm"]:
    """``"auto"`` -> ``"llm"`` for >= :data:`LLM_MIN_PARAMS` parameters, else ``"clm"``; explicit modes pass."""
    if mode == "auto":
        return "llm" if num_parameters >= LLM_MIN_PARAMS else "clm"
    if mode not in ("llm", "clm"):
        raise ConfigError(f"`decoder.mode` must be 'auto', 'llm' or 'clm', got {mode!r}")
    return mode  # type: ignore[return-value]


def load_decoder(config: DecoderConfig) -> LoadedDecoder:
    """Load model and tokenizer from ``config.path``; raises ConfigError naming the directory when unusable."""
    path = Path(config.path)
    if not path.is_dir():
        raise ConfigError(f"`decoder.path`: model directory not found: {path}")
    if not (path / "config.json").is_file():
        raise ConfigError(f"`decoder.path`: {path} is not a Hugging Face model directory (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"`decoder.path`: cannot load a tokenizer from {path}: {e}") from e
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_DTYPES[config.dtype])
    except (OSError, ValueError) as e:
        raise ConfigError(f"`decoder.path`: cannot load a causal language model from {path}: {e}") from e

    if tokenizer.eos_token_id is None:
        raise ConfigError(f"`decoder.path`: the tokenizer in {path} has no eos_token; reports need one to end")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tokenizer.pad_token_id is None:
        # Padding is masked out of attention and loss, so any id works; EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.add_tokens(list(STATE_TOKENS), special_tokens=True)
    state_ids = tokenizer.convert_tokens_to_ids(list(STATE_TOKENS))
    num_parameters = sum(p.numel() for p in model.parameters())
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        # The base rows of the new ids are never read (StateTokenEmbedding overrides them in inputs_embeds and
        # generation suppresses them); resizing keeps ids and output logits consistent with the tokenizer.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return LoadedDecoder(
        model=model,
        tokenizer=tokenizer,
        mode=resolve_mode(config.mode, num_parameters),
        num_parameters=num_parameters,
        bos_token_id=int(bos),
        state_token_ids=[int(i) for i in state_ids],
    )
