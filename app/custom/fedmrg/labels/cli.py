"""``fedmrg label``: label the reports of a CSV file with the rule-based CheXpert labeler.

Output: one row per input row, in input order: the id, the 14 observations (``1`` / ``0`` / ``-1`` / empty) and
``source``, the column the text came from. A report empty in both the text and the fallback column is kept as an
all-blank row with ``source`` = ``none`` and counted in the summary on stderr, so no row is dropped and the output
joins back to the input one to one.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

MAX_IDS_SHOWN = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "label",
        help="label reports with the 14 CheXpert observations (rule-based)",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("reports", help="CSV file with one report per row")
    p.add_argument("--id-column", required=True, help="column with the report id (copied to the output)")
    p.add_argument("--text-column", required=True, help="column with the report text, e.g. findings")
    p.add_argument("--fallback-column", help="column used where the text column is empty, e.g. impression")
    p.add_argument("--out", required=True, help="output CSV (parent folders are created)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_label)


def run_label(args: argparse.Namespace) -> int:
    from fedmrg.labels.labeler import label_reports
    from fedmrg.labels.report_csv import NO_TEXT, read_report_csv, write_label_csv

    rows = read_report_csv(
        args.reports, id_column=args.id_column, text_column=args.text_column, fallback_column=args.fallback_column
    )
    labels = label_reports([r.text for r in rows], progress=not args.no_progress)
    write_label_csv(args.out, rows, labels, id_column=args.id_column)

    sources = Counter(r.source for r in rows)
    parts = [f"{sources[args.text_column]} from {args.text_column!r}"]
    if args.fallback_column:
        parts.append(f"{sources[args.fallback_column]} from fallback {args.fallback_column!r}")
    print(f"labeled {len(rows)} reports from {args.reports} ({', '.join(parts)}) -> {args.out}", file=sys.stderr)
    empty = [r.id for r in rows if r.source == NO_TEXT]
    if empty:
        columns = " and ".join(repr(c) for c in (args.text_column, args.fallback_column) if c)
        shown = ", ".join(empty[:MAX_IDS_SHOWN]) + (", ..." if len(empty) > MAX_IDS_SHOWN else "")
        print(
            f"warning: {len(empty)} reports empty in {columns}, written as all-blank rows with source={NO_TEXT!r}: "
            f"{args.id_column} {shown}",
            file=sys.stderr,
        )
    return 0
