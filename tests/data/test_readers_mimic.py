"""mimic-cxr reader on small MIMIC-CXR-JPG trees built in tmp_path in the official layout."""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from pathlib import Path

import pytest

from fedmrg.data.readers import read_source
from fedmrg.errors import DataError
from fedmrg.observations import OBSERVATIONS

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 INDICATION:  ___ with cough
 FINDINGS:
 No pleural effusion.
 IMPRESSION:
 No acute process.
"""
# (subject, study, split, [(dicom_id, ViewPosition)], report text or None, image files written)
STUDIES = [
    ("10000032", "50414267", "train", [("d1", "PA"), ("d2", "LATERAL")], REPORT, True),
    ("10000032", "53189527", "validate", [("d3", "AP AXIAL")], "IMPRESSION: Stable.", True),
    ("10000764", "57375967", "test", [("d4", "AP")], None, True),  # no report
    ("10000898", "50771383", "train", [("d5", "PA")], "INDICATION: cough\nCOMPARISON: none", True),  # no sections
    ("10000935", "51178377", "train", [("d6", "LL")], "FINDINGS: Clear.", False),  # image missing
]


def _csv_bytes(header: list[str], rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def build_mimic(root: Path, *, gz: bool = False, reports_in: str = "root") -> Path:
    from PIL import Image

    split_rows, meta_rows, label_rows = [], [], []
    for subject, study, split, images, report, write_images in STUDIES:
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        for dicom, view in images:
            split_rows.append([dicom, study, subject, split])
            meta_rows.append([dicom, subject, study, view])
            if write_images:
                folder.mkdir(parents=True, exist_ok=True)
                Image.new("L", (6, 4), 128).save(folder / f"{dicom}.jpg")
        if report is not None and reports_in == "root":
            (folder.parent / f"s{study}.txt").parent.mkdir(parents=True, exist_ok=True)
            (folder.parent / f"s{study}.txt").write_text(report)
        label_rows.append([subject, study] + ["1.0", "", "-1.0", "0.0"] + [""] * (len(OBSERVATIONS) - 4))
    if reports_in == "zip":
        with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as z:
            for subject, study, _, _, report, _ in STUDIES:
                if report is not None:
                    z.writestr(f"files/p{subject[:2]}/p{subject}/s{study}.txt", report)
    files = {
        "split": _csv_bytes(["dicom_id", "study_id", "subject_id", "split"], split_rows),
        "metadata": _csv_bytes(["dicom_id", "subject_id", "study_id", "ViewPosition"], meta_rows),
        "chexpert": _csv_bytes(["subject_id", "study_id", *OBSERVATIONS], label_rows),
    }
    for name, data in files.items():
        path = root / f"mimic-cxr-2.0.0-{name}.csv"
        if gz:
            path.with_suffix(".csv.gz").write_bytes(gzip.compress(data))
        else:
            path.write_bytes(data)
    return root


def test_official_layout(tmp_path):
    result = read_source("mimic-cxr", build_mimic(tmp_path))
    by_id = {r.study_id: r for r in result.records}
    assert list(by_id) == ["50414267", "53189527"]
    first = by_id["50414267"]
    assert (first.patient_id, first.split, first.source) == ("10000032", "train", "mimic-cxr")
    assert (first.findings, first.impression) == ("No pleural effusion.", "No acute process.")
    assert [(Path(im.path).name, im.view) for im in first.images] == [("d1.jpg", "PA"), ("d2.jpg", "LATERAL")]
    assert Path(first.images[0].path) == tmp_path / "files/p10/p10000032/s50414267/d1.jpg"
    assert first.labels["Enlarged Cardiomediastinum"] == 1 and first.labels["Cardiomegaly"] is None
    assert first.labels["Lung Opacity"] == -1 and first.labels["Lung Lesion"] == 0
    second = by_id["53189527"]
    assert (second.split, second.findings, second.impression) == ("val", "", "Stable.")
    assert second.images[0].view == "UNKNOWN"  # AP AXIAL
    assert {(Path(s.item).name, s.reason) for s in result.skipped} == {
        ("s57375967", "report not found"),
        ("s50771383", "empty findings and impression"),
        ("d6.jpg", "image not found"),
        ("s51178377", "no usable images"),
    }


def test_gzipped_csvs_and_zipped_reports(tmp_path):
    result = read_source("mimic-cxr", build_mimic(tmp_path, gz=True, reports_in="zip"))
    assert [r.study_id for r in result.records] == ["50414267", "53189527"]
    assert result.records[0].impression == "No acute process."


def test_reports_option_and_keep_mode(tmp_path):
    root = build_mimic(tmp_path / "jpg", reports_in="none")
    reports = tmp_path / "reports"
    for subject, study, _, _, report, _ in STUDIES:
        if report is not None:
            p = reports / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(report)
    assert read_source("mimic-cxr", root).skip_summary() == {"report not found": 5}
    result = read_source("mimic-cxr", root, reports=reports, missing_images="keep")
    kept = {r.study_id: r for r in result.records}
    assert kept["51178377"].images == [] and kept["51178377"].meta["missing_images"][0]["view"] == "LL"


def test_without_metadata_and_labels(tmp_path):
    root = build_mimic(tmp_path)
    (root / "mimic-cxr-2.0.0-metadata.csv").unlink()
    (root / "mimic-cxr-2.0.0-chexpert.csv").unlink()
    rec = read_source("mimic-cxr", root).records[0]
    assert rec.labels is None and {im.view for im in rec.images} == {"UNKNOWN"}


def test_missing_split_csv(tmp_path):
    with pytest.raises(DataError, match=r"mimic-cxr-2.0.0-split.csv, mimic-cxr-2.0.0-split.csv.gz"):
        read_source("mimic-cxr", tmp_path)


def test_missing_columns(tmp_path):
    root = build_mimic(tmp_path)
    (root / "mimic-cxr-2.0.0-split.csv").write_bytes(_csv_bytes(["dicom_id", "study", "subject_id"], [["a", "1", "2"]]))
    with pytest.raises(DataError) as e:
        read_source("mimic-cxr", root)
    msg = str(e.value)
    assert "mimic-cxr-2.0.0-split.csv" in msg and "['study_id', 'split']" in msg and "'study'" in msg


def test_bad_label_value_names_file_and_line(tmp_path):
    root = build_mimic(tmp_path)
    rows = [["10000032", "50414267"] + ["yes"] + [""] * (len(OBSERVATIONS) - 1)]
    (root / "mimic-cxr-2.0.0-chexpert.csv").write_bytes(_csv_bytes(["subject_id", "study_id", *OBSERVATIONS], rows))
    with pytest.raises(DataError, match=r"chexpert.csv:2: label value 'yes'"):
        read_source("mimic-cxr", root)


def test_bad_reports_zip(tmp_path):
    root = build_mimic(tmp_path, reports_in="none")
    (root / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.zip: cannot open reports archive"):
        read_source("mimic-cxr", root, reports=root / "bad.zip")


def test_strict(tmp_path):
    with pytest.raises(DataError, match="s57375967: report not found"):
        read_source("mimic-cxr", build_mimic(tmp_path), strict=True)
