"""chexpert-plus reader on a small CSV + image tree built in tmp_path in the released layout."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fedmrg.data.readers import read_source
from fedmrg.errors import DataError

HEADER = [
    "path_to_image",
    "path_to_dcm",
    "frontal_lateral",
    "ap_pa",
    "deid_patient_id",
    "split",
    "report",
    "section_findings",
    "section_impression",
]
ROWS = [
    # two views of one study
    [
        "train/patient00001/study1/view1_frontal.jpg",
        "",
        "Frontal",
        "AP",
        "pid-1",
        "train",
        "",
        "Lungs clear.",
        "No acute findings.",
    ],
    [
        "train/patient00001/study1/view2_lateral.jpg",
        "",
        "Lateral",
        "LL",
        "pid-1",
        "train",
        "",
        "Lungs clear.",
        "No acute findings.",
    ],
    # a row of the same study whose report differs
    ["train/patient00001/study1/view3_frontal.jpg", "", "Frontal", "PA", "pid-1", "train", "", "Other.", ""],
    ["valid/patient64541/study1/view1_frontal.jpg", "", "Frontal", "", "pid-2", "valid", "", "", "Effusion."],
    ["train/patient00002/study1/view1_frontal.jpg", "", "Frontal", "PA", "pid-3", "train", "", "nan", ""],  # empty
    ["train/patient00003/study2/view1_frontal.jpg", "", "Frontal", "PA", "pid-4", "train", "", "Edema.", ""],  # no file
    ["train/patient00001/study1/view1_frontal.jpg", "", "Frontal", "AP", "pid-1", "train", "", "dup", ""],  # duplicate
    ["other/abc/view1.jpg", "", "", "", "", "", "", "Clear.", ""],  # no patient folder, no deid id
]


def build(root: Path, ext: str = ".jpg", rows=ROWS, header=HEADER) -> Path:
    from PIL import Image

    for row in rows:
        p = (root / row[0]).with_suffix(ext)
        if "patient00003" not in row[0]:
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (5, 7), 50).save(p)
    path = root / "df_chexpert_plus_240401.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_released_layout(tmp_path):
    result = read_source("chexpert-plus", build(tmp_path))
    by_id = {r.study_id: r for r in result.records}
    assert list(by_id) == ["train/patient00001/study1", "valid/patient64541/study1"]
    s1 = by_id["train/patient00001/study1"]
    assert (s1.patient_id, s1.split, s1.findings, s1.impression) == (
        "patient00001",
        "train",
        "Lungs clear.",
        "No acute findings.",
    )
    assert [(Path(im.path).name, im.view) for im in s1.images] == [
        ("view1_frontal.jpg", "AP"),
        ("view2_lateral.jpg", "LL"),
    ]
    s2 = by_id["valid/patient64541/study1"]
    assert (s2.split, s2.images[0].view, s2.report) == ("val", "FRONTAL", "Effusion.")
    reasons = sorted(s.reason for s in result.skipped)
    assert reasons == sorted(
        [
            "report differs from study train/patient00001/study1",
            "empty findings and impression",
            "image not found",
            "no usable images",
            "duplicate path_to_image",
            "no patientNNNNN folder in path_to_image and no deid_patient_id",
        ]
    )


def test_png_release_and_image_root(tmp_path):
    csv_path = build(tmp_path / "png", ext=".png")
    moved = tmp_path / "csvdir"
    moved.mkdir()
    csv_path = csv_path.rename(moved / csv_path.name)
    result = read_source("chexpert-plus", csv_path, image_root=tmp_path / "png", image_ext=".png")
    assert [Path(im.path).suffix for r in result.records for im in r.images] == [".png"] * 3
    assert read_source("chexpert-plus", csv_path, image_root=tmp_path / "png").records == []


def test_views_from_file_names_and_deid_patient(tmp_path):
    header = ["path_to_image", "deid_patient_id", "section_findings", "section_impression"]
    rows = [["x/s1/view1_frontal.jpg", "pid-9", "Clear.", ""], ["x/s1/view2_lateral.jpg", "pid-9", "Clear.", ""]]
    (rec,) = read_source("chexpert-plus", build(tmp_path, rows=rows, header=header)).records
    assert rec.patient_id == "pid-9" and [im.view for im in rec.images] == ["FRONTAL", "LATERAL"]
    assert rec.split is None


def test_missing_columns(tmp_path):
    header = ["path_to_image", "section_findings"]
    with pytest.raises(DataError) as e:
        read_source("chexpert-plus", build(tmp_path, rows=[["a/b.jpg", "x"]], header=header))
    assert "df_chexpert_plus_240401.csv" in str(e.value) and "['section_impression']" in str(e.value)


def test_strict_and_keep(tmp_path):
    path = build(tmp_path)
    with pytest.raises(DataError, match=r"csv:8 .*duplicate path_to_image"):  # first skip in file order
        read_source("chexpert-plus", path, strict=True)
    kept = read_source("chexpert-plus", path, missing_images="keep").records
    edema = next(r for r in kept if r.findings == "Edema.")
    assert edema.images == [] and edema.meta["missing_images"][0]["view"] == "PA"
