"""Built-in default models, built locally and cached, so FedMRG runs with nothing downloaded.

:func:`ensure_builtin_models` returns three Hugging Face directories, each loadable with ``from_pretrained(path)``:

- ``tokenizer_dir``: byte-level BPE report tokenizer (``AutoTokenizer``; bos ``<s>``, eos ``</s>``, pad, unk);
- ``decoder_dir``: a small Llama causal LM (``AutoModelForCausalLM``), pretrained on a style-neutral report corpus
  (:mod:`fedmrg.report.builtin_corpus` says why neutral) so the demo runs the same frozen-LM + LoRA path as
  Llama-2-7B; the tokenizer is saved here too, as in any Hugging Face model repository;
- ``encoder_dir``: a small ResNet with basic blocks (``ResNetModel``), **randomly initialised** (no images are
  available to pretrain it on; FedMRG trains the encoder federatedly).

The build is deterministic from the recipe's seed (same recipe, libraries and CPU thread count: identical weights)
and lands in ``<cache>/builtin/<hash>/``, where the hash covers the recipe, the corpus text, the lexicon, the builder
version and the versions of torch / transformers / tokenizers, so any change builds a new directory. Concurrent
processes (the FLARE simulator starts its clients together) serialise on a file lock; one builds into a temporary
directory, writes the manifest ``builtin.json`` last and renames the directory into place atomically; the others wait,
then use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fedmrg.errors import FedMRGError
from fedmrg.report.builtin_recipe import BuiltinRecipe, tiny_recipe

__all__ = [
    "MANIFEST",
    "BuiltinModels",
    "BuiltinRecipe",
    "build_builtin_models",
    "ensure_builtin_models",
    "recipe_hash",
    "save_tiny_random_llama",
    "tiny_recipe",
]

#: Bump when the builder's code changes what it produces for the same recipe.
BUILDER_VERSION = 3  # 3: warm-up on one report per row, prompt not scored
#: Manifest written last into a finished build; its presence marks the build complete.
MANIFEST = "builtin.json"
_LIBRARIES = ("torch", "transformers", "tokenizers")
#: Files a complete build holds besides the manifest.
_BUILD_FILES = (
    "tokenizer/tokenizer.json",
    "decoder/config.json",
    "decoder/model.safetensors",
    "decoder/tokenizer.json",
    "encoder/config.json",
    "encoder/model.safetensors",
)


@dataclass(frozen=True)
class BuiltinModels:
    """Paths of a finished build. ``built`` is True when this call built it (False: found in the cache)."""

    tokenizer_dir: Path
    decoder_dir: Path
    encoder_dir: Path
    root: Path
    built: bool = False

    def manifest(self) -> dict[str, Any]:
        """The build's ``builtin.json``: recipe, hash, library versions and measured statistics."""
        return json.loads((self.root / MANIFEST).read_text(encoding="utf-8"))


def save_tiny_random_llama(*args: Any, **kwargs: Any) -> Path:
    """See :func:`fedmrg.report.builtin_lm.save_tiny_random_llama` (imported lazily: it needs torch)."""
    from fedmrg.report.builtin_lm import save_tiny_random_llama as _save

    return _save(*args, **kwargs)


