"""The diagnosis prompt (paper 3.2.2): each of the 14 observations named in words, followed by its state token.

For states (BLANK, POSITIVE, NEGATIVE, ...) the prompt reads::

    no finding [BLA] enlarged cardiomediastinum [POS] cardiomegaly [NEG] ... support devices [BLA]

The observation names are ordinary text tokens the decoder already knows (a pretrained LLM reads "cardiomegaly"
as cardiomegaly); only the four state tokens are new, and their rows start from the decoder's embedding of the words
``blank`` / ``positive`` / ``negative`` / ``uncertain`` (:data:`STATE_WORDS`), so the frozen decoder can read the
prompt from the first step. Writing the same prompt with the state *words* instead of the tokens
(:meth:`DiagnosisPrompt.word_ids`) gives text a language model can be pretrained on (the built-in decoder's warm-up).

Every observation is always listed, in :data:`fedmrg.observations.OBSERVATIONS` order, so every prompt has the same
length and a batch needs no padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedmrg.observations import NUM_OBSERVATIONS, OBSERVATIONS, State

#: the word each state token starts from, in :class:`~fedmrg.observations.State` order
STATE_WORDS: tuple[str, ...] = ("blank", "positive", "negative", "uncertain")


#: every word of the prompt in words, for the tokenizer's training texts (so names and state words get merges)
PROMPT_VOCABULARY = " ".join([*(name.lower() for name in OBSERVATIONS), *STATE_WORDS])


def _words_text(words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The prompt in words for one word per observation, and the character span of each of those words with the
    space before it (a tokenizer may keep that space as a token of its own)."""
    text, spans = "", []
    for i, (name, word) in enumerate(zip(OBSERVATIONS, words, strict=True)):
        text += ("" if i == 0 else " ") + name.lower()
        spans.append((len(text), len(text) + 1 + len(word)))
        text += " " + word
    return text, spans


def _split_at_words(tokenizer, words: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Tokenize the prompt in words as one text; return (per observation: the name's tokens, per observation: the
    word's tokens), using the tokenizer's character offsets (a token overlapping a word's span belongs to the word)."""
    text, spans = _words_text(words)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    names: list[list[int]] = [[] for _ in spans]
    values: list[list[int]] = [[] for _ in spans]
    k = 0
    for token, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        while k < len(spans) and a >= spans[k][1]:
            k += 1
        if k < len(spans) and b > spans[k][0]:
            values[k].append(token)
        else:
            names[k].append(token)
    return names, values


class DiagnosisPrompt:
    """Token ids of the diagnosis prompt for a tokenizer.

    Args:
        tokenizer: the decoder's tokenizer (a Hugging Face tokenizer: ``tokenizer(text, add_special_tokens=False)``).
        state_token_ids: vocabulary ids of ``[BLA] [POS] [NEG] [UNC]`` in State order; None for a tokenizer without
            them (only :meth:`word_ids` then).

    The prompt in words is tokenized as one text (so each word keeps its leading space, as in running text) and cut
    at the state words by character offsets, so :meth:`ids` and :meth:`word_ids` differ only at the state positions;
    a tokenizer whose tokens straddle a name and a state word raises ValueError.
    """

    def __init__(self, tokenizer, state_token_ids: Sequence[int] | None = None) -> None:
        if state_token_ids is not None and len(state_token_ids) != len(State):
            raise ValueError(f"`state_token_ids` must hold {len(State)} ids, got {list(state_token_ids)}")
        # Tokenized as whole texts, as a language model reads them (a word's leading space belongs to its token);
        # the names must tokenize the same whatever the state words, so that only the state slots differ.
        names, _ = _split_at_words(tokenizer, [STATE_WORDS[0]] * NUM_OBSERVATIONS)
        self.state_word_ids: list[list[int]] = []
        for word in STATE_WORDS:
            other_names, values = _split_at_words(tokenizer, [word] * NUM_OBSERVATIONS)
            if other_names != names or any(v != values[1] for v in values[1:]) or not values[1]:
                raise ValueError(f"the tokenizer merges the state word {word!r} with the observation names around it")
            self.state_word_ids.append(values[1])
        if not all(names):
            raise ValueError("the tokenizer turns an observation name into no tokens")
        self._names = names
        self._unk = tokenizer.unk_token_id
        template: list[int] = []
        slots: list[int] = []
        for ids in names:
            template += ids
            slots.append(len(template))
            template.append(-1)  # the state token goes here
        self.template = torch.tensor(template, dtype=torch.long)  # (P,)
        self.slots = torch.tensor(slots, dtype=torch.long)  # (14,) positions of the state tokens
        self.state_token_ids = None if state_token_ids is None else torch.tensor(list(state_token_ids))  # (4,) int64

    @property
    def length(self) -> int:
        """P, the number of prompt tokens."""
        return int(self.template.numel())

    def ids(self, states: torch.Tensor) -> torch.Tensor:
        """State indices (B, 14) int64 in 0..3 -> prompt ids (B, P) int64 with the state tokens in place."""
        if states.ndim != 2 or states.shape[1] != NUM_OBSERVATIONS:
            raise ValueError(f"`states` must have shape (B, {NUM_OBSERVATIONS}), got {tuple(states.shape)}")
        if self.state_token_ids is None:
            raise ValueError("this DiagnosisPrompt was built without `state_token_ids`")
        out = self.template.to(states.device).repeat(states.shape[0], 1)
        out[:, self.slots.to(states.device)] = self.state_token_ids.to(states.device)[states.long()]
        return out

    def word_ids(self, states: Sequence[int]) -> list[int]:
        """The same prompt with the state *words* (one study's 14 states) -> ids, for language-model pretraining."""
        if len(states) != NUM_OBSERVATIONS:
            raise ValueError(f"`states` must hold {NUM_OBSERVATIONS} values, got {len(states)}")
        out: list[int] = []
        for name_ids, state in zip(self._names, states, strict=True):
            out += name_ids + self.state_word_ids[int(state)]
        return out

    def state_word_embeddings(self, embedding: torch.Tensor) -> torch.Tensor:
        """(4, d) float32: the mean input embedding (rows of ``embedding`` (V, d)) of each state word's tokens.

        A word the tokenizer does not know (only unknown tokens) gets a random row drawn with the per-dimension mean
        and standard deviation of ``embedding`` (global torch RNG), so no two state rows start equal.
        """
        table = embedding.detach().float()
        rows = []
        for ids in self.state_word_ids:
            known = [i for i in ids if i != self._unk]
            rows.append(table[known].mean(0) if known else table.mean(0) + table.std(0) * torch.randn(table.shape[1]))
        return torch.stack(rows)


def labels_word_prompts(tokenizer, texts: Sequence[str], *, fraction: float, seed: int) -> list[list[int] | None]:
    """For each report of ``texts``: with probability ``fraction`` (``random.Random(seed)``) its diagnosis prompt in
    words (:meth:`DiagnosisPrompt.word_ids`, states from :func:`fedmrg.labels.label_reports`), else None."""
    import random

    from fedmrg.labels import label_reports
    from fedmrg.observations import csv_to_state

    rng = random.Random(seed)
    chosen = [i for i in range(len(texts)) if rng.random() < fraction]
    prompt = DiagnosisPrompt(tokenizer)
    out: list[list[int] | None] = [None] * len(texts)
    for i, labels in zip(chosen, label_reports([texts[i] for i in chosen]), strict=True):
        out[i] = prompt.word_ids([int(csv_to_state(labels[o])) for o in OBSERVATIONS])
    return out
