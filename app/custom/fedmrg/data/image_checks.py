"""Open every image a dataset will list and say why any of them cannot train: what ``fedmrg data prepare`` checks.

A file passes when :func:`fedmrg.data.images.load_image` (the loader training uses) decodes it to a 2-D array of
finite values at least 2 pixels on each side, and, for a DICOM file, its ``Modality`` is one of the allowed codes
(for chest X-ray sources :data:`RADIOGRAPH_MODALITIES`) and it holds one frame, both read from the header before any
pixel is decoded. PNG / JPG files carry no modality and are checked for decoding only.

Every failure is a reason of the form ``"<kind>: <detail>"`` (kinds in :data:`PROBLEM_KINDS`), so skip summaries
group by kind and ``skipped.csv`` keeps the detail.

>>> check_record_images(records, modalities=RADIOGRAPH_MODALITIES, missing_images="skip")  # doctest: +SKIP
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedmrg.data.images import DICOM_SUFFIXES, RASTER_SUFFIXES, dicom_frames, load_image
from fedmrg.data.readers.base import Skip
from fedmrg.data.records import StudyRecord
from fedmrg.errors import DataError

#: DICOM ``Modality`` codes of projection radiographs: computed radiography, digital radiography, radiographic
#: imaging (conventional film / screen).
RADIOGRAPH_MODALITIES: tuple[str, ...] = ("CR", "DX", "RG")
#: The first word of every reason :func:`image_problem` returns.
PROBLEM_KINDS: tuple[str, ...] = ("image not found", "unreadable image", "not a radiograph", "not a 2-D image")


def image_problem(path: str | Path, *, modalities: Sequence[str] | None = RADIOGRAPH_MODALITIES) -> str | None:
    """Why ``path`` cannot be used as one radiograph, or None when it can.

    Args:
        path: PNG / JPG / BMP / DICOM file.
        modalities: DICOM ``Modality`` codes accepted; None accepts any (rasters are never checked for it).

    Returns:
        ``"<kind>: <detail>"`` with a kind from :data:`PROBLEM_KINDS`, or None.
    """
    path = Path(path)
    if not path.is_file():
        return "image not found"
    if _is_dicom(path):
        problem = _dicom_header_problem(path, modalities)
        if problem:
            return problem
    try:
        arr = np.asarray(load_image(path))
    except DataError as e:
        return f"unreadable image: {_without_path(str(e), path)}"
    if arr.ndim != 2:
        return f"not a 2-D image: array shape {arr.shape}"
    if min(arr.shape) < 2:
        return f"not a 2-D image: {arr.shape[0]} x {arr.shape[1]} pixels"
    if not np.isfinite(arr).all():
        return "unreadable image: non-finite pixel values"
    return None


@dataclass
class CheckResult:
    """What :func:`check_record_images` found.

    Attributes:
        records: the records to keep, each without the images that failed.
        skipped: one :class:`~fedmrg.data.readers.base.Skip` per failed image (``item`` = its path), then one per
            study dropped for having no usable image left.
        checked: number of distinct image files opened.
        failed: number of those that failed.
    """

    records: list[StudyRecord] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    checked: int = 0
    failed: int = 0

    def summary(self, modalities: Sequence[str] | None) -> dict[str, Any]:
        """The manifest's ``image_check`` entry."""
        return {
            "enabled": True,
            "checked": self.checked,
            "failed": self.failed,
            "modalities": list(modalities) if modalities is not None else "any",
        }


