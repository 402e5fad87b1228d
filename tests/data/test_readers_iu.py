"""iu-kaggle reader: the real shared CSVs (expected values computed from the CSVs here) and bad inputs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fedmrg.data.readers import read_source
from fedmrg.errors import DataError


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _nonempty(row: dict[str, str]) -> bool:
    return bool(row["findings"].strip() or row["impression"].strip())


def test_real_csvs_keep_mode_keeps_every_study_with_text(iu_dir):
    reports = _csv_rows(iu_dir / "indiana_reports.csv")
    projections = _csv_rows(iu_dir / "indiana_projections.csv")
    result = read_source("iu-kaggle", iu_dir, missing_images="keep")

    assert [r.study_id for r in result.records] == [row["uid"] for row in reports if _nonempty(row)]
    assert result.skip_summary() == {"empty findings and impression": sum(not _nonempty(r) for r in reports)}
    present = {p.name for p in (iu_dir / "images").iterdir()}
    n_missing = sum(len(r.meta.get("missing_images", [])) for r in result.records)
    n_present = sum(len(r.images) for r in result.records)
    listed = [p for p in projections if _nonempty(next(r for r in reports if r["uid"] == p["uid"]))]
    assert n_present == sum(p["filename"] in present for p in listed)
    assert n_missing + n_present == len(listed)


def test_real_csvs_skip_mode_keeps_only_studies_with_images(iu_dir):
    with_text = {r["uid"] for r in _csv_rows(iu_dir / "indiana_reports.csv") if _nonempty(r)}
    projections = [p for p in _csv_rows(iu_dir / "indiana_projections.csv") if p["uid"] in with_text]
    present = {p.name for p in (iu_dir / "images").iterdir()}
    uids_with_image = {p["uid"] for p in projections if p["filename"] in present}
    result = read_source("iu-kaggle", iu_dir)

    assert {r.study_id for r in result.records} == uids_with_image
    # studies without text are skipped for that reason before their images are looked at
    assert result.skip_summary()["image not found"] == sum(p["filename"] not in present for p in projections)
    assert result.skip_summary()["no usable images"] == len(with_text - uids_with_image)
    for rec in result.records:
        rows = [p for p in projections if p["uid"] == rec.study_id]
        assert [(Path(im.path).name, im.view) for im in rec.images] == [
            (p["filename"], p["projection"].upper()) for p in rows
        ]
        assert all(Path(im.path).is_file() for im in rec.images)
        assert rec.patient_id == rec.study_id and rec.source == "iu-kaggle"


def test_real_tags_are_problems_deduplicated(iu_dir):
    reports = {r["uid"]: r for r in _csv_rows(iu_dir / "indiana_reports.csv")}
    result = read_source("iu-kaggle", iu_dir, missing_images="keep")
    problems = {uid: row["Problems"].split(";") for uid, row in reports.items()}
    with_dupes = [r for r in result.records if len(set(problems[r.study_id])) < len(problems[r.study_id])]
    assert with_dupes, "the shared CSV has studies with repeated Problems terms"
    for rec in result.records:
        terms = [t.strip() for t in reports[rec.study_id]["Problems"].split(";")]
        assert rec.tags == sorted(set(terms), key=terms.index)
        assert rec.findings == reports[rec.study_id]["findings"].strip()
        assert rec.meta["mesh"][0] == reports[rec.study_id]["MeSH"].split(";")[0].strip()


# ------------------------------------------------------------------ small hand-made layouts for the bad cases


def _write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


REPORT_HEADER = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]


@pytest.fixture
def iu_fixture(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("L", (8, 8), 100).save(tmp_path / "images" / "1_a.png")
    Image.new("L", (8, 8), 100).save(tmp_path / "images" / "2_a.png")
    (tmp_path / "images" / "3_a.png").write_bytes(b"not a png")
    _write(
        tmp_path / "indiana_reports.csv",
        REPORT_HEADER,
        [
            ["1", "normal", "normal", "", "", "", "Heart normal.", "No disease."],
            ["2", "x", "Opacity;Opacity", "", "", "", "", "Opacity right."],  # impression only: kept
            ["3", "x", "normal", "", "", "", "Lungs clear.", ""],  # image is not a PNG
            ["4", "x", "normal", "", "", "", "", "  "],  # empty text
            ["1", "x", "normal", "", "", "", "Again.", ""],  # duplicate uid
            ["5", "x", "normal", "", "", "", "No images.", ""],  # no projection rows
        ],
    )
    _write(
        tmp_path / "indiana_projections.csv",
        ["uid", "filename", "projection"],
        [
            ["1", "1_a.png", "Frontal"],
            ["1", "1_b.png", "Lateral"],
            ["2", "2_a.png", "Lateral"],
            ["3", "3_a.png", "Frontal"],
            ["9", "9_a.png", "Frontal"],
        ],
    )
    return tmp_path


def test_every_skip_is_counted_with_its_reason(iu_fixture):
    result = read_source("iu-kaggle", iu_fixture, verify_images=True)
    assert [r.study_id for r in result.records] == ["1", "2"]
    reasons = {
        (Path(s.item).name if "png" in s.item else s.item.split()[-1], s.reason.split(":")[0]) for s in result.skipped
    }
    assert reasons == {
        ("uid=9", "projection rows for a uid not in indiana_reports.csv"),
        ("1_b.png", "image not found"),
        ("3_a.png", "unreadable image"),
        ("uid=3", "no usable images"),
        ("uid=4", "empty findings and impression"),
        ("uid=1", "duplicate uid"),
        ("uid=5", "no images listed"),
    }
    rec2 = result.records[1]
    assert rec2.findings == "" and rec2.report == "Opacity right." and rec2.tags == ["Opacity"]


def test_without_verify_an_unreadable_file_counts_as_present(iu_fixture):
    result = read_source("iu-kaggle", iu_fixture)
    assert [r.study_id for r in result.records] == ["1", "2", "3"]


def test_keep_mode_lists_missing_images_for_rendering(iu_fixture):
    result = read_source("iu-kaggle", iu_fixture, missing_images="keep")
    by_id = {r.study_id: r for r in result.records}
    assert set(by_id) == {"1", "2", "3", "5"}
    assert [(Path(m["path"]).name, m["view"]) for m in by_id["1"].meta["missing_images"]] == [("1_b.png", "LATERAL")]
    assert by_id["5"].images == [] and "missing_images" not in by_id["5"].meta


def test_strict_raises_at_first_skip(iu_fixture):
    with pytest.raises(DataError, match=r"uid=9.*strict=True"):
        read_source("iu-kaggle", iu_fixture, strict=True)


def test_image_root_option(iu_fixture, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    (iu_fixture / "images" / "1_a.png").rename(other / "1_a.png")
    result = read_source("iu-kaggle", iu_fixture, image_root=other)
    assert [r.study_id for r in result.records] == ["1"]
    with pytest.raises(DataError, match="image root not found"):
        read_source("iu-kaggle", iu_fixture, image_root=other / "nope")


def test_missing_columns_name_file_missing_and_available(iu_fixture):
    _write(iu_fixture / "indiana_reports.csv", ["uid", "Problems", "finding"], [["1", "normal", "x"]])
    with pytest.raises(DataError) as e:
        read_source("iu-kaggle", iu_fixture)
    msg = str(e.value)
    assert "indiana_reports.csv" in msg and "['findings', 'impression']" in msg and "'finding'" in msg


def test_missing_projection_csv_is_named(iu_fixture):
    (iu_fixture / "indiana_projections.csv").unlink()
    with pytest.raises(DataError, match="indiana_projections.csv"):
        read_source("iu-kaggle", iu_fixture)


def test_empty_csv_is_an_error(iu_fixture):
    (iu_fixture / "indiana_reports.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_source("iu-kaggle", iu_fixture)
