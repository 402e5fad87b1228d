"""Reader for MIMIC-CXR-JPG in its official PhysioNet layout, with reports from the MIMIC-CXR reports archive.

::

    <root>/mimic-cxr-2.0.0-split.csv(.gz)       dicom_id, study_id, subject_id, split (train / validate / test)
    <root>/mimic-cxr-2.0.0-metadata.csv(.gz)    dicom_id, ..., ViewPosition          (optional: views UNKNOWN)
    <root>/mimic-cxr-2.0.0-chexpert.csv(.gz)    subject_id, study_id, 14 observations (optional: labels None)
    <root>/files/p10/p10000032/s50414267/<dicom_id>.jpg
    <reports>/files/p10/p10000032/s50414267.txt  (folder, or mimic-cxr-reports.zip)

One record per study (all its images); ``split`` ``validate`` becomes ``val``; patient id is ``subject_id``.
Findings and impression come from the report's ``FINDINGS:`` / ``IMPRESSION:`` sections
(:func:`fedmrg.data.readers.sections.findings_and_impression`), whitespace collapsed, otherwise as written
(``___`` de-identification marks included). ``ViewPosition`` PA / AP / LATERAL / LL map to the same views,
``XTABLE LATERAL`` to LATERAL, anything else (``AP AXIAL``, ``LAO``, empty, ...) to UNKNOWN. CheXpert labels
(1.0 / 0.0 / -1.0 / blank) become ``labels`` with values 1 / 0 / -1 / None.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from fedmrg.data.readers.base import ReadResult
from fedmrg.data.readers.common import (
    MissingImages,
    SkipLog,
    check_missing_images,
    collect_images,
    find_file,
    read_csv,
    require_dir,
)
from fedmrg.data.readers.sections import findings_and_impression
from fedmrg.data.records import StudyRecord
from fedmrg.errors import DataError
from fedmrg.observations import OBSERVATIONS

NAME = "mimic-cxr"
PREFIX = "mimic-cxr-2.0.0"
_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}
_VIEWS = {"PA": "PA", "AP": "AP", "LATERAL": "LATERAL", "LL": "LL", "XTABLE LATERAL": "LATERAL"}
_LABEL_VALUES = {"": None, "1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": -1, "-1": -1}


def read(
    path: str | Path,
    *,
    reports: str | Path | None = None,
    labels_csv: str | Path | None = None,
    missing_images: MissingImages = "skip",
    verify_images: bool = False,
    strict: bool = False,
) -> ReadResult:
    """Read a MIMIC-CXR-JPG tree.

    Args:
        path: MIMIC-CXR-JPG root (holding ``files/`` and the ``mimic-cxr-2.0.0-*.csv(.gz)`` files).
        reports: folder holding ``files/pXX/pNNN/sNNN.txt`` or the ``mimic-cxr-reports.zip`` archive (read
            without extracting). Default: ``<path>/mimic-cxr-reports.zip`` when present, else ``path`` itself.
        labels_csv: CheXpert label CSV; default ``<path>/mimic-cxr-2.0.0-chexpert.csv(.gz)`` when present.
        missing_images: ``"skip"`` or ``"keep"`` (see :data:`fedmrg.data.readers.common.MissingImages`).
        verify_images: open each image's header, not only check that the file exists.
        strict: raise :class:`DataError` at the first item that would be skipped.
    """
    check_missing_images(NAME, missing_images)
    root = require_dir(path, "MIMIC-CXR-JPG root")
    split_csv = find_file(root, [f"{PREFIX}-split.csv", f"{PREFIX}-split.csv.gz"], "MIMIC-CXR split CSV")
    rows = read_csv(split_csv, ["dicom_id", "study_id", "subject_id", "split"])
    views = _read_views(root)
    labels = _read_labels(root, labels_csv)
    log = SkipLog(NAME, strict=strict)
    studies: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        studies.setdefault(row["study_id"].strip(), []).append(row)
    with _ReportStore(root, reports) as store:
        records = _build(root, studies, store, views, labels, log, missing_images, verify_images)
    return log.result(records)


def _build(
    root: Path,
    studies: dict[str, list[dict[str, str]]],
    store: _ReportStore,
    views: dict[str, str],
    labels: dict[tuple[str, str], dict[str, int | None]],
    log: SkipLog,
    missing_images: MissingImages,
    verify_images: bool,
) -> list[StudyRecord]:
    records: list[StudyRecord] = []
    for study, study_rows in studies.items():
        subject = study_rows[0]["subject_id"].strip()
        where = f"p{subject}/s{study}"
        text = store.get(subject, study)
        if text is None:
            log.skip(where, "report not found")
            continue
        findings, impression = findings_and_impression(text)
        if not findings and not impression:
            log.skip(where, "empty findings and impression")
            continue
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        candidates = [
            (folder / f"{r['dicom_id'].strip()}.jpg", _VIEWS.get(views.get(r["dicom_id"].strip(), ""), "UNKNOWN"))
            for r in study_rows
        ]
        images, missing = collect_images(
            candidates, log=log, missing_images=missing_images, verify_images=verify_images
        )
        if not images and missing_images == "skip":
            log.skip(where, "no usable images")
            continue
        split = study_rows[0]["split"].strip().lower()
        records.append(
            StudyRecord(
                study_id=study,
                patient_id=subject,
                images=images,
                findings=findings,
                impression=impression,
                source=NAME,
                split=_SPLITS.get(split, split or None),
                labels=labels.get((subject, study)),
                meta={"missing_images": missing} if missing else {},
            )
        )
    return records


def _read_views(root: Path) -> dict[str, str]:
    names = [f"{PREFIX}-metadata.csv", f"{PREFIX}-metadata.csv.gz"]
    path = next((root / n for n in names if (root / n).is_file()), None)
    if path is None:
        return {}
    return {
        r["dicom_id"].strip(): r["ViewPosition"].strip().upper() for r in read_csv(path, ["dicom_id", "ViewPosition"])
    }


def _read_labels(root: Path, labels_csv: str | Path | None) -> dict[tuple[str, str], dict[str, int | None]]:
    if labels_csv is None:
        names = [f"{PREFIX}-chexpert.csv", f"{PREFIX}-chexpert.csv.gz"]
        path = next((root / n for n in names if (root / n).is_file()), None)
        if path is None:
            return {}
    else:
        path = Path(labels_csv).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: CheXpert label CSV not found")
    out: dict[tuple[str, str], dict[str, int | None]] = {}
    for line, row in enumerate(read_csv(path, ["subject_id", "study_id", *OBSERVATIONS]), start=2):
        try:
            out[(row["subject_id"].strip(), row["study_id"].strip())] = {
                obs: _LABEL_VALUES[row[obs].strip()] for obs in OBSERVATIONS
            }
        except KeyError as e:
            raise DataError(f"{path}:{line}: label value {e} is not 1.0, 0.0, -1.0 or blank") from None
    return out


class _ReportStore:
    """Report texts by (subject, study), from an extracted folder or straight from the zip archive."""

    def __init__(self, root: Path, reports: str | Path | None) -> None:
        if reports is None:
            zipped = root / "mimic-cxr-reports.zip"
            location = zipped if zipped.is_file() else root
        else:
            location = Path(reports).expanduser()
            if not location.exists():
                raise DataError(f"{location}: MIMIC-CXR reports folder or zip not found")
        self.location = location
        self.zip: zipfile.ZipFile | None = None
        self.names: dict[str, str] = {}
        if location.is_file():
            try:
                self.zip = zipfile.ZipFile(location)
            except (OSError, zipfile.BadZipFile) as e:
                raise DataError(f"{location}: cannot open reports archive: {e}") from e
            # Archive members look like [mimic-cxr-reports/]files/p10/p10000032/s50414267.txt.
            self.names = {"/".join(n.split("/")[-2:]): n for n in self.zip.namelist() if n.endswith(".txt")}

    def __enter__(self) -> _ReportStore:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.zip is not None:
            self.zip.close()

    def get(self, subject: str, study: str) -> str | None:
        rel = f"p{subject}/s{study}.txt"
        try:
            if self.zip is not None:
                name = self.names.get(rel)
                return None if name is None else self.zip.read(name).decode("utf-8", errors="replace")
            p = self.location / "files" / f"p{subject[:2]}" / rel
            return p.read_text(encoding="utf-8", errors="replace") if p.is_file() else None
        except (OSError, zipfile.BadZipFile) as e:
            raise DataError(f"{self.location}: cannot read report {rel}: {e}") from e
