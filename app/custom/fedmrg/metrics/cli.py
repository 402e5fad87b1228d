"""``fedmrg metrics``: score generated reports against references and write a JSON results file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedmrg.metrics.normalize import DEFAULT_NORMALIZE, NORMALIZE_NAMES

_TEXT_ROWS = (
    ("BLEU_1", "BLEU-1"),
    ("BLEU_2", "BLEU-2"),
    ("BLEU_3", "BLEU-3"),
    ("BLEU_4", "BLEU-4"),
    ("METEOR", "METEOR"),
    ("ROUGE_L", "ROUGE-L"),
    ("CIDEr", "CIDEr"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "metrics",
        help="score generated reports (BLEU, ROUGE-L, CIDEr, METEOR, clinical efficacy)",
        description="Score generated reports against references: BLEU-1..4 (corpus), ROUGE-L, CIDEr and, when "
        "`java` is on PATH, METEOR (pycocoevalcap scorers), plus clinical-efficacy P/R/F1 from the rule-based "
        "CheXpert labeler. Inputs are JSON Lines files with one {id, report} object per line; both must hold "
        "the same ids. Prints a table and writes every number with its conventions to --out.",
    )
    p.add_argument("--predictions", required=True, type=Path, help="JSONL of generated reports")
    p.add_argument("--references", required=True, type=Path, help="JSONL of reference reports")
    p.add_argument("--out", type=Path, help="write the results (with conventions) to this JSON file")
    p.add_argument("--id-key", default="id", help="key of the report id in both files (default: id)")
    p.add_argument("--text-key", default="report", help="key of the report text (default: report)")
    p.add_argument(
        "--reference-text-key", help="key of the text in the references file, when it differs from --text-key"
    )
    p.add_argument(
        "--meteor",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="require (--meteor) or skip (--no-meteor) METEOR; default: compute it when `java` is on PATH",
    )
    p.add_argument(
        "--normalize",
        choices=NORMALIZE_NAMES,
        default=DEFAULT_NORMALIZE,
        help="text normalisation before scoring and labelling (default: %(default)s, R2Gen's cleaner); "
        "'basic' keeps list numbers and turns punctuation into spaces, 'none' uses the texts as given",
    )
    p.add_argument("--no-clinical", action="store_true", help="skip clinical efficacy (no labeling)")
    p.add_argument("--allow-empty-predictions", action="store_true", help="score empty predictions instead of failing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedmrg.metrics.evaluate import evaluate_reports
    from fedmrg.metrics.report_files import read_report_texts

    preds = read_report_texts(
        args.predictions, id_key=args.id_key, text_key=args.text_key, allow_empty=args.allow_empty_predictions
    )
    refs = read_report_texts(args.references, id_key=args.id_key, text_key=args.reference_text_key or args.text_key)
    result = evaluate_reports(
        preds,
        refs,
        meteor=args.meteor,
        clinical=not args.no_clinical,
        normalize=args.normalize,
        allow_empty_predictions=args.allow_empty_predictions,
    )
    result["inputs"] = {"predictions": str(args.predictions), "references": str(args.references)}
    print(format_table(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def format_table(result: dict) -> str:
    """A plain-text table of the scores in ``evaluate_reports``' result."""
    text = result["text"]
    lines = [f"{result['n_reports']} reports ({text['n_empty_predictions']} empty predictions)", ""]
    lines.append(f"{'metric':<10}{'value':>8}")
    for key, label in _TEXT_ROWS:
        value = text[key]
        shown = f"{value:>8.4f}" if value is not None else f"{'n/a':>8}  ({text['notes'].get(key, 'skipped')})"
        lines.append(f"{label:<10}{shown}")
    ce = result.get("clinical")
    if ce is not None:
        c = ce["counts"]
        lines += ["", f"clinical efficacy (positive = 1; tp {c['tp']}, fp {c['fp']}, fn {c['fn']})"]
        lines.append(f"{'average':<15}{'P':>8}{'R':>8}{'F1':>8}")
        for key in ("example_based", "micro", "macro"):
            v = ce[key]
            lines.append(f"{key:<15}{v['precision']:>8.4f}{v['recall']:>8.4f}{v['f1']:>8.4f}")
    norm = result["conventions"]["text"]["text_normalization"].split(":", 1)[0]
    lines += ["", f"text normalisation: {norm} (details under `conventions` in the JSON)"]
    return "\n".join(lines)
