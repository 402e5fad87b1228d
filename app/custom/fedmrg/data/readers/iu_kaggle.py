"""Reader for the Indiana University chest X-ray collection in its Kaggle layout.

Files: ``indiana_reports.csv`` (uid, MeSH, Problems, image, indication, comparison, findings, impression),
``indiana_projections.csv`` (uid, filename, projection) and the PNGs named by ``filename`` in an image folder.

- Study id and patient id are both the ``uid``: Open-i publishes no patient identifier, and each uid is one
  de-identified study, so the uid is the finest grouping there is (patient-level splits become study-level).
- ``Problems`` (MeSH major headings assigned by human indexers, ``;``-separated) become ``tags``, de-duplicated
  in order; the full ``MeSH`` strings (with qualifiers), ``indication``, ``comparison`` and the ``image``
  description go into ``meta``.
- ``projection`` ``Frontal`` / ``Lateral`` become views ``FRONTAL`` / ``LATERAL`` (IU does not say PA or AP).
- Findings and impression are kept as written (``XXXX`` de-identification marks included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedmrg.data.readers.base import ReadResult
from fedmrg.data.readers.common import (
    MissingImages,
    SkipLog,
    check_missing_images,
    clean_text,
    collect_images,
    find_file,
    read_csv,
    require_dir,
)
from fedmrg.data.records import StudyRecord

NAME = "iu-kaggle"
REPORTS_CSV = "indiana_reports.csv"
PROJECTIONS_CSV = "indiana_projections.csv"
_VIEWS = {"frontal": "FRONTAL", "lateral": "LATERAL", "pa": "PA", "ap": "AP"}


def read(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    missing_images: MissingImages = "skip",
    verify_images: bool = False,
    strict: bool = False,
) -> ReadResult:
    """Read the Kaggle IU X-ray CSVs.

    Args:
        path: folder holding ``indiana_reports.csv`` and ``indiana_projections.csv``.
        image_root: folder with the PNGs (default ``<path>/images``). Only a few real images may be present:
            with ``missing_images="keep"`` every study is kept, its absent images listed in
            ``meta["missing_images"]`` for :func:`fedmrg.data.synthetic.render_study_image` to draw; with
            ``"skip"`` (default) each absent image is a counted skip and a study left without images is skipped.
        missing_images: ``"skip"`` or ``"keep"``.
        verify_images: open each image's header, not only check that the file exists.
        strict: raise :class:`DataError` at the first item that would be skipped.
    """
    check_missing_images(NAME, missing_images)
    folder = require_dir(path, "IU X-ray folder")
    root = require_dir(image_root, "image root") if image_root is not None else folder / "images"
    reports_csv = find_file(folder, [REPORTS_CSV], "IU reports CSV")
    projections_csv = find_file(folder, [PROJECTIONS_CSV], "IU projections CSV")
    reports = read_csv(reports_csv, ["uid", "findings", "impression"])
    projections = read_csv(projections_csv, ["uid", "filename", "projection"])
    log = SkipLog(NAME, strict=strict)

    images_by_uid: dict[str, list[tuple[Path, str]]] = {}
    for row in projections:
        images_by_uid.setdefault(row["uid"].strip(), []).append(
            (root / row["filename"].strip(), _VIEWS.get(row["projection"].strip().lower(), "UNKNOWN"))
        )
    uids = {row["uid"].strip() for row in reports}
    for uid in images_by_uid.keys() - uids:
        log.skip(f"{projections_csv.name} uid={uid}", f"projection rows for a uid not in {REPORTS_CSV}")

    records: list[StudyRecord] = []
    seen: set[str] = set()
    for line, row in enumerate(reports, start=2):
        uid = row["uid"].strip()
        where = f"{reports_csv.name}:{line} uid={uid}"
        if not uid:
            log.skip(where, "empty uid")
            continue
        if uid in seen:
            log.skip(where, "duplicate uid")
            continue
        seen.add(uid)
        findings, impression = clean_text(row["findings"]), clean_text(row["impression"])
        if not findings and not impression:
            log.skip(where, "empty findings and impression")
            continue
        images, missing = collect_images(
            images_by_uid.get(uid, []), log=log, missing_images=missing_images, verify_images=verify_images
        )
        if not images and missing_images == "skip":
            log.skip(where, "no usable images" if uid in images_by_uid else "no images listed")
            continue
        meta: dict[str, Any] = {
            key: clean_text(row.get(key)) for key in ("indication", "comparison", "image") if clean_text(row.get(key))
        }
        if clean_text(row.get("MeSH")):
            meta["mesh"] = _split_terms(row["MeSH"])
        if missing:
            meta["missing_images"] = missing
        records.append(
            StudyRecord(
                study_id=uid,
                patient_id=uid,
                images=images,
                findings=findings,
                impression=impression,
                source=NAME,
                tags=_split_terms(row["Problems"]) if "Problems" in row else None,
                meta=meta,
            )
        )
    return log.result(records)


def _split_terms(value: str) -> list[str]:
    """``"Opacity;Opacity;Cardiomegaly"`` -> ``["Opacity", "Cardiomegaly"]`` (order kept, duplicates dropped)."""
    return list(dict.fromkeys(t.strip() for t in value.split(";") if t.strip()))
