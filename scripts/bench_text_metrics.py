"""Time each report metric on N pairs of real IU X-ray reports (findings of report i against another report's text).

Usage: ``python scripts/bench_text_metrics.py [--n 500] [--csv PATH/indiana_reports.csv] [--meteor]``.
Prints seconds per stage, measured in this one run; no report text is printed or written.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from fedmrg.paths import shared_data_dir


def iu_pairs(csv_path: Path, n: int) -> tuple[dict[str, str], dict[str, str]]:
    with csv_path.open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["findings"].strip()]
    if len(rows) < n + 1:
        raise SystemExit(f"{csv_path}: need {n + 1} reports with findings, found {len(rows)}")
    refs = {rows[i]["uid"]: rows[i]["findings"] for i in range(n)}
    preds = {
        rows[i]["uid"]: (rows[i]["impression"] if i % 2 and rows[i]["impression"].strip() else rows[i + 1]["findings"])
        for i in range(n)
    }
    return preds, refs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--csv", type=Path, default=shared_data_dir() / "iu_xray" / "indiana_reports.csv")
    ap.add_argument("--meteor", action="store_true", help="also time METEOR (needs java)")
    args = ap.parse_args()
    if not args.csv.is_file():
        raise SystemExit(f"{args.csv}: not found (pass --csv)")

    from fedmrg.labels import label_reports
    from fedmrg.metrics import evaluate_reports

    preds, refs = iu_pairs(args.csv, args.n)
    t0 = time.perf_counter()
    result = evaluate_reports(preds, refs, meteor=args.meteor, labeler=label_reports)
    total = time.perf_counter() - t0
    words = sum(len(t.split()) for t in refs.values()) / len(refs)
    print(f"{args.n} pairs, mean reference length {words:.1f} words")
    for stage, seconds in result["timings_s"].items():
        print(f"  {stage:<16} {seconds:8.3f} s")
    print(f"  {'total':<16} {total:8.3f} s")
    t = result["text"]
    print(
        "  scores: "
        + ", ".join(f"{k} {t[k]:.4f}" for k in ("BLEU_1", "BLEU_4", "ROUGE_L", "CIDEr") if t[k] is not None)
    )
    if t["METEOR"] is not None:
        print(f"  METEOR {t['METEOR']:.4f}")
    ce = result["clinical"]
    print(f"  CE micro F1 {ce['micro']['f1']:.4f}, example-based F1 {ce['example_based']['f1']:.4f}")


if __name__ == "__main__":
    main()
