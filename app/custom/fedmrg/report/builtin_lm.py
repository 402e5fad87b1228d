"""Building blocks of the built-in models: report tokenizer, small Llama decoder, LM warm-up, small ResNet encoder.

Every piece is a standard Hugging Face object saved with ``save_pretrained``, so the FedMRG model loads the built-in
models exactly as it loads Llama-2-7B or a ResNet-101 from a local directory (``AutoTokenizer`` /
``AutoModelForCausalLM`` / ``ResNetModel.from_pretrained(path)``). :mod:`fedmrg.report.builtin` chains them into a
cached, locked, recipe-hashed build.

Tokenizer choice: byte-level BPE (GPT-2 / Llama-3 family) trained on report text. Byte-level means every string
encodes with no ``<unk>``, whatever a site's reports contain (accents, ``xxxx`` de-identification marks, digits); BPE
merges learned on radiology text keep a small vocabulary (2k) while most report words are one token. Text is
normalised as the text metrics see it: NFKC, lower-case, runs of whitespace collapsed to one space, stripped.
Following Llama, encoding with special tokens prepends ``<s>`` (bos) only; trainers append ``</s>`` (eos) themselves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, ResNetConfig, ResNetModel
from transformers.optimization import get_cosine_schedule_with_warmup

#: Special tokens of the report tokenizer (Llama's spelling; ``<pad>`` added since Llama has none).
SPECIAL_TOKENS: dict[str, str] = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def report_normalizer() -> normalizers.Normalizer:
    """The tokenizer's normaliser: NFKC, lower-case, whitespace runs -> one space, strip."""
    return normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    )


def normalize_report_text(text: str) -> str:
    """``text`` as the report tokenizer sees it; ``decode(encode(text), skip_special_tokens=True)`` returns this."""
    return report_normalizer().normalize_str(text)


