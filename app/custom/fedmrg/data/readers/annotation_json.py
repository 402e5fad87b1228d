"""Reader for the R2Gen-style ``annotation.json`` used by R2Gen, R2GenGPT and PromptMRG.

Layout: ``{"train": [item, ...], "val": [...], "test": [...]}``, or a flat list of items (PromptMRG's IU file).

- IU X-ray items: ``{"id": "CXR2384_IM-0942", "report": ..., "image_path": ["CXR2384_IM-0942/0.png", ...],
  "split": "train"}``. One item is one study. IU X-ray has no patient identifier; the number after ``CXR`` is
  the Open-i ``uid`` (the same number as in ``indiana_reports.csv``) and is used as the patient id, so the
  ``iu-kaggle`` and ``annotation-json`` readers agree. Ids without that pattern use the item id.
- MIMIC-CXR items carry ``study_id`` and ``subject_id`` and describe one *image* each; items of one study are
  merged into one record (images in file order). An item whose report differs from the study's first item is a
  counted skip.

The ``report`` goes unchanged (stripped) into ``findings``; ``impression`` stays ``""`` (these files keep only one
section). Views are ``UNKNOWN``: the file does not say which image is frontal. PromptMRG's ``labels`` (CheXbert
state indices, 18 per item) are kept as a list in ``meta["annotation_labels"]``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fedmrg.data.readers.base import ReadResult
from fedmrg.data.readers.common import (
    MissingImages,
    SkipLog,
    absolute,
    check_missing_images,
    clean_text,
    collect_images,
    require_dir,
)
from fedmrg.data.records import StudyRecord
from fedmrg.errors import DataError

NAME = "annotation-json"
_SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validate": "val", "validation": "val", "test": "test"}
_IU_ID = re.compile(r"^CXR(\d+)_")


def read(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    missing_images: MissingImages = "skip",
    verify_images: bool = False,
    strict: bool = False,
) -> ReadResult:
    """Read an ``annotation.json``.

    Args:
        path: the JSON file, or a folder holding ``annotation.json``.
        image_root: folder that ``image_path`` entries are relative to. Defaults to ``images/`` beside the JSON
            (R2Gen's layout: ``data/iu_xray/annotation.json`` + ``data/iu_xray/images/``).
        missing_images: ``"skip"`` or ``"keep"`` (see :data:`fedmrg.data.readers.common.MissingImages`).
        verify_images: open each image's header, not only check that the file exists.
        strict: raise :class:`DataError` at the first item that would be skipped.

    Returns:
        Records with ``source="annotation-json"`` and the split named by the file.
    """
    check_missing_images(NAME, missing_images)
    path = absolute(path)
    if path.is_dir():
        path = path / "annotation.json"
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    root = require_dir(image_root, "image root") if image_root is not None else path.parent / "images"
    log = SkipLog(NAME, strict=strict)

    studies: dict[str, StudyRecord] = {}
    for index, split, item in _items(path):
        where = f"{path.name}[{split or 'list'}][{index}]"
        problem = _item_problem(item)
        if problem:
            log.skip(where, problem)
            continue
        report = clean_text(item["report"])
        if not report:
            log.skip(f"{where} id={item['id']}", "empty findings and impression")
            continue
        study_id, patient_id = _ids(item)
        rel = item["image_path"] if isinstance(item["image_path"], list) else [item["image_path"]]
        images, missing = collect_images(
            [(root / p, "UNKNOWN") for p in rel], log=log, missing_images=missing_images, verify_images=verify_images
        )
        record = studies.get(study_id)
        if record is None:
            meta: dict[str, Any] = {"annotation_ids": [str(item["id"])]}
            if "labels" in item:
                meta["annotation_labels"] = item["labels"]
            studies[study_id] = StudyRecord(
                study_id=study_id,
                patient_id=patient_id,
                images=images,
                findings=report,
                source=NAME,
                split=_SPLIT_NAMES.get(str(item.get("split") or split).lower(), split),
                meta=meta,
            )
            record = studies[study_id]
        elif "study_id" not in item:
            log.skip(f"{where} id={item['id']}", f"duplicate id (study {study_id} already read)")
            continue
        elif record.findings != report:
            log.skip(f"{where} id={item['id']}", f"report differs from the first item of study {study_id}")
            continue
        else:
            record.images.extend(images)
            record.meta["annotation_ids"].append(str(item["id"]))
        if missing:
            record.meta.setdefault("missing_images", []).extend(missing)

    records = []
    for record in studies.values():
        if not record.images and missing_images == "skip":
            log.skip(record.study_id, "no usable images")
        else:
            records.append(record)
    return log.result(records)


def _items(path: Path) -> list[tuple[int, str | None, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON: {e}") from e
    if isinstance(data, list):
        return [(i, None, item) for i, item in enumerate(data)]
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        return [(i, split, item) for split, items in data.items() for i, item in enumerate(items)]
    raise DataError(
        f"{path}: expected {{'train': [...], 'val': [...], 'test': [...]}} or a list of items, "
        f"got {type(data).__name__} with keys {list(data)[:5] if isinstance(data, dict) else '-'}"
    )


def _item_problem(item: Any) -> str | None:
    if not isinstance(item, dict):
        return f"malformed item: expected an object, got {type(item).__name__}"
    missing = [k for k in ("id", "report", "image_path") if k not in item]
    if missing:
        return f"malformed item: missing key(s) {missing}"
    paths = item["image_path"]
    if not (isinstance(paths, str) or (isinstance(paths, list) and all(isinstance(p, str) for p in paths))):
        return "malformed item: `image_path` must be a string or a list of strings"
    if not isinstance(item["report"], str):
        return "malformed item: `report` must be a string"
    return None


def _ids(item: dict[str, Any]) -> tuple[str, str]:
    """(study id, patient id) for a MIMIC item (study_id / subject_id) or an IU item (id, uid from the id)."""
    if "study_id" in item:
        return str(item["study_id"]), str(item.get("subject_id", item["study_id"]))
    m = _IU_ID.match(str(item["id"]))
    return str(item["id"]), (m.group(1) if m else str(item["id"]))
