from __future__ import annotations

import json

import pytest

from fedmrg.data.records import ImageRef, StudyRecord, read_records, write_records
from fedmrg.errors import DataError


def _rec(i: int, **kw) -> StudyRecord:
    return StudyRecord(study_id=f"s{i}", patient_id=f"p{i}", images=[ImageRef(f"img/{i}.png", "PA")],
                       findings=f"finding {i}", source="test", **kw)


def test_roundtrip_resolves_relative_paths(tmp_path):
    recs = [_rec(1, labels={"Cardiomegaly": 1, "No Finding": None}), _rec(2, tags=["normal"])]
    path = tmp_path / "sub" / "train.jsonl"
    assert write_records(recs, path) == 2
    back = read_records(path)
    assert [r.study_id for r in back] == ["s1", "s2"]
    assert back[0].images[0].path == str(tmp_path / "sub" / "img/1.png")
    assert back[0].labels == {"Cardiomegaly": 1, "No Finding": None}
    assert read_records(path, resolve=False)[0].images[0].path == "img/1.png"


def test_report_falls_back_to_impression():
    r = StudyRecord("s", "p", findings="  ", impression="No acute disease.")
    assert r.report == "No acute disease."


def test_frontal_image_prefers_frontal_view():
    r = StudyRecord("s", "p", images=[ImageRef("lat.png", "LATERAL"), ImageRef("pa.png", "PA")])
    assert r.frontal_image().path == "pa.png"
    assert StudyRecord("s", "p").frontal_image() is None


def test_bad_view_and_unknown_label_rejected():
    with pytest.raises(ValueError, match="view"):
        ImageRef("a.png", "SIDEWAYS")
    with pytest.raises(ValueError, match="unknown observation"):
        StudyRecord("s", "p", labels={"Heart Attack": 1})


def test_read_records_errors_name_file_and_line(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_records(tmp_path / "missing.jsonl")
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(_rec(1).to_dict()) + "\n{not json}\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        read_records(p)
