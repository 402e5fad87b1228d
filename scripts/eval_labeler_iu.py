"""Score the rule-based labeler against IU X-ray's MeSH indexing; prints a markdown table.

    python scripts/eval_labeler_iu.py [--iu-dir DIR] [--text findings|findings+impression] [--uncertain-as-positive]

Text per report: ``findings``, or ``impression`` where findings is empty (the default, what report generation
targets), or both joined. Positive = label 1 (uncertain and blank count as not positive; with
``--uncertain-as-positive`` -1 counts as positive too). Reports indexed
``No Indexing`` and reports with no text are left out and counted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fedmrg.errors import DataError
from fedmrg.labels import label_reports
from fedmrg.labels.mesh_eval import NOT_INDEXED, markdown_table, parse_mesh, score_against_mesh
from fedmrg.labels.report_csv import NO_TEXT, read_report_csv
from fedmrg.paths import shared_data_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iu-dir", type=Path, default=shared_data_dir() / "iu_xray", help="holds indiana_reports.csv")
    parser.add_argument(
        "--text",
        choices=("findings", "findings+impression"),
        default="findings+impression",
        help="text given to the labeler; MeSH indexers read the whole report, so the default is the whole report",
    )
    parser.add_argument("--uncertain-as-positive", action="store_true", help="count label -1 as positive too")
    args = parser.parse_args(argv)

    try:
        rows = read_report_csv(
            args.iu_dir / "indiana_reports.csv", id_column="uid", text_column="findings", fallback_column="impression"
        )
    except DataError as e:
        print(f"eval_labeler_iu: error: {e} (pass --iu-dir)", file=sys.stderr)
        return 1
    if not rows or "MeSH" not in rows[0].fields:
        print(
            f"eval_labeler_iu: error: {args.iu_dir / 'indiana_reports.csv'} has no rows or no 'MeSH' column",
            file=sys.stderr,
        )
        return 1
    not_indexed = [r for r in rows if any(h == NOT_INDEXED.lower() for h, _ in parse_mesh(r.fields["MeSH"]))]
    no_text = [r for r in rows if r.source == NO_TEXT]
    left_out = {r.id for r in not_indexed} | {r.id for r in no_text}
    kept = [r for r in rows if r.id not in left_out]
    if args.text == "findings":
        texts = [r.text for r in kept]
    else:
        texts = [f"{r.fields['findings']}\n{r.fields['impression']}" for r in kept]

    t0 = time.perf_counter()
    labels = label_reports(texts)
    seconds = time.perf_counter() - t0
    scores = score_against_mesh(
        labels, [r.fields["MeSH"] for r in kept], uncertain_as_positive=args.uncertain_as_positive
    )

    print(
        f"IU X-ray: {len(rows)} reports; scored {len(kept)} (left out: {len(not_indexed)} '{NOT_INDEXED}', "
        f"{len(no_text)} with neither findings nor impression)"
    )
    print(
        f"text: {args.text if args.text != 'findings' else 'findings (impression where findings is empty)'}; "
        f"positive = label {'1 or -1' if args.uncertain_as_positive else '1'} vs. any listed MeSH term present"
    )
    print(
        f"labeling time: {seconds:.2f} s for {len(texts)} reports ({1000 * seconds / max(len(texts), 1):.2f} ms each)"
    )
    print()
    print(markdown_table(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
