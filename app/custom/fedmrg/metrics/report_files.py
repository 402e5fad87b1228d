"""Read ``{id: report text}`` from a JSON Lines file of predictions or references, with file:line errors."""

from __future__ import annotations

import json
from pathlib import Path

from fedmrg.errors import DataError


def read_report_texts(
    path: str | Path, *, id_key: str = "id", text_key: str = "report", allow_empty: bool = False
) -> dict[str, str]:
    """``{id: text}`` from a JSONL file with one object per line (blank lines are ignored).

    Args:
        path: the ``.jsonl`` file, e.g. lines like ``{"id": "CXR1_1_IM-0001", "report": "The heart is normal."}``.
        id_key: key holding the report id (a string, or an integer that is turned into a string). Defaults to "id".
        text_key: key holding the report text (a string). Defaults to "report".
        allow_empty: accept texts that are empty or only whitespace. Defaults to False.

    Raises:
        DataError: the file is missing or empty, a line is not a JSON object, a key is missing, a value has the
            wrong type, a text is empty, or an id repeats; each message names ``file:line``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            for key in (id_key, text_key):
                if key not in obj:
                    raise DataError(f"{where}: missing key {key!r} (keys present: {sorted(obj)})")
            rid, text = obj[id_key], obj[text_key]
            if isinstance(rid, bool) or not isinstance(rid, (str, int)):
                raise DataError(f"{where}: {id_key!r} must be a string or an integer, got {type(rid).__name__}")
            rid = str(rid)
            if not isinstance(text, str):
                raise DataError(f"{where}: {text_key!r} must be a string, got {type(text).__name__}")
            if not allow_empty and not text.strip():
                raise DataError(f"{where}: empty {text_key!r} for id {rid!r}")
            if rid in first_line:
                raise DataError(f"{where}: duplicate id {rid!r} (first on line {first_line[rid]})")
            first_line[rid] = lineno
            out[rid] = text
    if not out:
        raise DataError(f"{path}: no records (the file is empty)")
    return out
