"""Built-in models: tokenizer, tiny Llama checkpoint, cached deterministic builds, warm-up effect, concurrency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedmrg.config import from_dict, load_config
from fedmrg.report import builtin_lm as lm
from fedmrg.report.builtin import (
    MANIFEST,
    BuiltinModels,
    ensure_builtin_models,
    initial_decoder,
    recipe_hash,
    save_tiny_random_llama,
    warmup_corpus,
)
from fedmrg.report.builtin_corpus import neutral_reports
from fedmrg.report.builtin_recipe import BuiltinRecipe, DecoderRecipe, EncoderRecipe, WarmupRecipe, tiny_recipe

# Strings outside the warm-up corpus: upper case, extra whitespace, digits, punctuation, accents, a symbol.
ODD_TEXTS = [
    "  The HEART size is   normal.\nNo pleural effusion or pneumothorax.  ",
    "Pneumoperitoneum under the right hemidiaphragm, 3.5 cm; XXXX-XXXX noted (compare 2019).",
    "Café-au-lait ✓ opacity — ünïcode résumé",
    "",
]


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> BuiltinModels:
    return ensure_builtin_models(tmp_path_factory.mktemp("cache"), recipe=tiny_recipe(), progress=False)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here may reach the Hugging Face Hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


# --- tokenizer ---------------------------------------------------------------------------------------------------


def test_tokenizer_round_trips_normalised_text_and_adds_bos(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = lm.train_report_tokenizer(neutral_reports(200, seed=1), vocab_size=350)
    lm.save_tokenizer(tok, tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(loaded) == len(tok) == 350
    specials = [loaded.unk_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id]
    assert None not in specials and len(set(specials)) == 4
    for text in ODD_TEXTS:
        ids = loaded(text)["input_ids"]
        assert ids[0] == loaded.bos_token_id and loaded.eos_token_id not in ids  # Llama convention: bos only
        assert loaded.unk_token_id not in ids  # byte-level: nothing is unknown
        assert ids == tok(text)["input_ids"]
        expected = " ".join(text.lower().split())
        assert lm.normalize_report_text(text) == expected  # NFKC leaves these characters alone
        assert loaded.decode(ids, skip_special_tokens=True) == expected


def test_tokenizer_compresses_report_text() -> None:
    train, heldout = neutral_reports(1000, seed=2), neutral_reports(100, seed=3)
    tok = lm.train_report_tokenizer(train, vocab_size=1024)
    n_tokens = sum(map(len, tok(heldout, add_special_tokens=False)["input_ids"]))
    n_chars = sum(len(t) for t in heldout)
    n_words = sum(len(t.split()) for t in heldout)
    assert n_tokens < 1.2 * n_words  # most report words are a single token
    assert n_tokens < n_chars / 4


def test_tokenizer_rejects_vocab_below_byte_alphabet() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        lm.train_report_tokenizer(["a b"], vocab_size=100)


# --- tiny random checkpoint ----------------------------------------------------------------------------------------


def test_tiny_random_llama_round_trips_through_auto_classes(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    path = save_tiny_random_llama(tmp_path / "llama", vocab_size=300, hidden=32, layers=2)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert isinstance(model, LlamaForCausalLM)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.vocab_size) == (32, 2, len(tok))
    assert (model.config.bos_token_id, model.config.pad_token_id) == (tok.bos_token_id, tok.pad_token_id)
    saved = load_file(path / "model.safetensors")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    batch = tok(["the heart size is normal .", "no pneumothorax ."], return_tensors="pt", padding=True)
    logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()


# --- cached builds ---------------------------------------------------------------------------------------------------


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def test_tiny_build_is_complete_and_loads(tiny_build: BuiltinModels) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, ResNetModel

    assert tiny_build.built
    manifest = tiny_build.manifest()
    assert manifest["recipe_hash"] == tiny_build.root.name
    assert from_dict(BuiltinRecipe, manifest["recipe"]) == tiny_recipe()
    tok = AutoTokenizer.from_pretrained(tiny_build.tokenizer_dir)
    assert (
        AutoTokenizer.from_pretrained(tiny_build.decoder_dir)("no effusion .")["input_ids"]
        == tok("no effusion .")["input_ids"]
    )
    decoder = AutoModelForCausalLM.from_pretrained(tiny_build.decoder_dir)
    assert decoder.config.vocab_size == len(tok) == manifest["stats"]["vocab_size"]
    assert sum(p.numel() for p in decoder.parameters()) == manifest["stats"]["decoder_parameters"]
    stats = manifest["stats"]  # the tiny recipe has no prompted warm-up: perplexities yes, prompt losses no
    assert stats["heldout_perplexity_after"] == pytest.approx(np.exp(stats["heldout_loss_after"]))
    assert "heldout_prompted_loss_after" not in stats
    encoder = ResNetModel.from_pretrained(tiny_build.encoder_dir)
    out = encoder(torch.rand(2, 3, 64, 64))
    sizes = tiny_recipe().encoder.hidden_sizes
    stride = 4 * 2 ** (len(sizes) - 1)  # stem /4, then /2 per stage after the first
    assert out.last_hidden_state.shape == (2, sizes[-1], 64 // stride, 64 // stride)
    leftovers = sorted(p.name for p in tiny_build.root.parent.iterdir())
    assert leftovers == [tiny_build.root.name, f"{tiny_build.root.name}.lock"]


def test_same_recipe_is_reused_and_rebuild_is_identical(tiny_build: BuiltinModels, tmp_path: Path) -> None:
    again = ensure_builtin_models(tiny_build.root.parents[1], recipe=tiny_recipe(), progress=False)
    assert not again.built and again.root == tiny_build.root
    fresh = ensure_builtin_models(tmp_path, recipe=tiny_recipe(), progress=False)
    assert fresh.built and fresh.root.name == tiny_build.root.name
    for sub in ("decoder", "encoder"):
        a, b = _tensors(tiny_build.root / sub), _tensors(fresh.root / sub)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), sub
    assert (tiny_build.tokenizer_dir / "tokenizer.json").read_bytes() == (
        fresh.tokenizer_dir / "tokenizer.json"
    ).read_bytes()


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"decoder": replace(tiny_recipe().decoder, hidden_size=48)},
        {"warmup": replace(tiny_recipe().warmup, steps=99)},
    ],
    ids=["seed", "decoder-size", "warmup-steps"],
)
def test_recipe_change_builds_a_new_directory(tiny_build: BuiltinModels, change: dict) -> None:
    recipe = replace(tiny_recipe(), **change)
    other = ensure_builtin_models(tiny_build.root.parents[1], recipe=recipe, progress=False)
    assert other.built and other.root != tiny_build.root and other.root.parent == tiny_build.root.parent
    assert (tiny_build.root / MANIFEST).is_file()  # the first build is untouched
    assert from_dict(BuiltinRecipe, other.manifest()["recipe"]) == recipe
    a, b = _tensors(tiny_build.decoder_dir), _tensors(other.decoder_dir)
    assert any(a[k].shape != b[k].shape or not torch.equal(a[k], b[k]) for k in a)


def test_user_corpus_changes_the_hash() -> None:
    recipe = tiny_recipe()
    base = recipe_hash(recipe, *warmup_corpus(recipe))
    corpus = neutral_reports(50, seed=7)
    assert recipe_hash(recipe, *warmup_corpus(recipe, corpus)) != base
    train, heldout = warmup_corpus(recipe, corpus)
    assert len(train) == 45 and set(heldout) <= set(corpus[45:]) and not set(heldout) & set(train)
    with pytest.warns(UserWarning, match="skipped 1 blank"), pytest.raises(ValueError, match="at least 2"):
        warmup_corpus(recipe, ["only one", "  "])
    with pytest.raises(ValueError, match=r"item 1 is not a str \(got int\)"):
        warmup_corpus(recipe, ["a report", 3])


def _site_style_reports(n_per_style: int, n_styles: int = 5) -> list[str]:
    """Reports in the demo sites' styles, from another generator than the warm-up corpus."""
    from fedmrg.data import synthetic

    texts = []
    for style in range(n_styles):
        rng = np.random.default_rng(style)
        for i in range(n_per_style):
            present = synthetic.sample_findings(rng)
            layout = synthetic.sample_layout(present, 1000 * style + i)
            report = synthetic.write_report(present, layout, synthetic.report_style(style), rng)
            texts.append(f"{report.findings} {report.impression}")
    return texts


