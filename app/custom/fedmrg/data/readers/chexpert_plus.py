"""Reader for CheXpert-Plus (``df_chexpert_plus_240401.csv`` and its image folder).

The CSV has one row per image: ``path_to_image`` (``train/patient00001/study1/view1_frontal.jpg``),
``section_findings``, ``section_impression`` and, when present, ``frontal_lateral`` (Frontal / Lateral),
``ap_pa`` (AP / PA / LL / ...), ``split`` (train / valid) and ``deid_patient_id``.

- Rows are grouped into studies by the folder of ``path_to_image`` (``train/patient00001/study1``, the study id).
- Patient id: the ``patientNNNNN`` folder in the path, else ``deid_patient_id``.
- Split: the ``split`` column (``valid`` becomes ``val``), else the path's first folder.
- View: Lateral -> LATERAL (LL when ``ap_pa`` says LL); Frontal -> AP / PA from ``ap_pa``, else FRONTAL; without
  those columns, ``frontal`` / ``lateral`` in the file name.
- Findings and impression are taken from the study's first row; a later row of the same study whose sections
  differ is a counted skip.
- The released images are PNGs although ``path_to_image`` ends in ``.jpg``: pass ``image_ext=".png"``.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from fedmrg.data.readers.base import ReadResult
from fedmrg.data.readers.common import (
    MissingImages,
    SkipLog,
    check_missing_images,
    clean_text,
    collect_images,
    read_csv,
    require_dir,
    require_file,
)
from fedmrg.data.records import StudyRecord

NAME = "chexpert-plus"
_PATIENT = re.compile(r"^patient\d+$")
_SPLITS = {"train": "train", "valid": "val", "validate": "val", "val": "val", "test": "test"}


def read(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    image_ext: str | None = None,
    missing_images: MissingImages = "skip",
    verify_images: bool = False,
    strict: bool = False,
) -> ReadResult:
    """Read a CheXpert-Plus report CSV.

    Args:
        path: the CSV (``df_chexpert_plus_240401.csv``).
        image_root: folder that ``path_to_image`` is relative to (default: the CSV's folder).
        image_ext: replace each image's extension (``".png"`` for the PNG release); None keeps it.
        missing_images: ``"skip"`` or ``"keep"`` (see :data:`fedmrg.data.readers.common.MissingImages`).
        verify_images: open each image's header, not only check that the file exists.
        strict: raise :class:`DataError` at the first item that would be skipped.
    """
    check_missing_images(NAME, missing_images)
    csv_path = require_file(path, "CheXpert-Plus CSV")
    root = require_dir(image_root, "image root") if image_root is not None else csv_path.parent
    rows = read_csv(csv_path, ["path_to_image", "section_findings", "section_impression"])
    log = SkipLog(NAME, strict=strict)

    studies: dict[str, list[tuple[int, dict[str, str]]]] = {}
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        rel = row["path_to_image"].strip()
        where = f"{csv_path.name}:{line} {rel}"
        if not rel:
            log.skip(where, "empty path_to_image")
        elif rel in seen:
            log.skip(where, "duplicate path_to_image")
        else:
            seen.add(rel)
            studies.setdefault(str(PurePosixPath(rel).parent), []).append((line, row))

    records: list[StudyRecord] = []
    for study, study_rows in studies.items():
        first = study_rows[0][1]
        findings, impression = clean_text(first["section_findings"]), clean_text(first["section_impression"])
        if not findings and not impression:
            log.skip(study, "empty findings and impression")
            continue
        patient = _patient_id(study, first)
        if patient is None:
            log.skip(study, "no patientNNNNN folder in path_to_image and no deid_patient_id")
            continue
        candidates = []
        for line, row in study_rows:
            if (clean_text(row["section_findings"]), clean_text(row["section_impression"])) != (findings, impression):
                log.skip(f"{csv_path.name}:{line} {row['path_to_image']}", f"report differs from study {study}")
                continue
            rel = PurePosixPath(row["path_to_image"].strip())
            candidates.append((root / (rel.with_suffix(image_ext) if image_ext else rel), _view(row, rel.name)))
        images, missing = collect_images(
            candidates, log=log, missing_images=missing_images, verify_images=verify_images
        )
        if not images and missing_images == "skip":
            log.skip(study, "no usable images")
            continue
        split = clean_text(first.get("split")).lower() or PurePosixPath(study).parts[0].lower()
        records.append(
            StudyRecord(
                study_id=study,
                patient_id=patient,
                images=images,
                findings=findings,
                impression=impression,
                source=NAME,
                split=_SPLITS.get(split),
                meta={"missing_images": missing} if missing else {},
            )
        )
    return log.result(records)


def _patient_id(study: str, row: dict[str, str]) -> str | None:
    for part in PurePosixPath(study).parts:
        if _PATIENT.match(part):
            return part
    return clean_text(row.get("deid_patient_id")) or None


def _view(row: dict[str, str], filename: str) -> str:
    fl = clean_text(row.get("frontal_lateral")).lower() or ("lateral" if "lateral" in filename.lower() else "")
    fl = fl or ("frontal" if "frontal" in filename.lower() else "")
    ap_pa = clean_text(row.get("ap_pa")).upper()
    if fl == "lateral":
        return "LL" if ap_pa == "LL" else "LATERAL"
    if fl == "frontal":
        return ap_pa if ap_pa in ("AP", "PA") else "FRONTAL"
    return "UNKNOWN"
