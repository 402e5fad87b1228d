"""The recipe of the built-in models: every setting that changes their weights, as nested dataclasses.

A recipe loads from YAML with :func:`fedmrg.config.load_config` (``load_config(path, BuiltinRecipe)``); its hash (with
the corpus and the library versions, see :func:`fedmrg.report.builtin.recipe_hash`) names the cache directory, so any
change rebuilds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


def _positive(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}")


@dataclass(frozen=True)
class CorpusRecipe:
    """Warm-up corpus: ``n_reports`` neutral reports (:mod:`fedmrg.report.builtin_corpus`), the last ``n_heldout``
    held out for the perplexity check (verbatim duplicates of training reports removed from the held-out part)."""

    name: str = "neutral"
    n_reports: int = 4000
    n_heldout: int = 400

    def __post_init__(self) -> None:
        if self.name != "neutral":
            raise ValueError(f"`corpus.name` must be 'neutral' (the only built-in corpus), got {self.name!r}")
        _positive(self, "n_reports", "n_heldout")
        if self.n_heldout >= self.n_reports:
            raise ValueError(f"`n_heldout` ({self.n_heldout}) must be < `n_reports` ({self.n_reports})")


@dataclass(frozen=True)
class TokenizerRecipe:
    """Byte-level BPE (:func:`fedmrg.report.builtin_lm.train_report_tokenizer`) trained on the training reports plus,
    when ``use_lexicon``, the packaged radiology word list, so report words beyond the warm-up corpus stay short."""

    vocab_size: int = 2048
    min_frequency: int = 2
    use_lexicon: bool = True

    def __post_init__(self) -> None:
        _positive(self, "vocab_size", "min_frequency")


@dataclass(frozen=True)
class DecoderRecipe:
    """Llama causal LM sizes (untied embeddings; ``hidden_size`` divisible by ``num_heads``)."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 704
    max_positions: int = 512

    def __post_init__(self) -> None:
        _positive(self, "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"`hidden_size` ({self.hidden_size}) must be divisible by `num_heads` ({self.num_heads})")


@dataclass(frozen=True)
class WarmupRecipe:
    """LM pretraining on the corpus (:func:`fedmrg.report.builtin_lm.warm_up_lm`); ``steps = 0`` keeps random
    weights; peak learning rate ``learning_rate``.

    ``label_smoothing`` keeps the decoder from becoming over-confident in the neutral corpus's few phrasings: measured
    at hidden 128 / 2 layers / 100 steps, 0.1 lowered the loss on unseen site-style reports from 5.77 to 5.64 and on
    real IU X-ray reports from 7.05 to 6.83 nats/token, at no cost on the neutral held-out text (1.16 vs 1.21).

    ``prompted_fraction`` of the reports (drawn with ``seed``) are preceded by their diagnosis prompt written in words
    (:meth:`fedmrg.report.diagnosis_prompt.DiagnosisPrompt.word_ids`, states from the labeler), so that the decoder,
    like a pretrained LLM reading "cardiomegaly: positive", can follow a findings list; it never sees the state
    tokens, images or a site's style. The rest teach it to write without a prompt (baselines without diagnosis
    prompts). CE-F1 of the decoder's reports for held-out reports with their own prompt vs a shuffled one
    (``scripts/lm_prompt_following.py``): 0.488 vs 0.206 for this recipe (100 reports; unprompted held-out loss 0.58
    nats/token). Sweeps at 180 steps, batch 16, 60 reports: 0.291 vs 0.106 at 0.75; 0.465 vs 0.116 at 1.0, where the
    decoder can no longer write unprompted (3.5 nats/token).

    Each step trains on ``batch_size`` reports, one per row of at most ``seq_len`` tokens (prompt included). Batch 12
    follows as well as 16 (0.488 vs 0.481 own-prompt CE-F1) and warms up in 36 s instead of 52 s; batch 8 does not
    (0.344)."""

    steps: int = 180
    batch_size: int = 12
    seq_len: int = 128
    learning_rate: float = 1e-3
    label_smoothing: float = 0.1
    prompted_fraction: float = 0.9
    precision: str = "auto"

    def __post_init__(self) -> None:
        _positive(self, "batch_size", "seq_len")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"`precision` must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.prompted_fraction <= 1.0:
            raise ValueError(f"`prompted_fraction` must be in [0, 1], got {self.prompted_fraction}")
        if self.steps < 0:
            raise ValueError(f"`steps` must be >= 0, got {self.steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate}")


@dataclass(frozen=True)
class EncoderRecipe:
    """ResNet with basic blocks (random initialisation): stem width ``embedding_size``, one stage per entry of
    ``hidden_sizes`` / ``depths``; 224 px input gives a 7x7 grid of ``hidden_sizes[-1]``-d patch features."""

    num_channels: int = 3
    embedding_size: int = 32
    hidden_sizes: tuple[int, ...] = (32, 64, 128, 256)
    depths: tuple[int, ...] = (1, 1, 1, 1)

    def __post_init__(self) -> None:
        _positive(self, "num_channels", "embedding_size")
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        object.__setattr__(self, "depths", tuple(self.depths))
        if not self.hidden_sizes or len(self.hidden_sizes) != len(self.depths):
            raise ValueError(
                f"`hidden_sizes` {self.hidden_sizes} and `depths` {self.depths} must be non-empty and "
                "of the same length"
            )
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in (*self.hidden_sizes, *self.depths)):
            raise ValueError(
                f"`hidden_sizes` and `depths` must hold positive ints, got {self.hidden_sizes}, {self.depths}"
            )


@dataclass(frozen=True)
class BuiltinRecipe:
    """Everything that determines the built-in tokenizer, decoder and encoder; ``seed`` drives every random draw."""

    seed: int = 0
    corpus: CorpusRecipe = field(default_factory=CorpusRecipe)
    tokenizer: TokenizerRecipe = field(default_factory=TokenizerRecipe)
    decoder: DecoderRecipe = field(default_factory=DecoderRecipe)
    warmup: WarmupRecipe = field(default_factory=WarmupRecipe)
    encoder: EncoderRecipe = field(default_factory=EncoderRecipe)

    def resolved(self) -> BuiltinRecipe:
        """This recipe with ``warmup.precision: auto`` replaced by what this machine uses (``bf16`` or ``fp32``)."""
        if self.warmup.precision != "auto":
            return self
        from fedmrg.training.precision import cpu_has_native_bf16

        precision = "bf16" if cpu_has_native_bf16() else "fp32"
        return dataclasses.replace(self, warmup=dataclasses.replace(self.warmup, precision=precision))

    def to_dict(self) -> dict:
        """JSON-ready nested dict (tuples as lists); ``from_dict(BuiltinRecipe, d)`` rebuilds the recipe."""
        return _listify(dataclasses.asdict(self))


def tiny_recipe(seed: int = 0) -> BuiltinRecipe:
    """A recipe that builds in about two seconds, for tests of code that needs the built-in models."""
    return BuiltinRecipe(
        seed=seed,
        corpus=CorpusRecipe(n_reports=300, n_heldout=60),
        tokenizer=TokenizerRecipe(vocab_size=400, use_lexicon=False),
        decoder=DecoderRecipe(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=512),
        warmup=WarmupRecipe(
            steps=100, batch_size=8, seq_len=64, learning_rate=3e-3, prompted_fraction=0.0, precision="fp32"
        ),
        encoder=EncoderRecipe(embedding_size=8, hidden_sizes=(8, 16), depths=(1, 1)),
    )


def _listify(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _listify(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_listify(v) for v in obj]
    return obj
