"""Reader for a folder of DICOM files (searched recursively), as a hospital PACS export gives them.

- Every file is tried as DICOM except hidden files, ``DICOMDIR`` and report sidecars (``.txt``, ``.csv``,
  ``.json``, ``.md``); a file that is not DICOM, is damaged, lacks ``StudyInstanceUID`` / ``PatientID`` or pixel
  data (e.g. a structured report), or holds several frames is a counted skip. Only headers are read (pixel data
  deferred) unless ``verify_images=True``, which decodes each image with :func:`fedmrg.data.images.load_image`.
- Files are grouped into studies by ``StudyInstanceUID``; the patient is ``PatientID``, the view
  ``ViewPosition`` (PA / AP / LATERAL / LL, else UNKNOWN). Identifiers are kept as found: records stay on site.
- Reports, first match wins:

  1. ``reports_csv``: a CSV keyed by ``StudyInstanceUID`` (or, when that column is absent, ``AccessionNumber``)
     with ``findings`` and/or ``impression`` columns, or a ``report`` column of full text split into sections;
  2. a sidecar ``<StudyInstanceUID>.txt`` anywhere under the folder;
  3. ``report.txt`` in the folder holding the study's files, when all DICOM files there belong to that study.

  Full-text reports are split with :func:`fedmrg.data.readers.sections.findings_and_impression` (a text without
  section headers is all findings). A study with no report, or with empty findings and impression, is a counted
  skip unless ``require_report=False``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from fedmrg.data.readers.base import ReadResult
from fedmrg.data.readers.common import SkipLog, clean_text, read_csv_table, require_dir
from fedmrg.data.readers.sections import findings_and_impression
from fedmrg.data.records import ImageRef, StudyRecord
from fedmrg.errors import DataError

NAME = "dicom-dir"
_NOT_DICOM_SUFFIXES = frozenset({".txt", ".csv", ".json", ".md"})
_VIEWS = {"PA": "PA", "AP": "AP", "LATERAL": "LATERAL", "LL": "LL", "RL": "LATERAL"}


def read(
    path: str | Path,
    *,
    reports_csv: str | Path | None = None,
    require_report: bool = True,
    verify_images: bool = False,
    strict: bool = False,
) -> ReadResult:
    """Read every DICOM study under a folder.

    Args:
        path: folder searched recursively.
        reports_csv: optional report CSV (see the module docstring for its columns).
        require_report: skip studies without report text (default); False keeps them with empty sections.
        verify_images: decode every image (slow) instead of checking headers only.
        strict: raise :class:`DataError` at the first item that would be skipped.
    """
    root = require_dir(path, "DICOM folder")
    log = SkipLog(NAME, strict=strict)
    headers = _scan(root, log, verify_images)
    csv_reports = _read_reports_csv(Path(reports_csv).expanduser()) if reports_csv is not None else None

    by_study: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    studies_in_folder: dict[Path, set[str]] = defaultdict(set)
    for file, ds in headers:
        by_study[str(ds.StudyInstanceUID)].append((file, ds))
        studies_in_folder[file.parent].add(str(ds.StudyInstanceUID))
    sidecars = {p.stem: p for p in sorted(root.rglob("*.txt"))}

    records: list[StudyRecord] = []
    for uid, files in by_study.items():
        first = files[0][1]
        accession = str(first.get("AccessionNumber", ""))
        text, origin = _report_for(uid, accession, files, csv_reports, sidecars, studies_in_folder)
        findings, impression = text if text is not None else ("", "")
        if require_report and text is None:
            log.skip(f"study {uid}", "no report found (reports_csv, <StudyInstanceUID>.txt or report.txt)")
            continue
        if require_report and not findings and not impression:
            log.skip(f"study {uid}", f"empty findings and impression in {origin}")
            continue
        records.append(
            StudyRecord(
                study_id=uid,
                patient_id=str(first.PatientID),
                images=[ImageRef(str(f), _view(ds)) for f, ds in files],
                findings=findings,
                impression=impression,
                source=NAME,
                meta={"report_from": origin} if origin else {},
            )
        )
    return log.result(records)


def _view(ds: Any) -> str:
    return _VIEWS.get(str(ds.get("ViewPosition", "")).strip().upper(), "UNKNOWN")


def _scan(root: Path, log: SkipLog, verify_images: bool) -> list[tuple[Path, Any]]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    from fedmrg.data.images import dicom_problem

    out: list[tuple[Path, Any]] = []
    seen_sop: set[str] = set()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        if file.name.startswith(".") or file.name == "DICOMDIR" or file.suffix.lower() in _NOT_DICOM_SUFFIXES:
            continue
        try:
            ds = pydicom.dcmread(file, defer_size="1 KB")
        except InvalidDicomError:
            log.skip(file, "not a DICOM file")
            continue
        except Exception as e:  # damaged header: OSError, EOFError, ValueError, struct.error
            log.skip(file, f"unreadable DICOM: {e}")
            continue
        missing = [tag for tag in ("StudyInstanceUID", "PatientID") if not str(ds.get(tag, "")).strip()]
        sop = str(ds.get("SOPInstanceUID", ""))
        if missing:
            log.skip(file, f"missing {' and '.join(missing)}")
        elif problem := dicom_problem(ds):
            log.skip(file, problem)
        elif sop and sop in seen_sop:
            log.skip(file, f"duplicate SOPInstanceUID {sop}")
        elif verify_images and (problem := _decode_problem(file)):
            log.skip(file, problem)
        else:
            seen_sop.add(sop)
            out.append((file, ds))
    return out


def _decode_problem(file: Path) -> str | None:
    from fedmrg.data.images import load_image

    try:
        load_image(file)
    except DataError as e:
        return f"unreadable image: {e}"
    return None


def _read_reports_csv(path: Path) -> dict[str, tuple[str, str]]:
    if not path.is_file():
        raise DataError(f"{path}: reports CSV not found")
    header, rows = read_csv_table(path, [])
    key = "StudyInstanceUID" if "StudyInstanceUID" in header else "AccessionNumber"
    if key not in header:
        raise DataError(
            f"{path}: missing column 'StudyInstanceUID' (or 'AccessionNumber'); available columns: {header}"
        )
    if not set(header) & {"findings", "impression", "report"}:
        raise DataError(
            f"{path}: missing column(s) 'findings' and/or 'impression' (or 'report'); available columns: {header}"
        )
    out: dict[str, tuple[str, str]] = {}
    for row in rows:
        if "findings" in row or "impression" in row:
            sections = (clean_text(row.get("findings")), clean_text(row.get("impression")))
        else:
            sections = findings_and_impression(row["report"])
        out[f"{key}={row[key].strip()}"] = sections
    return out


def _report_for(
    uid: str,
    accession: str,
    files: list[tuple[Path, Any]],
    csv_reports: dict[str, tuple[str, str]] | None,
    sidecars: dict[str, Path],
    studies_in_folder: dict[Path, set[str]],
) -> tuple[tuple[str, str] | None, str]:
    """``((findings, impression) or None, where it came from)``."""
    if csv_reports is not None:
        for key in (f"StudyInstanceUID={uid}", f"AccessionNumber={accession}"):
            if key in csv_reports:
                return csv_reports[key], "reports_csv"
    candidates = [sidecars[uid]] if uid in sidecars else []
    candidates += [
        f.parent / "report.txt"
        for f, _ in files[:1]
        if (f.parent / "report.txt").is_file() and studies_in_folder[f.parent] == {uid}
    ]
    if not candidates:
        return None, ""
    try:
        text = candidates[0].read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DataError(f"{candidates[0]}: cannot read report: {e}") from e
    return findings_and_impression(text), candidates[0].name