def train_report_tokenizer(
    texts: Sequence[str], *, vocab_size: int, min_frequency: int = 2, model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for ``transformers``.

    Args:
        texts: training reports (any case; normalised as in :func:`report_normalizer`).
        vocab_size: total vocabulary including the 256 byte symbols and the 4 special tokens (must exceed 260).
        min_frequency: a merge must occur at least this often in ``texts``.
        model_max_length: stored in the tokenizer config (the decoder's ``max_position_embeddings``).

    Returns:
        a fast tokenizer with ``bos/eos/pad/unk`` set; ``tokenizer(x)`` prepends bos. Deterministic in ``texts``.
    """
    base = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
    if vocab_size <= base:
        raise ValueError(
            f"`vocab_size` must be > {base} (256 byte symbols + {len(SPECIAL_TOKENS)} specials), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.normalizer = report_normalizer()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),  # ids 0..3: <unk> <s> </s> <pad>
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **SPECIAL_TOKENS)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | Path) -> None:
    """``save_pretrained`` plus a portable ``tokenizer_class``.

    transformers 5 writes its internal class name ``TokenizersBackend``, which transformers 4 cannot resolve; both
    versions load ``PreTrainedTokenizerFast`` (pyproject allows >= 4.45), so the config names that instead.
    """
    tokenizer.save_pretrained(str(path))
    cfg_path = Path(path) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def make_llama(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    max_positions: int,
    seed: int,
) -> LlamaForCausalLM:
    """A randomly initialised Llama causal LM sized for ``tokenizer`` (untied embeddings, as Llama-2), from ``seed``.

    The caller's global torch RNG is left untouched.
    """
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def make_resnet_encoder(
    *, num_channels: int, embedding_size: int, hidden_sizes: Sequence[int], depths: Sequence[int], seed: int
) -> ResNetModel:
    """A randomly initialised ResNet with basic blocks (ResNet-18 layout, narrower), from ``seed``.

    Input ``(B, num_channels, H, W)`` float; ``last_hidden_state`` is ``(B, hidden_sizes[-1], H/s, W/s)`` with output
    stride ``s = 4 * 2 ** (len(hidden_sizes) - 1)`` (4 stages: 7x7 at 224 px, ResNet-101's patch grid) and
    ``pooler_output`` ``(B, hidden_sizes[-1], 1, 1)``.
    """
    config = ResNetConfig(
        num_channels=num_channels,
        embedding_size=embedding_size,
        hidden_sizes=list(hidden_sizes),
        depths=list(depths),
        layer_type="basic",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResNetModel(config)


def _encode(
    tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], prompts: Sequence[Sequence[int] | None] | None = None
) -> list[list[int]]:
    """``[prompt] + [bos] + tokens + [eos]`` per text (``prompts[i]``: token ids, or None for no prompt)."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    prompts = prompts if prompts is not None else [None] * len(ids)
    if len(prompts) != len(ids):
        raise ValueError(f"{len(prompts)} prompts for {len(ids)} texts")
    return [[*(p or ()), tokenizer.bos_token_id, *x, tokenizer.eos_token_id] for p, x in zip(prompts, ids, strict=True)]


def report_rows(
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    *,
    max_len: int,
    prompts: Sequence[Sequence[int] | None] | None = None,
) -> tuple[list[list[int]], list[int]]:
    """One row per text: ids ``[prompt] <s> report </s>`` cut to ``max_len`` tokens, and per row the number of
    leading tokens that are not scored (the prompt and ``<s>``). ``prompts``: per text, token ids written before its
    ``<s>`` (the diagnosis prompt in words) or None."""
    if max_len < 2:
        raise ValueError(f"`max_len` must be >= 2, got {max_len}")
    prompts = prompts if prompts is not None else [None] * len(texts)
    rows = [ids[:max_len] for ids in _encode(tokenizer, texts, prompts)]
    return rows, [len(p or ()) + 1 for p in prompts]


def _batch(rows: Sequence[Sequence[int]], unscored: Sequence[int], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-padded ``(ids, attention_mask, labels)``, each (B, longest row) int64; labels -100 on unscored tokens."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (row, skip) in enumerate(zip(rows, unscored, strict=True)):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
        labels[i, skip : len(row)] = ids[i, skip : len(row)]
    return ids, mask, labels


def warm_up_lm(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    learning_rate: float,
    seed: int,
    label_smoothing: float = 0.0,
    prompts: Sequence[Sequence[int] | None] | None = None,
    bf16: bool = False,
    progress: bool = True,
) -> list[float]:
    """Language-model pretraining of ``model`` on ``texts`` with their ``prompts``, in place.

    Each batch holds ``batch_size`` reports, one per row (:func:`report_rows`, at most ``seq_len`` tokens), and only
    the report tokens (after ``<s>``, ``</s>`` included) are scored: the prompt conditions the report but is never a
    target, as in FedMRG's own layout (:mod:`fedmrg.report.prompt_layout`). Rows, not packed sequences, because the
    decoder must learn to read the prompt before its report: with the default recipe's 180 steps, packed 128-token
    sequences scored on every token gave a decoder that ignores the prompt (CE-F1 of its reports 0.144 with their own
    prompts vs 0.144 with shuffled ones, 60 held-out reports, batch 16), rows scored on the report 0.481 vs 0.169 (100
    reports, batch 16; ``scripts/lm_prompt_following.py``).

    AdamW (weight decay 0.01), 10 % linear warm-up then cosine decay, gradient norm clipped to 1, next-token
    cross-entropy with ``label_smoothing`` (0 = plain LM loss). Batches are drawn without replacement per epoch from a
    permutation seeded by ``seed``. ``bf16``: forward under CPU bf16 autocast (weights and optimizer stay float32;
    the loss is taken in float32). Returns the training loss (nats per scored token) of every step.
    """
    rows, unscored = report_rows(tokenizer, texts, max_len=seq_len, prompts=prompts)
    kept = [i for i, (row, skip) in enumerate(zip(rows, unscored, strict=True)) if len(row) > skip]
    if not kept:
        raise ValueError(f"no report fits after its prompt in `seq_len` = {seq_len} tokens: nothing to train on")
    rows, unscored = [rows[i] for i in kept], [unscored[i] for i in kept]  # a prompt that fills its row is dropped
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=max(1, steps // 10), num_training_steps=steps)
    model.train()
    losses: list[float] = []
    order = torch.empty(0, dtype=torch.long)
    bar = tqdm(range(steps), desc="warm-up LM", unit="step", disable=not progress)
    for _ in bar:
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(len(rows), generator=gen)])
        picked, order = order[:batch_size].tolist(), order[batch_size:]
        ids, mask, labels = _batch([rows[i] for i in picked], [unscored[i] for i in picked], tokenizer.pad_token_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            labels[:, 1:].reshape(-1),
            ignore_index=-100,
            label_smoothing=label_smoothing,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def lm_loss(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    prompts: Sequence[Sequence[int] | None] | None = None,
) -> float:
    """Mean negative log-likelihood (nats per predicted token) of each text as ``[prompt] <s> text </s>``.

    Every token after ``<s>`` counts once, ``</s>`` included (the prompt is context, never scored); perplexity is
    ``exp`` of this. Rows longer than the model's ``max_position_embeddings`` are truncated.
    """
    was_training = model.training
    model.eval()
    rows, unscored = report_rows(tokenizer, texts, max_len=model.config.max_position_embeddings, prompts=prompts)
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        ids, mask, labels = _batch(rows[start : start + batch_size], unscored[start : start + batch_size],
                                   tokenizer.pad_token_id)  # fmt: skip
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        targets = labels[:, 1:]
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100, reduction="sum"
        ).item()
        count += int((targets != -100).sum())
    model.train(was_training)
    if count == 0:
        raise ValueError("`texts` is empty: no tokens to score")
    return total / count


def perplexity(loss: float) -> float:
    """``exp(loss)`` for a loss in nats per token."""
    return math.exp(loss)


def save_tiny_random_llama(
    path: str | Path, vocab_size: int = 320, hidden: int = 32, layers: int = 2, *, heads: int = 2, seed: int = 0
) -> Path:
    """Save a tiny random Llama causal LM with its report tokenizer to ``path`` (for tests; no training).

    The tokenizer is a byte-level BPE of ``vocab_size`` tokens trained on 200 neutral reports (well under a second);
    ``AutoModelForCausalLM.from_pretrained(path)`` and ``AutoTokenizer.from_pretrained(path)`` load the result.
    """
    from fedmrg.report.builtin_corpus import neutral_reports

    path = Path(path)
    tokenizer = train_report_tokenizer(neutral_reports(200, seed=seed), vocab_size=vocab_size, model_max_length=256)
    model = make_llama(
        tokenizer,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=2 * hidden,
        max_positions=256,
        seed=seed,
    )
    model.save_pretrained(str(path))
    save_tokenizer(tokenizer, path)
    return path
