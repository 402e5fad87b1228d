"""Build (or find) the built-in models and print what was measured in this run.

    python scripts/build_builtin_models.py                    # into the FedMRG cache, as the product does
    python scripts/build_builtin_models.py --fresh            # into a new temp dir: measures a full build
    python scripts/build_builtin_models.py --recipe r.yaml    # another recipe (keys of BuiltinRecipe)

Prints the manifest's statistics (build time, parameter counts, vocabulary, held-out perplexity of the neutral corpus
before / after the warm-up), then tokens per word and perplexity, random initialisation vs warmed-up decoder, on the
synthetic site styles of ``fedmrg.data.synthetic`` (text the warm-up never saw) and, when found (``--iu-reports`` or
the shared data folder), on real IU X-ray reports. Real reports are only read, never written anywhere.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path


def _iu_texts(path: Path, limit: int) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [" ".join(f"{r.get('findings') or ''} {r.get('impression') or ''}".split()) for r in rows]
    return [t for t in texts if t][:limit]


def _site_style_texts(n_styles: int, per_style: int, seed: int = 1234) -> list[str] | None:
    """Reports of the demo's synthetic site styles 0..n_styles-1 (None when fedmrg.data.synthetic is absent)."""
    try:
        import numpy as np

        from fedmrg.data.synthetic import report_style, sample_findings, sample_layout, write_report
    except ImportError:
        return None
    texts = []
    for style in range(n_styles):
        rng = np.random.default_rng(np.random.SeedSequence([seed, style]))
        for i in range(per_style):
            present = sample_findings(rng)
            report = write_report(present, sample_layout(present, seed * 100_003 + i), report_style(style), rng)
            texts.append(f"{report.findings} {report.impression}".strip())
    return texts


def _score(name: str, texts: list[str], tok, random_init, warmed) -> None:
    from fedmrg.report import builtin_lm as lm

    n_tokens = sum(map(len, tok(texts, add_special_tokens=False)["input_ids"]))
    n_words = sum(len(t.split()) for t in texts)
    before, after = lm.lm_loss(random_init, tok, texts), lm.lm_loss(warmed, tok, texts)
    print(
        f"{name} ({len(texts)} reports): {n_tokens / n_words:.3f} tokens/word; perplexity random init "
        f"{lm.perplexity(before):.1f} -> warmed up {lm.perplexity(after):.1f} (loss {before:.3f} -> {after:.3f} nats/token)"
    )


def main() -> int:
    from fedmrg.paths import shared_data_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=None, help="cache root (default: the FedMRG cache)")
    ap.add_argument("--fresh", action="store_true", help="build into a new temporary cache root")
    ap.add_argument("--recipe", type=Path, default=None, help="YAML recipe (default: BuiltinRecipe())")
    ap.add_argument("--iu-reports", type=Path, default=shared_data_dir() / "iu_xray" / "indiana_reports.csv")
    ap.add_argument("--iu-limit", type=int, default=500, help="IU reports scored (default 500)")
    ap.add_argument("--styles", type=int, default=5, help="synthetic site styles scored, 100 reports each (default 5)")
    args = ap.parse_args()

    import torch

    from fedmrg.config import load_config
    from fedmrg.report.builtin import ensure_builtin_models, initial_decoder
    from fedmrg.report.builtin_recipe import BuiltinRecipe

    recipe = load_config(args.recipe, BuiltinRecipe) if args.recipe else BuiltinRecipe()
    cache = Path(tempfile.mkdtemp(prefix="fedmrg-builtin-")) if args.fresh else args.cache
    print(f"torch threads: {torch.get_num_threads()}, cpus: {os.cpu_count()}, load average: {os.getloadavg()}")
    t0 = time.perf_counter()
    models = ensure_builtin_models(cache, recipe=recipe)
    wall = time.perf_counter() - t0
    manifest = models.manifest()
    print(f"built-in models at {models.root} ({'built now' if models.built else 'found in cache'}, {wall:.1f} s)")
    print(json.dumps(manifest["stats"], indent=2, sort_keys=True))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models.tokenizer_dir)
    random_init = initial_decoder(tok, recipe)
    warmed = AutoModelForCausalLM.from_pretrained(models.decoder_dir)
    site_texts = _site_style_texts(args.styles, 100)
    if site_texts:
        _score(f"synthetic site styles 0..{args.styles - 1}", site_texts, tok, random_init, warmed)
    if args.iu_reports.is_file():
        _score(
            f"IU X-ray reports from {args.iu_reports}",
            _iu_texts(args.iu_reports, args.iu_limit),
            tok,
            random_init,
            warmed,
        )
    else:
        print(f"IU X-ray reports not found at {args.iu_reports}: real-report figures skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
