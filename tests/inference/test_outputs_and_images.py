"""Prediction renderings (text, JSON, CSV, DICOM Basic Text SR) and image decoding from uploaded bytes."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from fedmrg.data.images import load_image, load_image_bytes, sniff_format
from fedmrg.errors import DataError
from fedmrg.inference.outputs import BASIC_TEXT_SR, to_csv, to_dicom_sr, to_json, to_text, write_dicom_sr
from fedmrg.inference.predict import Prediction
from fedmrg.observations import OBSERVATIONS

_spec = importlib.util.spec_from_file_location("_tiny_model", Path(__file__).with_name("tiny_model.py"))
_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tiny)
radiograph, write_dicom, write_png = _tiny.radiograph, _tiny.write_dicom, _tiny.write_png


def _prediction(report: str = "the heart is normal in size . no effusion .", site: str | None = "site-1") -> Prediction:
    obs = []
    for i, name in enumerate(OBSERVATIONS):
        state = ("blank", "positive", "negative", "uncertain")[i % 4]
        probs = {"blank": 0.1, "positive": 0.1, "negative": 0.1, "uncertain": 0.1} | {state: 0.7}
        obs.append({"name": name, "state": state, "probability": 0.7, "probabilities": probs})
    return Prediction("study.dcm", report, "mixed" if site else "generic", site, obs)


def test_text_and_json():
    p = _prediction()
    text = to_text(p)
    assert "personalized (site-1)" in text and p.report in text and "Cardiomegaly" in text and "p=0.70" in text
    row = json.loads(to_json(p))
    assert row["report"] == p.report and len(row["observations"]) == 14
    assert row["observations"][1] == {"name": "Cardiomegaly", "state": "positive", "probability": 0.7,
                                      "probabilities": {"blank": 0.1, "positive": 0.7, "negative": 0.1,
                                                        "uncertain": 0.1}}  # fmt: skip


def test_csv_batch_round_trips():
    preds = [_prediction(), _prediction('a "quoted", comma report', site=None)]
    rows = list(csv.DictReader(io.StringIO(to_csv(preds))))
    assert len(rows) == 2 and rows[1]["report"] == 'a "quoted", comma report' and rows[1]["adapter"] == "generic"
    assert rows[0]["Cardiomegaly"] == "positive" and float(rows[0]["Cardiomegaly p"]) == pytest.approx(0.7)
    assert rows[0]["No Finding"] == "positive"  # index 13 -> 13 % 4 = 1


def test_dicom_sr_joins_the_study_of_a_dicom_image(tmp_path):
    image = write_dicom(tmp_path / "cr.dcm", radiograph(32))
    path = write_dicom_sr(_prediction(), tmp_path / "out" / "report.sr.dcm", source_image=image)
    sr, src = pydicom.dcmread(path), pydicom.dcmread(image)
    assert sr.SOPClassUID == BASIC_TEXT_SR == sr.file_meta.MediaStorageSOPClassUID
    assert sr.Modality == "SR" and sr.ValueType == "CONTAINER" and sr.CompletionFlag == "PARTIAL"
    assert sr.VerificationFlag == "UNVERIFIED"
    assert (sr.StudyInstanceUID, sr.PatientID, sr.PatientName) == (src.StudyInstanceUID, "P-0001", "Test^Patient")
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID
    assert [i.ValueType for i in sr.ContentSequence] == ["TEXT"] * 15
    assert sr.ContentSequence[0].TextValue == _prediction().report
    assert sr.ContentSequence[2].TextValue == "Cardiomegaly: positive (p=0.70)"
    ref = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID


def test_dicom_sr_for_a_png_gets_a_new_study(tmp_path):
    a, b = to_dicom_sr(_prediction(), source_image=None), to_dicom_sr(_prediction(), source_image="x.png")
    assert a.StudyInstanceUID != b.StudyInstanceUID and a.PatientID == "" and "ReferencedSOPSequence" not in str(a)
    a.save_as(tmp_path / "a.dcm", enforce_file_format=True)  # writable as a Part 10 file
    assert pydicom.dcmread(tmp_path / "a.dcm").ContentSequence[0].TextValue == _prediction().report


# ------------------------------------------------------------------------------------------------ bytes in


def test_bytes_equal_files_for_png_dicom_and_pydicom_test_files(tmp_path):
    png = write_png(tmp_path / "a.png", radiograph(40))
    dcm = write_dicom(tmp_path / "a.dcm", radiograph(40), photometric="MONOCHROME1", bits=12)
    ct = Path(get_testdata_file("CT_small.dcm", download=False))  # shipped inside pydicom: no download
    for path in (png, dcm, ct):
        np.testing.assert_array_equal(load_image_bytes(path.read_bytes(), name=path.name), load_image(path))
    assert sniff_format(png.read_bytes()) == "png" and sniff_format(dcm.read_bytes()) == "dicom"


def test_real_iu_radiographs_from_bytes(iu_dir):
    paths = sorted((iu_dir / "images").glob("*.png"))
    assert len(paths) == 4
    for p in paths:
        arr = load_image_bytes(p.read_bytes(), name=p.name)
        assert arr.dtype == np.float32 and arr.ndim == 2 and 0 <= arr.min() < arr.max() <= 1


def test_bad_bytes_are_refused_naming_the_upload(tmp_path):
    with pytest.raises(DataError, match=r"^notes\.txt: not a PNG, JPEG, BMP or DICOM"):
        load_image_bytes(b"hello, this is not an image" * 10, name="notes.txt")
    noise = np.random.default_rng(0).bytes(1 << 20)
    with pytest.raises(DataError, match="noise.bin: not a PNG"):
        load_image_bytes(noise, name="noise.bin")
    dcm = write_dicom(tmp_path / "t.dcm", radiograph(64)).read_bytes()
    with pytest.raises(DataError, match=r"^cut\.dcm: "):
        load_image_bytes(dcm[: len(dcm) // 2], name="cut.dcm")
    png = write_png(tmp_path / "t.png", radiograph(64)).read_bytes()
    with pytest.raises(DataError, match=r"^cut\.png: unreadable image"):
        load_image_bytes(png[:80], name="cut.png")
    multi = write_dicom(tmp_path / "m.dcm", radiograph(16), frames=3).read_bytes()
    with pytest.raises(DataError, match=r"^multi\.dcm: multi-frame DICOM \(3 frames\)"):
        load_image_bytes(multi, name="multi.dcm")
    empty = write_dicom(tmp_path / "e.dcm", radiograph(16), pixels=False).read_bytes()
    with pytest.raises(DataError, match=r"^empty\.dcm: no pixel data"):
        load_image_bytes(empty, name="empty.dcm")


def test_non_radiograph_dicom_is_flagged_before_a_report_is_written(tmp_path):
    """A CT slice or an MR image gets a warning naming the file and the modality; radiographs and rasters do not."""
    from fedmrg.data.image_checks import modality_problem

    ct = get_testdata_file("CT_small.dcm", download=False)
    assert "DICOM Modality CT" in modality_problem(ct)
    dx = write_dicom(tmp_path / "dx.dcm", radiograph())
    png = write_png(tmp_path / "x.png", radiograph())
    assert modality_problem(dx) is None and modality_problem(png) is None


def test_generate_warns_on_a_ct_slice(tmp_path):
    from fedmrg.inference.predict import Predictor
    from fedmrg.report.export import load_model

    predictor = Predictor(load_model(_tiny.make_tiny_run(tmp_path / "run"), site="site-1"))
    ct = get_testdata_file("CT_small.dcm", download=False)
    with pytest.warns(UserWarning, match=r"CT_small\.dcm: not a radiograph: DICOM Modality CT"):
        (pred,) = predictor.predict_files([ct], generic_only=True)
    assert pred.report