@pytest.mark.parametrize("heldout_kind", ["neutral-unseen-seed", "synthetic-site-styles"])
def test_warmup_lowers_heldout_lm_loss(tiny_build: BuiltinModels, heldout_kind: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = tiny_recipe()
    train, _ = warmup_corpus(recipe)
    if heldout_kind == "neutral-unseen-seed":
        heldout = [t for t in neutral_reports(200, seed=12345) if t not in set(train)]
        assert len(heldout) > 50
    else:
        heldout = _site_style_reports(20)
    tok = AutoTokenizer.from_pretrained(tiny_build.tokenizer_dir)
    random_init = initial_decoder(tok, recipe)
    warmed = AutoModelForCausalLM.from_pretrained(tiny_build.decoder_dir)
    before, after = lm.lm_loss(random_init, tok, heldout), lm.lm_loss(warmed, tok, heldout)
    assert before > 0.9 * np.log(len(tok))  # random init ~ uniform over the vocabulary
    assert after < before - 1.0, (before, after)  # measured: 6.0 -> 2.7 (neutral), 6.0 -> 4.2 (site styles)
    stats = tiny_build.manifest()["stats"]
    assert stats["heldout_loss_after"] < stats["heldout_loss_before"] - 1.0


@pytest.mark.parametrize("removed", [MANIFEST, "decoder/model.safetensors"])
def test_incomplete_directory_is_rebuilt(tmp_path: Path, removed: str) -> None:
    first = ensure_builtin_models(tmp_path, recipe=tiny_recipe(), progress=False)
    (first.root / removed).unlink()  # as if someone deleted part of the cache
    stale = first.root.parent / f".tmp-{first.root.name}-999999"  # as if a build had crashed
    stale.mkdir()
    with pytest.warns(UserWarning, match="is incomplete"):
        again = ensure_builtin_models(tmp_path, recipe=tiny_recipe(), progress=False)
    assert again.built and (again.root / removed).is_file() and not stale.exists()


_WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    cache, me, other = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    from transformers import AutoModelForCausalLM, AutoTokenizer, ResNetModel
    from fedmrg.report.builtin import ensure_builtin_models
    from fedmrg.report.builtin_recipe import tiny_recipe
    me.touch()
    while not other.exists():  # start together, after both paid the import time
        time.sleep(0.01)
    m = ensure_builtin_models(cache, recipe=tiny_recipe(), progress=False)
    tok = AutoTokenizer.from_pretrained(m.tokenizer_dir)
    loss = AutoModelForCausalLM.from_pretrained(m.decoder_dir)(**tok("no effusion .", return_tensors="pt"),
                                                               labels=tok("no effusion .", return_tensors="pt").input_ids).loss
    ResNetModel.from_pretrained(m.encoder_dir)
    print(json.dumps({"built": m.built, "root": str(m.root), "loss": loss.item()}))
    """
)


@pytest.mark.slow  # two fresh interpreters importing torch + transformers: ~8 s idle, minutes on a loaded machine
def test_concurrent_processes_make_one_valid_build(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cache = tmp_path / "cache"
    flags = [tmp_path / "ready-0", tmp_path / "ready-1"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(cache), str(flags[i]), str(flags[1 - i])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["built"] for r in results) == [False, True]
    assert results[0]["root"] == results[1]["root"]
    assert results[0]["loss"] == pytest.approx(results[1]["loss"])
    root = Path(results[0]["root"])
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name, f"{root.name}.lock"]
    assert json.loads((root / MANIFEST).read_text())["recipe_hash"] == root.name


# --- recipe ----------------------------------------------------------------------------------------------------------


def test_recipe_loads_from_yaml_and_validates(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "seed: 3\ndecoder: {hidden_size: 64, num_heads: 4}\nencoder: {hidden_sizes: [8, 16], depths: [1, 2]}\n"
    )
    recipe = load_config(path, BuiltinRecipe)
    assert recipe == BuiltinRecipe(
        seed=3,
        decoder=DecoderRecipe(hidden_size=64, num_heads=4),
        encoder=EncoderRecipe(hidden_sizes=(8, 16), depths=(1, 2)),
    )
    assert from_dict(BuiltinRecipe, json.loads(json.dumps(recipe.to_dict()))) == recipe
    with pytest.raises(ValueError, match="divisible"):
        DecoderRecipe(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="same length"):
        EncoderRecipe(hidden_sizes=(8, 16), depths=(1,))
    with pytest.raises(ValueError, match="steps"):
        WarmupRecipe(steps=-1)


@pytest.mark.parametrize("native", [True, False])
def test_auto_warmup_precision_is_resolved_before_hashing(monkeypatch, native: bool) -> None:
    from fedmrg.training import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    auto = BuiltinRecipe()
    assert auto.warmup.precision == "auto"
    resolved = auto.resolved()
    assert resolved.warmup.precision == ("bf16" if native else "fp32")
    assert resolved.resolved() == resolved and tiny_recipe().resolved() == tiny_recipe()  # explicit stays
    train, heldout = warmup_corpus(tiny_recipe())
    fp32, bf16 = (replace(tiny_recipe(), warmup=replace(tiny_recipe().warmup, precision=p)) for p in ("fp32", "bf16"))
    assert recipe_hash(fp32, train, heldout) != recipe_hash(bf16, train, heldout)
    with pytest.raises(ValueError, match="precision"):
        WarmupRecipe(precision="fp16")


def test_bf16_warmup_lowers_the_loss_and_keeps_float32_weights() -> None:
    recipe = tiny_recipe()
    train, _ = warmup_corpus(recipe)
    tok = lm.train_report_tokenizer(train, vocab_size=recipe.tokenizer.vocab_size)
    model = initial_decoder(tok, recipe)
    losses = lm.warm_up_lm(model, tok, train, steps=40, batch_size=8, seq_len=64, learning_rate=3e-3, seed=0,
                           bf16=True, progress=False)  # fmt: skip
    assert np.mean(losses[-5:]) < losses[0] - 1.0, (losses[0], losses[-5:])
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_warmup_rows_score_the_report_not_the_prompt() -> None:
    recipe = tiny_recipe()
    train, _ = warmup_corpus(recipe)
    tok = lm.train_report_tokenizer(train, vocab_size=recipe.tokenizer.vocab_size)
    texts = train[:3]
    prompts = [[5, 6, 7], None, [8] * 40]
    rows, unscored = lm.report_rows(tok, texts, max_len=30, prompts=prompts)
    report = tok(texts[0], add_special_tokens=False)["input_ids"]
    assert rows[0][:4] == [5, 6, 7, tok.bos_token_id] and rows[0][4:] == (report + [tok.eos_token_id])[:26]
    assert unscored == [4, 1, 41] and len(rows[2]) == 30  # the third prompt fills its row: nothing scored
    ids, mask, labels = lm._batch(rows, unscored, tok.pad_token_id)
    assert (labels[0, :4] == -100).all() and labels[0, 4:].tolist() == rows[0][4:]
    assert labels[1, 1 : len(rows[1])].tolist() == rows[1][1:] and (labels[2] == -100).all()
    assert mask.sum(1).tolist() == [len(r) for r in rows] and (ids[mask == 0] == tok.pad_token_id).all()
    model = initial_decoder(tok, recipe)
    with pytest.raises(ValueError, match="no report fits"):
        lm.warm_up_lm(model, tok, texts[2:], steps=1, batch_size=1, seq_len=30, learning_rate=1e-3, seed=0,
                      prompts=prompts[2:], progress=False)  # fmt: skip


def test_prompted_warmup_teaches_the_decoder_to_read_the_prompt(tmp_path: Path) -> None:
    """With every report prompted by its findings, the report is likelier after its own prompt than another's."""
    recipe = replace(
        tiny_recipe(),
        tokenizer=replace(tiny_recipe().tokenizer, vocab_size=800, use_lexicon=True),
        warmup=replace(tiny_recipe().warmup, steps=400, seq_len=160, prompted_fraction=1.0),
    )
    stats = ensure_builtin_models(tmp_path, recipe=recipe, progress=False).manifest()["stats"]
    own, wrong = stats["heldout_prompted_loss_after"], stats["heldout_wrong_prompt_loss_after"]
    assert np.isfinite(stats["warmup_final_train_loss"])
    assert own < wrong - 0.2, (own, wrong)  # measured 0.51 vs 0.92 nats/token; 3.27 vs 3.27 unprompted
