"""Helpers every reader shares: CSV loading with column checks, skip bookkeeping, image-file checks.

Readers never drop an item silently: each one either becomes a :class:`~fedmrg.data.records.StudyRecord` or a
:class:`~fedmrg.data.readers.base.Skip` with a reason, and ``strict=True`` turns the first skip into a
:class:`~fedmrg.errors.DataError`.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from fedmrg.data.readers.base import ReadResult, Skip
from fedmrg.data.records import ImageRef
from fedmrg.errors import DataError

#: What a reader does with a listed image file that does not exist (or fails ``verify_images``):
#: ``"skip"`` counts the image as a skip and drops a study left with no image (also counted);
#: ``"keep"`` keeps the study with the images that exist (possibly none) and lists the missing ones in
#: ``meta["missing_images"]`` (``[{"path", "view"}]``) so a renderer can draw them later.
MissingImages = Literal["skip", "keep"]
MISSING_IMAGES: tuple[str, ...] = ("skip", "keep")

# CSV fields in real report exports exceed the csv module's 128 KiB default; 16 MiB is a safe ceiling.
csv.field_size_limit(16 * 1024 * 1024)


class SkipLog:
    """Collects skips for a :class:`ReadResult`; with ``strict=True`` the first skip raises instead.

    Args:
        source: reader name, used in error messages.
        strict: raise :class:`DataError` at the first item that would be skipped.
    """

    def __init__(self, source: str, *, strict: bool = False) -> None:
        self.source = source
        self.strict = strict
        self.skipped: list[Skip] = []

    def skip(self, item: str | Path, reason: str) -> None:
        if self.strict:
            raise DataError(f"{self.source}: {item}: {reason} (strict=True; pass strict=False to skip and count)")
        self.skipped.append(Skip(str(item), reason))

    def result(self, records: list) -> ReadResult:
        return ReadResult(records=records, skipped=self.skipped)


def check_options(source: str, options: dict[str, Any], allowed: Iterable[str]) -> None:
    """Reject unknown keyword options so a typo (``image_dir`` for ``image_root``) is not silently ignored."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DataError(f"{source}: unknown option(s) {unknown}; valid options: {sorted(allowed)}")


def check_missing_images(source: str, value: str) -> None:
    if value not in MISSING_IMAGES:
        raise DataError(f"{source}: `missing_images` must be one of {MISSING_IMAGES}, got {value!r}")


def absolute(path: str | Path) -> Path:
    """``path`` with ``~`` expanded, made absolute against the working directory (symlinks kept).

    Readers build image paths from it, so the records they return name files that exist wherever they are used.
    """
    return Path(os.path.abspath(Path(path).expanduser()))


def require_dir(path: str | Path, what: str) -> Path:
    """``path`` as an absolute directory (:func:`absolute`), else DataError naming it."""
    p = absolute(path)
    if not p.is_dir():
        raise DataError(f"{p}: {what} not found (expected a directory)")
    return p


def require_file(path: str | Path, what: str) -> Path:
    """``path`` as an absolute file path (:func:`absolute`), else DataError naming it."""
    p = absolute(path)
    if not p.is_file():
        raise DataError(f"{p}: {what} not found")
    return p


def find_file(directory: Path, names: Sequence[str], what: str) -> Path:
    """The first of ``names`` that exists in ``directory`` (e.g. ``x.csv`` or ``x.csv.gz``), else DataError."""
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"{directory}: {what} not found (looked for {', '.join(names)})")


def read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Read a CSV (``.csv`` or ``.csv.gz``, UTF-8, optional BOM) into dicts, checking its header first.

    See :func:`read_csv_table`, which also returns the header.
    """
    return read_csv_table(path, required)[1]


def read_csv_table(path: Path, required: Sequence[str]) -> tuple[list[str], list[dict[str, str]]]:
    """``(header, rows)`` of a CSV (``.csv`` or ``.csv.gz``, UTF-8, optional BOM), checking the header first.

    Stdlib ``csv`` rather than pandas: pandas is not a FedMRG dependency and the readers need only rows of strings.

    Raises:
        DataError: unreadable file, empty file, or missing columns (names the file, the missing and the available
            columns).
    """
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read CSV: {e}") from e
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames
    if not header:
        raise DataError(f"{path}: CSV file is empty (no header row)")
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; available columns: {list(header)}")
    try:
        return list(header), [{k: (v or "") for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV near line {reader.line_num}: {e}") from e


def collect_images(
    candidates: Sequence[tuple[Path, str]],
    *,
    log: SkipLog,
    missing_images: MissingImages,
    verify_images: bool,
) -> tuple[list[ImageRef], list[dict[str, str]]]:
    """Check a study's image files.

    Args:
        candidates: ``(path, view)`` for each image the source lists.
        log: where missing images are counted when ``missing_images="skip"`` (raises there when strict).
        missing_images: see :data:`MissingImages`; ``"keep"`` never raises, even with ``strict=True``.
        verify_images: also open each file's header (:func:`fedmrg.data.images.check_image`); without it only
            existence is checked, which is what makes reading 300 k MIMIC images take seconds, not hours.

    Returns:
        ``(present, missing)``: image references for files that pass, and ``{"path", "view"}`` for the others
        (always empty when ``missing_images="skip"``, because those are counted as skips).
    """
    present: list[ImageRef] = []
    missing: list[dict[str, str]] = []
    for path, view in candidates:
        reason = _image_problem(path, verify_images)
        if reason is None:
            present.append(ImageRef(str(path), view))
        elif missing_images == "keep":
            missing.append({"path": str(path), "view": view, "reason": reason})
        else:
            log.skip(path, reason)
    return present, missing


def _image_problem(path: Path, verify: bool) -> str | None:
    if not path.is_file():
        return "image not found"
    if verify:
        from fedmrg.data.images import check_image

        try:
            check_image(path)
        except DataError as e:
            return f"unreadable image: {e}"
    return None


def clean_text(value: str | None) -> str:
    """Strip a CSV / JSON text field; ``None`` and the strings ``nan`` / ``none`` (pandas exports) become ``""``."""
    s = (value or "").strip()
    return "" if s.lower() in {"nan", "none"} else s