def lexicon_lines() -> list[str]:
    """The packaged radiology word list (``radiology_lexicon.txt``), one entry per non-comment line."""
    text = resources.files("fedmrg.report").joinpath("radiology_lexicon.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def warmup_corpus(recipe: BuiltinRecipe, corpus: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
    """``(train, heldout)`` report texts: ``corpus`` if given, else the recipe's neutral corpus.

    The last ``recipe.corpus.n_heldout`` texts (for a user ``corpus``: the last 10 %, at least one) are held out, minus
    verbatim copies of training texts. Blank texts are skipped with a warning giving their count; ValueError for a
    non-string item or fewer than 2 non-blank texts.
    """
    if corpus is None:
        from fedmrg.report.builtin_corpus import neutral_reports

        texts = neutral_reports(recipe.corpus.n_reports, seed=recipe.seed)
        n_heldout = recipe.corpus.n_heldout
    else:
        texts = list(corpus)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise ValueError(f"warm-up corpus item {bad} is not a str (got {type(texts[bad]).__name__})")
        n_all = len(texts)
        texts = [t for t in texts if t.strip()]
        if len(texts) < n_all:
            warnings.warn(f"warm-up corpus: skipped {n_all - len(texts)} blank text(s) of {n_all}", stacklevel=2)
        if len(texts) < 2:
            raise ValueError(f"the warm-up corpus needs at least 2 non-empty texts, got {len(texts)}")
        n_heldout = max(1, len(texts) // 10)
    train, tail = texts[:-n_heldout], texts[-n_heldout:]
    seen = set(train)
    return train, [t for t in tail if t not in seen]


def recipe_hash(recipe: BuiltinRecipe, train: Sequence[str], heldout: Sequence[str]) -> str:
    """16 hex digits of SHA-256 over recipe, corpus, lexicon, builder version and library major.minor versions."""
    h = hashlib.sha256()
    payload = {"recipe": recipe.to_dict(), "builder": BUILDER_VERSION, "versions": _library_versions()}
    h.update(json.dumps(payload, sort_keys=True).encode())
    for part in (train, heldout, lexicon_lines() if recipe.tokenizer.use_lexicon else []):
        h.update(b"\x00section\x00")
        for text in part:
            h.update(text.encode("utf-8") + b"\x00")
    return h.hexdigest()[:16]


def ensure_builtin_models(
    cache_root: str | Path | None = None,
    *,
    recipe: BuiltinRecipe | None = None,
    corpus: Iterable[str] | None = None,
    progress: bool = True,
    lock_timeout: float = 3600.0,
) -> BuiltinModels:
    """Return the built-in models for ``recipe``, building them first if the cache lacks them.

    Args:
        cache_root: cache directory; the build goes to ``<cache_root>/builtin/<hash>/``. Defaults to
            :func:`fedmrg.paths.cache_dir` (``$FEDMRG_CACHE`` or ``~/.cache/fedmrg``).
        recipe: sizes, steps and seed; defaults to ``BuiltinRecipe()`` (5.4 M parameters; ~1 min on 2 idle cores,
            15 min measured on a 2-core machine at load average 6).
        corpus: warm-up texts instead of the built-in neutral corpus (hashed into the cache key).
        progress: print build stages and a warm-up progress bar to stderr.
        lock_timeout: seconds to wait for another process's build before raising FedMRGError.

    Safe under concurrency: processes serialise on ``<cache_root>/builtin/<hash>.lock``; a build becomes visible
    only complete (atomic rename of a temporary directory whose manifest was written last).
    """
    from filelock import FileLock, Timeout  # installed with huggingface_hub (a transformers dependency)

    from fedmrg.paths import cache_dir

    recipe = (recipe or BuiltinRecipe()).resolved()
    train, heldout = warmup_corpus(recipe, corpus)
    key = recipe_hash(recipe, train, heldout)
    base = Path(cache_root) if cache_root is not None else cache_dir()
    builtin = base / "builtin"
    final = builtin / key
    if _is_complete(final, key):
        return _models(final, built=False)
    builtin.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(builtin / f"{key}.lock"))
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            _say(progress, f"waiting for another process to finish building {final} (lock {lock.lock_file})")
            lock.acquire(timeout=lock_timeout)
    except Timeout:
        raise FedMRGError(
            f"timed out after {lock_timeout:.0f} s waiting for another process to build {final} (it holds "
            f"{lock.lock_file}); let it finish or stop it, or raise `lock_timeout`"
        ) from None
    try:
        if _is_complete(final, key):
            return _models(final, built=False)
        for stale in builtin.glob(f".tmp-{key}-*"):  # left by a crashed build; we hold the lock, so nobody uses it
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            warnings.warn(
                f"{final} is incomplete (no valid {MANIFEST} or a model file missing); rebuilding it", stacklevel=2
            )
            shutil.rmtree(final)
        tmp = builtin / f".tmp-{key}-{os.getpid()}"
        try:
            build_builtin_models(tmp, recipe, train=train, heldout=heldout, recipe_key=key, progress=progress)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _say(progress, f"built-in models ready in {final}")
        return _models(final, built=True)
    finally:
        lock.release()


def initial_decoder(tokenizer, recipe: BuiltinRecipe):
    """The recipe's Llama decoder before warm-up (random weights from ``recipe.seed``), sized for ``tokenizer``."""
    from fedmrg.report import builtin_lm as lm  # torch + transformers: imported on use

    d = recipe.decoder
    return lm.make_llama(
        tokenizer,
        hidden_size=d.hidden_size,
        num_layers=d.num_layers,
        num_heads=d.num_heads,
        intermediate_size=d.intermediate_size,
        max_positions=d.max_positions,
        seed=recipe.seed,
    )


def build_builtin_models(
    out_dir: str | Path,
    recipe: BuiltinRecipe,
    *,
    train: Sequence[str],
    heldout: Sequence[str],
    recipe_key: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Build tokenizer, decoder and encoder into ``out_dir`` (which must not exist) and write the manifest last.

    No locking or caching here (see :func:`ensure_builtin_models`). Returns the manifest: recipe, hash, versions and
    statistics (parameter counts, held-out LM loss in nats/token and perplexity before and after the warm-up, tokens
    per whitespace word on the held-out texts, seconds per stage).
    """
    recipe = recipe.resolved()
    with _hf_progress_bars(progress):
        return _build(Path(out_dir), recipe, train=train, heldout=heldout, recipe_key=recipe_key, progress=progress)


def _build(
    out: Path, recipe: BuiltinRecipe, *, train: Sequence[str], heldout: Sequence[str], recipe_key: str, progress: bool
) -> dict[str, Any]:
    from fedmrg.report import builtin_lm as lm
    from fedmrg.report.diagnosis_prompt import PROMPT_VOCABULARY, labels_word_prompts

    out.mkdir(parents=True)
    t_start = time.perf_counter()
    stats: dict[str, Any] = {"n_train_reports": len(train), "n_heldout_reports": len(heldout)}

    _say(progress, f"training the report tokenizer on {len(train)} reports")
    tok_texts = list(train)
    if recipe.tokenizer.use_lexicon:  # each lexicon line min_frequency times, so its words' merges are eligible
        tok_texts += lexicon_lines() * recipe.tokenizer.min_frequency
    # the diagnosis prompt's words, as often as a frequent corpus word: FedMRG writes them in every prompt
    tok_texts += [PROMPT_VOCABULARY] * max(1, len(train) // 10)
    tokenizer = lm.train_report_tokenizer(
        tok_texts,
        vocab_size=recipe.tokenizer.vocab_size,
        min_frequency=recipe.tokenizer.min_frequency,
        model_max_length=recipe.decoder.max_positions,
    )
    lm.save_tokenizer(tokenizer, out / "tokenizer")
    stats["vocab_size"] = len(tokenizer)
    if heldout:
        n_tokens = sum(map(len, tokenizer(list(heldout), add_special_tokens=False)["input_ids"]))
        stats["heldout_tokens_per_word"] = n_tokens / sum(len(t.split()) for t in heldout)

    model = initial_decoder(tokenizer, recipe)
    stats["decoder_parameters"] = sum(p.numel() for p in model.parameters())
    if heldout:
        stats["heldout_loss_before"] = lm.lm_loss(model, tokenizer, heldout)
    w = recipe.warmup
    if w.steps:
        _say(
            progress,
            f"warming up the decoder ({stats['decoder_parameters'] / 1e6:.2f} M parameters) for {w.steps} steps",
        )
        t0 = time.perf_counter()
        prompts = labels_word_prompts(tokenizer, train, fraction=w.prompted_fraction, seed=recipe.seed)
        stats["warmup_prompted_reports"] = sum(p is not None for p in prompts)
        losses = lm.warm_up_lm(
            model,
            tokenizer,
            train,
            steps=w.steps,
            batch_size=w.batch_size,
            seq_len=w.seq_len,
            learning_rate=w.learning_rate,
            seed=recipe.seed,
            label_smoothing=w.label_smoothing,
            prompts=prompts,
            bf16=w.precision == "bf16",
            progress=progress,
        )
        stats["warmup_seconds"] = time.perf_counter() - t0
        stats["warmup_final_train_loss"] = losses[-1]
    if heldout:
        stats["heldout_loss_after"] = lm.lm_loss(model, tokenizer, heldout)
        stats["heldout_perplexity_before"] = lm.perplexity(stats["heldout_loss_before"])
        stats["heldout_perplexity_after"] = lm.perplexity(stats["heldout_loss_after"])
    if heldout and w.steps and w.prompted_fraction > 0:  # how much the findings list tells the decoder
        own = labels_word_prompts(tokenizer, heldout, fraction=1.0, seed=recipe.seed)
        shifted = own[1:] + own[:1]  # each report prompted with the next one's findings
        stats["heldout_prompted_loss_after"] = lm.lm_loss(model, tokenizer, heldout, prompts=own)
        stats["heldout_wrong_prompt_loss_after"] = lm.lm_loss(model, tokenizer, heldout, prompts=shifted)
    model.save_pretrained(str(out / "decoder"))
    lm.save_tokenizer(tokenizer, out / "decoder")

    e = recipe.encoder
    encoder = lm.make_resnet_encoder(
        num_channels=e.num_channels,
        embedding_size=e.embedding_size,
        hidden_sizes=e.hidden_sizes,
        depths=e.depths,
        seed=recipe.seed,
    )
    encoder.save_pretrained(str(out / "encoder"))
    stats["encoder_parameters"] = sum(p.numel() for p in encoder.parameters())
    stats["build_seconds"] = time.perf_counter() - t_start

    manifest = {
        "recipe_hash": recipe_key,
        "builder_version": BUILDER_VERSION,
        "recipe": recipe.to_dict(),
        "versions": _library_versions(),
        "encoder_initialisation": "random",
        "stats": stats,
    }
    tmp = out / f"{MANIFEST}.partial"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)
    return manifest


@contextmanager
def _hf_progress_bars(enabled: bool) -> Iterator[None]:
    """Hide transformers' own bars ("Writing model shards") while building quietly; restore the setting after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()


def _library_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: ".".join(version(name).split(".")[:2]) for name in _LIBRARIES}


def _is_complete(root: Path, key: str) -> bool:
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return manifest.get("recipe_hash") == key and all((root / f).is_file() for f in _BUILD_FILES)


def _models(root: Path, *, built: bool) -> BuiltinModels:
    return BuiltinModels(root / "tokenizer", root / "decoder", root / "encoder", root=root, built=built)


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[fedmrg builtin] {message}", file=sys.stderr, flush=True)