def check_record_images(
    records: Sequence[StudyRecord],
    *,
    modalities: Sequence[str] | None = RADIOGRAPH_MODALITIES,
    missing_images: str = "skip",
    workers: int = 1,
    progress: bool = True,
) -> CheckResult:
    """Check every image of ``records`` (each distinct file once) and drop the ones that fail.

    Args:
        records: studies as a reader returns them (image paths absolute).
        modalities: see :func:`image_problem`.
        missing_images: ``"skip"``: a study left with no image is dropped (and listed); ``"keep"``: it is kept, its
            failed images added to ``meta["missing_images"]`` (``{"path", "view", "reason"}``) as the readers do
            for absent files, so ``--render-missing`` can draw a frontal view.
        workers: processes that open images (1 = this process).
        progress: show a progress bar on stderr.

    Returns:
        A :class:`CheckResult`; the input records are not modified.
    """
    if missing_images not in ("skip", "keep"):
        raise ValueError(f"`missing_images` must be 'skip' or 'keep', got {missing_images!r}")
    if workers < 1:
        raise ValueError(f"`workers` must be >= 1, got {workers}")
    paths = list(dict.fromkeys(im.path for r in records for im in r.images))
    problems = dict(zip(paths, _problems(paths, modalities, workers, progress), strict=True))
    out = CheckResult(checked=len(paths), failed=sum(p is not None for p in problems.values()))
    out.skipped = [Skip(p, problems[p]) for p in paths if problems[p] is not None]
    for r in records:
        bad = [im for im in r.images if problems[im.path] is not None]
        if not bad:
            out.records.append(r)
            continue
        good = [im for im in r.images if problems[im.path] is None]
        if not good and missing_images == "skip":
            out.skipped.append(Skip(f"study {r.study_id}", "no usable images: every image failed the image check"))
            continue
        d = r.to_dict()
        d["images"] = [{"path": im.path, "view": im.view} for im in good]
        if missing_images == "keep":
            d["meta"] = dict(d["meta"])
            d["meta"]["missing_images"] = list(d["meta"].get("missing_images", [])) + [
                {"path": im.path, "view": im.view, "reason": problems[im.path]} for im in bad
            ]
        out.records.append(StudyRecord.from_dict(d))
    return out


def _problems(paths: list[str], modalities: Sequence[str] | None, workers: int, progress: bool) -> list[str | None]:
    from tqdm import tqdm

    mods = tuple(modalities) if modalities is not None else None
    bar = tqdm(total=len(paths), desc="checking images", unit="image", file=sys.stderr, disable=not progress)
    out: list[str | None] = []
    with bar:
        if workers == 1 or len(paths) < 2 * workers:
            for p in paths:
                out.append(image_problem(p, modalities=mods))
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                chunk = max(1, min(256, len(paths) // (8 * workers)))
                for problem in pool.map(_problem_any, paths, [mods] * len(paths), chunksize=chunk):
                    out.append(problem)
                    bar.update(1)
    return out


def _problem_any(path: str, modalities: tuple[str, ...] | None) -> str | None:
    return image_problem(path, modalities=modalities)


def _is_dicom(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in RASTER_SUFFIXES:
        return False
    from pydicom.misc import is_dicom

    return is_dicom(path)


def _dicom_header_problem(path: Path, modalities: Sequence[str] | None) -> str | None:
    """Modality and frame count from the header alone (no pixel data read)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality", "NumberOfFrames"])
    except Exception as e:  # pydicom raises InvalidDicomError, OSError, EOFError, ValueError on damaged headers
        return f"unreadable image: DICOM header: {e}"
    frames = dicom_frames(ds)
    if frames is None:
        return f"unreadable image: invalid NumberOfFrames {ds.get('NumberOfFrames')!r}"
    if frames > 1:
        return f"not a 2-D image: multi-frame DICOM ({frames} frames)"
    if modalities is None:
        return None
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if not modality:
        return f"not a radiograph: DICOM Modality missing (expected one of {', '.join(modalities)})"
    if modality not in modalities:
        return f"not a radiograph: DICOM Modality {modality} (expected one of {', '.join(modalities)})"
    return None


def modality_problem(path: str | Path, modalities: Sequence[str] = RADIOGRAPH_MODALITIES) -> str | None:
    """Why a DICOM file is not a radiograph of an accepted modality (header only), or None (also for rasters, which
    carry no modality). Used by inference to warn before writing a chest X-ray report for, e.g., a CT slice."""
    path = Path(path)
    if not path.is_file() or not _is_dicom(path):
        return None
    problem = _dicom_header_problem(path, modalities)
    return problem if problem and problem.startswith("not a radiograph") else None


def _without_path(message: str, path: Path) -> str:
    """``load_image`` messages start with the path; ``skipped.csv`` already has it in its own column."""
    return message.removeprefix(f"{path}: ").removeprefix("unreadable image: ")
