"""Renderings of :class:`~fedmrg.inference.predict.Prediction`: text, JSON, CSV (a batch) and DICOM Basic Text SR.

The DICOM Structured Report is a Basic Text SR (SOP class 1.2.840.10008.5.1.4.1.1.88.11): a root CONTAINER
"Chest X-ray report" holding a TEXT "Findings" item with the draft report and one TEXT item per observation
("Cardiomegaly: positive (p=0.83)"). When the image was a DICOM file, the SR joins its study (patient and study
attributes copied, the image referenced in the Current Requested Procedure Evidence Sequence); otherwise it gets
new study and series UIDs. Completion flag PARTIAL and verification flag UNVERIFIED: a draft for a radiologist.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fedmrg import __version__
from fedmrg.inference.predict import Prediction
from fedmrg.observations import OBSERVATIONS

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
_COPIED_FROM_IMAGE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                      "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription")  # fmt: skip


def to_text(pred: Prediction) -> str:
    """A human-readable block: the image, the adapter, the report, one line per observation."""
    who = f"personalized ({pred.site})" if pred.site else "generic"
    lines = [f"== {pred.image}  [{who}]", pred.report or "(empty report)"]
    for o in pred.observations or []:
        lines.append(f"  {o['name']:<28}{o['state']:<10}p={o['probability']:.2f}")
    return "\n".join(lines)


def to_json(pred: Prediction) -> str:
    """One JSON object: image, report, adapter, site, observations (name, state, probability, probabilities)."""
    return json.dumps(pred.to_dict(), ensure_ascii=False)


def to_csv(preds: Sequence[Prediction]) -> str:
    """A CSV table, one row per image: image, adapter, site, report, then ``<observation>`` (state) and
    ``<observation> p`` (its probability) for the 14 observations (empty without a diagnosis head)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "adapter", "site", "report", *(c for o in OBSERVATIONS for c in (o, f"{o} p"))])
    for p in preds:
        by_name = {o["name"]: o for o in p.observations or []}
        cells = []
        for name in OBSERVATIONS:
            o = by_name.get(name)
            cells += [o["state"], f"{o['probability']:.4f}"] if o else ["", ""]
        w.writerow([p.image, p.adapter, p.site or "", p.report, *cells])
    return buf.getvalue()


def _code(value: str, scheme: str, meaning: str) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.CodeValue, ds.CodingSchemeDesignator, ds.CodeMeaning = value, scheme, meaning
    return ds


def _text_item(concept: Any, text: str) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = [concept]
    item.TextValue = text
    return item


def to_dicom_sr(pred: Prediction, *, source_image: str | Path | None = None) -> Any:
    """A pydicom ``FileDataset`` holding the prediction as a Basic Text SR (see the module docstring).

    Args:
        source_image: the DICOM image the prediction is about (its study and patient are copied); None or a
            non-DICOM file: new study UIDs, no patient attributes.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    src = None
    if source_image is not None and str(source_image).lower().endswith((".dcm", ".dicom")):
        src = pydicom.dcmread(source_image, stop_before_pixels=True)
    now = datetime.now(timezone.utc)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8
    for name in _COPIED_FROM_IMAGE:
        if src is not None and name in src:
            setattr(ds, name, src.data_element(name).value)
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = generate_uid()
    for name in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
                 "AccessionNumber", "ReferringPhysicianName"):  # type 2: present, possibly empty  # fmt: skip
        if name not in ds:
            setattr(ds, name, "")
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "FedMRG"
    ds.SoftwareVersions = __version__
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SeriesDescription = f"FedMRG draft report ({'personalized ' + pred.site if pred.site else 'generic'})"
    ds.CompletionFlag = "PARTIAL"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic imaging report")]
    items = [_text_item(_code("121071", "DCM", "Finding"), pred.report)]
    for o in pred.observations or []:
        concept = _code("121071", "DCM", "Finding")
        items.append(_text_item(concept, f"{o['name']}: {o['state']} (p={o['probability']:.2f})"))
    ds.ContentSequence = items
    if src is not None:
        ref = Dataset()
        ref.ReferencedSOPClassUID = src.SOPClassUID
        ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
        series = Dataset()
        series.SeriesInstanceUID = src.get("SeriesInstanceUID", generate_uid())
        series.ReferencedSOPSequence = [ref]
        study = Dataset()
        study.StudyInstanceUID = ds.StudyInstanceUID
        study.ReferencedSeriesSequence = [series]
        ds.CurrentRequestedProcedureEvidenceSequence = [study]
    else:
        ds.CurrentRequestedProcedureEvidenceSequence = []
    ds.PerformedProcedureCodeSequence = []
    return ds


def write_dicom_sr(pred: Prediction, path: str | Path, *, source_image: str | Path | None = None) -> Path:
    """Write :func:`to_dicom_sr` to ``path`` (a DICOM Part 10 file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_dicom_sr(pred, source_image=source_image).save_as(path, enforce_file_format=True)
    return path
