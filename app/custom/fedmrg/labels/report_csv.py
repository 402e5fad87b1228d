"""Read report texts from a CSV file and write label CSVs (CheXpert's 1 / 0 / -1 / empty convention)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedmrg.errors import DataError
from fedmrg.observations import OBSERVATIONS

#: Value of the ``source`` column when both text columns are empty.
NO_TEXT = "none"


@dataclass(frozen=True)
class ReportRow:
    """One report read from a CSV.

    Args:
        id: value of the id column.
        text: the report text ("" when empty in every text column).
        source: name of the column the text came from, or :data:`NO_TEXT`.
        fields: the whole CSV row, for callers that need other columns (e.g. IU's ``MeSH``).
    """

    id: str
    text: str
    source: str
    fields: dict[str, str]


def read_report_csv(
    path: str | Path, *, id_column: str, text_column: str, fallback_column: str | None = None
) -> list[ReportRow]:
    """Read reports from ``path``: text from ``text_column``, or ``fallback_column`` where that is empty.

    Raises:
        DataError: the file is missing or unreadable, or a named column is absent (the message names the file, the
            column and the columns it has).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"reports CSV not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            for role, name in (("id", id_column), ("text", text_column), ("fallback", fallback_column)):
                if name is not None and name not in columns:
                    raise DataError(
                        f"{path}: no {role} column {name!r}; the file has columns {', '.join(map(repr, columns))}"
                    )
            rows = []
            for row in reader:
                text, source = (row.get(text_column) or "").strip(), text_column
                if not text and fallback_column:
                    text, source = (row.get(fallback_column) or "").strip(), fallback_column
                rows.append(ReportRow(row[id_column], text, source if text else NO_TEXT, row))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable UTF-8 CSV file ({e})") from e
    return rows


def format_label(value: int | None) -> str:
    """CheXpert CSV cell: ``"1"``, ``"0"``, ``"-1"`` or ``""`` for blank."""
    return "" if value is None else str(value)


def write_label_csv(
    path: str | Path, rows: Sequence[ReportRow], labels: Sequence[dict[str, int | None]], *, id_column: str
) -> None:
    """Write ``id_column, <14 observations>, source``: one row per report, in input order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([id_column, *OBSERVATIONS, "source"])
        for row, lab in zip(rows, labels, strict=True):
            writer.writerow([row.id, *(format_label(lab[o]) for o in OBSERVATIONS), row.source])
