"""Readers for the formats hospitals and researchers hold, each producing :class:`StudyRecord` s.

>>> result = read_source("iu-kaggle", "data/iu_xray", missing_images="keep")  # doctest: +SKIP
>>> len(result.records), result.skip_summary()  # doctest: +SKIP

- ``annotation-json`` (:mod:`.annotation_json`): R2Gen / R2GenGPT / PromptMRG ``annotation.json`` or its folder.
- ``iu-kaggle`` (:mod:`.iu_kaggle`): folder with ``indiana_reports.csv`` and ``indiana_projections.csv``.
- ``mimic-cxr`` (:mod:`.mimic_cxr`): MIMIC-CXR-JPG root (``files/``, split / metadata / chexpert CSVs).
- ``chexpert-plus`` (:mod:`.chexpert_plus`): the CheXpert-Plus report CSV.
- ``dicom-dir`` (:mod:`.dicom_dir`): a folder of DICOM files, searched recursively.

Options: ``strict`` and ``verify_images`` everywhere; ``missing_images`` (``"skip"`` / ``"keep"``, see
:data:`.common.MissingImages`) for all but ``dicom-dir``; ``image_root`` for ``annotation-json``, ``iu-kaggle`` and
``chexpert-plus``; see each module's ``read``. Unknown options raise :class:`DataError` listing the valid ones.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from fedmrg.data.readers.base import ReadResult, Skip
from fedmrg.data.readers.common import check_options
from fedmrg.errors import DataError

#: Source name -> module (under ``fedmrg.data.readers``) whose ``read(path, **options)`` handles it.
_MODULES: dict[str, str] = {
    "iu-kaggle": "iu_kaggle",
    "annotation-json": "annotation_json",
    "mimic-cxr": "mimic_cxr",
    "chexpert-plus": "chexpert_plus",
    "dicom-dir": "dicom_dir",
}
SOURCES: tuple[str, ...] = tuple(_MODULES)


def read_source(name: str, path: str | Path, **options: Any) -> ReadResult:
    """Read studies from ``path`` with the reader called ``name`` (one of :data:`SOURCES`).

    Raises:
        DataError: unknown source name or option, missing path, malformed files; with ``strict=True`` also the
            first item that would otherwise be skipped.
    """
    if name not in _MODULES:
        raise DataError(f"unknown data source {name!r}; valid sources: {', '.join(SOURCES)}")
    module = importlib.import_module(f"fedmrg.data.readers.{_MODULES[name]}")
    allowed = [p for p in inspect.signature(module.read).parameters if p != "path"]
    check_options(name, options, allowed)
    return module.read(path, **options)


__all__ = ["SOURCES", "ReadResult", "Skip", "read_source"]
