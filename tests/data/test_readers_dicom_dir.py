"""dicom-dir reader on DICOM files the tests write with pydicom's Dataset API."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fedmrg.data.readers import read_source
from fedmrg.errors import DataError

DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def write_dicom(
    path: Path,
    *,
    study: str | None,
    patient: str | None,
    view: str = "PA",
    frames: int = 1,
    pixels: bool = True,
    accession: str = "",
) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX
    sop = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID, ds.SOPInstanceUID = DX, sop
    if study is not None:
        ds.StudyInstanceUID = study
    if patient is not None:
        ds.PatientID = patient
    ds.AccessionNumber = accession
    ds.Modality, ds.ViewPosition = "DX", view
    if pixels:
        ds.Rows, ds.Columns, ds.SamplesPerPixel = 4, 6, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = np.arange(24 * frames, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "export"
    a, b, c = "1.2.3.1", "1.2.3.2", "1.2.3.3"
    write_dicom(root / "p1/a/img1.dcm", study=a, patient="P1", view="PA")
    write_dicom(root / "p1/a/img2", study=a, patient="P1", view="LATERAL")  # no extension
    (root / "p1/a/report.txt").write_text("FINDINGS: Lungs clear.\nIMPRESSION: Normal.")
    write_dicom(root / "p2/img.dcm", study=b, patient="P2", view="AP AXIAL", accession="ACC2")
    (root / f"notes/{b}.txt").parent.mkdir(parents=True)
    (root / f"notes/{b}.txt").write_text("Heart size normal.")  # no headers: all findings
    write_dicom(root / "p3/img.dcm", study=c, patient="P3")  # no report anywhere
    write_dicom(root / "bad/no_patient.dcm", study="1.2.3.9", patient=None)
    write_dicom(root / "bad/no_pixels.dcm", study="1.2.3.9", patient="P9", pixels=False)
    write_dicom(root / "bad/cine.dcm", study="1.2.3.9", patient="P9", frames=3)
    (root / "bad/junk.bin").write_bytes(b"\x00" * 300)
    (root / ".hidden").write_text("ignored")
    return root


def test_studies_reports_and_skips(tree):
    result = read_source("dicom-dir", tree)
    by_id = {r.study_id: r for r in result.records}
    assert set(by_id) == {"1.2.3.1", "1.2.3.2"}
    a = by_id["1.2.3.1"]
    assert (a.patient_id, a.findings, a.impression, a.meta["report_from"]) == (
        "P1",
        "Lungs clear.",
        "Normal.",
        "report.txt",
    )
    assert [(Path(im.path).name, im.view) for im in a.images] == [("img1.dcm", "PA"), ("img2", "LATERAL")]
    b = by_id["1.2.3.2"]
    assert (b.findings, b.impression, b.images[0].view) == ("Heart size normal.", "", "UNKNOWN")
    reasons = {(Path(s.item).name if "/" in s.item else s.item, s.reason.split(" (")[0]) for s in result.skipped}
    assert reasons == {
        ("study 1.2.3.3", "no report found"),
        ("no_patient.dcm", "missing PatientID"),
        ("no_pixels.dcm", "no pixel data"),
        ("cine.dcm", "multi-frame DICOM"),
        ("junk.bin", "not a DICOM file"),
    }


def test_require_report_false_keeps_report_less_studies(tree):
    result = read_source("dicom-dir", tree, require_report=False)
    rec = next(r for r in result.records if r.study_id == "1.2.3.3")
    assert (rec.findings, rec.impression) == ("", "")
    assert "no report found" not in result.skip_summary()


def test_reports_csv_by_uid_and_accession(tree, tmp_path):
    p = tmp_path / "reports.csv"
    with p.open("w", newline="") as f:
        csv.writer(f).writerows([["StudyInstanceUID", "report"], ["1.2.3.3", "FINDINGS: Effusion.\nIMPRESSION: Bad."]])
    rec = next(r for r in read_source("dicom-dir", tree, reports_csv=p).records if r.study_id == "1.2.3.3")
    assert (rec.findings, rec.impression, rec.meta["report_from"]) == ("Effusion.", "Bad.", "reports_csv")
    with p.open("w", newline="") as f:
        csv.writer(f).writerows([["AccessionNumber", "findings", "impression"], ["ACC2", "", "From CSV."]])
    rec = next(r for r in read_source("dicom-dir", tree, reports_csv=p).records if r.study_id == "1.2.3.2")
    assert (rec.findings, rec.impression) == ("", "From CSV.")


@pytest.mark.parametrize(
    ("header", "match"),
    [(["uid", "report"], "StudyInstanceUID"), (["StudyInstanceUID", "text"], "'findings' and/or 'impression'")],
)
def test_reports_csv_missing_columns(tree, tmp_path, header, match):
    p = tmp_path / "reports.csv"
    p.write_text(",".join(header) + "\n1,x\n")
    with pytest.raises(DataError, match=match) as e:
        read_source("dicom-dir", tree, reports_csv=p)
    assert "reports.csv" in str(e.value) and "available columns" in str(e.value)


def test_empty_report_is_skipped(tree):
    (tree / "p1/a/report.txt").write_text("INDICATION: cough")
    result = read_source("dicom-dir", tree)
    assert result.skip_summary()["empty findings and impression in report.txt"] == 1


def test_verify_images_decodes_pixels(tree):
    from pydicom.data import get_testdata_file

    shutil.copy(get_testdata_file("MR_truncated.dcm"), tree / "p1/a/truncated.dcm")
    ds = pydicom.dcmread(tree / "p1/a/truncated.dcm")
    ds.StudyInstanceUID, ds.PatientID = "1.2.3.1", "P1"
    ds.save_as(tree / "p1/a/truncated.dcm")
    assert len(read_source("dicom-dir", tree).records[0].images) == 3  # header-only check passes
    result = read_source("dicom-dir", tree, verify_images=True)
    assert len(result.records[0].images) == 2
    assert any(s.item.endswith("truncated.dcm") and "cannot decode pixel data" in s.reason for s in result.skipped)


def test_strict(tree):
    with pytest.raises(DataError, match="strict=True"):
        read_source("dicom-dir", tree, strict=True)


def test_bad_number_of_frames_is_a_skip(tree):
    from pydicom.data import get_testdata_file

    path = tree / "p3/bad_vr.dcm"  # pydicom's badVR.dcm: NumberOfFrames "1A"
    shutil.copy(get_testdata_file("badVR.dcm"), path)
    with pytest.warns(UserWarning, match="Invalid value for VR IS"):
        result = read_source("dicom-dir", tree, require_report=False)
    assert any(s.item == str(path) and s.reason == "invalid NumberOfFrames '1A'" for s in result.skipped)
