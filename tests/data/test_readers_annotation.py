"""annotation-json reader: the real IU annotation.json and small IU / MIMIC / PromptMRG style files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedmrg.data.readers import read_source
from fedmrg.errors import DataError


def test_real_iu_annotation_keep_mode(iu_dir):
    data = json.loads((iu_dir / "annotation.json").read_text())
    result = read_source("annotation-json", iu_dir / "annotation.json", missing_images="keep")
    items = [(split, it) for split, its in data.items() for it in its]
    assert len(result.records) == len(items) and not result.skipped
    for rec, (split, it) in zip(result.records, items, strict=True):
        assert rec.study_id == it["id"]
        assert rec.patient_id == re.match(r"CXR(\d+)_", it["id"]).group(1)
        assert rec.split == split and rec.findings == it["report"].strip()
        assert [Path(m["path"]) for m in rec.meta["missing_images"]] == [
            iu_dir / "images" / p for p in it["image_path"]
        ]


def test_real_iu_annotation_skip_mode_counts_every_image(iu_dir):
    data = json.loads((iu_dir / "annotation.json").read_text())
    n_items = sum(len(v) for v in data.values())
    n_images = sum(len(it["image_path"]) for v in data.values() for it in v)
    result = read_source("annotation-json", iu_dir)  # folder: annotation.json inside
    present = sum((iu_dir / "images" / p).is_file() for v in data.values() for it in v for p in it["image_path"])
    assert result.skip_summary().get("image not found", 0) == n_images - present
    assert len(result.records) + result.skip_summary().get("no usable images", 0) == n_items


def _write(tmp_path: Path, data) -> Path:
    p = tmp_path / "annotation.json"
    p.write_text(json.dumps(data))
    return p


def _img(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4)).save(path)


def test_iu_style_with_every_bad_item(tmp_path):
    for rel in ("CXR1_IM-1/0.png", "CXR1_IM-1/1.png", "CXR2_IM-2/0.png"):
        _img(tmp_path / "images" / rel)
    data = {
        "train": [
            {
                "id": "CXR1_IM-1",
                "report": " Heart normal. ",
                "image_path": ["CXR1_IM-1/0.png", "CXR1_IM-1/1.png"],
                "split": "train",
            },
            {"id": "CXR2_IM-2", "report": "", "image_path": ["CXR2_IM-2/0.png"], "split": "train"},
            {"id": "CXR3_IM-3", "report": "Clear.", "image_path": ["CXR3_IM-3/0.png"], "split": "train"},
            {"id": "CXR1_IM-1", "report": "Again.", "image_path": ["CXR1_IM-1/0.png"], "split": "train"},
            {"report": "no id", "image_path": []},
            "not an object",
            {"id": "x", "report": "r", "image_path": [3]},
        ],
        "val": [{"id": "odd-id", "report": "Clear.", "image_path": "CXR2_IM-2/0.png"}],
    }
    result = read_source("annotation-json", _write(tmp_path, data))
    assert [(r.study_id, r.patient_id, r.split) for r in result.records] == [
        ("CXR1_IM-1", "1", "train"),
        ("odd-id", "odd-id", "val"),
    ]
    assert result.records[0].findings == "Heart normal." and result.records[0].impression == ""
    assert [im.view for im in result.records[0].images] == ["UNKNOWN", "UNKNOWN"]
    assert result.skip_summary() == {
        "empty findings and impression": 1,
        "image not found": 1,
        "no usable images": 1,
        "duplicate id (study CXR1_IM-1 already read)": 1,
        "malformed item": 3,
    }


def test_mimic_style_items_merge_into_studies(tmp_path):
    for name in ("a", "b", "c"):
        _img(tmp_path / "imgs" / f"p10/p10000032/s5/{name}.jpg")
    item = {"study_id": 5, "subject_id": 10000032, "report": "No effusion.", "split": "train"}
    data = {
        "train": [
            {**item, "id": "a", "image_path": ["p10/p10000032/s5/a.jpg"]},
            {**item, "id": "b", "image_path": ["p10/p10000032/s5/b.jpg"]},
            {**item, "id": "c", "image_path": ["p10/p10000032/s5/c.jpg"], "report": "Different."},
        ]
    }
    result = read_source("annotation-json", _write(tmp_path, data), image_root=tmp_path / "imgs")
    (rec,) = result.records
    assert (rec.study_id, rec.patient_id) == ("5", "10000032")
    assert [Path(im.path).name for im in rec.images] == ["a.jpg", "b.jpg"]
    assert rec.meta["annotation_ids"] == ["a", "b"]
    assert [s.reason for s in result.skipped] == ["report differs from the first item of study 5"]


def test_promptmrg_flat_list_keeps_labels(tmp_path):
    _img(tmp_path / "images" / "x.png")
    data = [{"id": "CXR9_IM-9", "report": "Normal.", "image_path": ["x.png"], "labels": [0] * 18}]
    (rec,) = read_source("annotation-json", _write(tmp_path, data)).records
    assert rec.split is None and rec.meta["annotation_labels"] == [0] * 18 and rec.patient_id == "9"


@pytest.mark.parametrize(
    ("content", "match"),
    [("{not json", "not valid JSON"), ('{"train": {"id": 1}}', "expected"), ("3", "expected"), ("{}", "expected")],
)
def test_bad_file_shapes(tmp_path, content, match):
    p = tmp_path / "annotation.json"
    p.write_text(content)
    with pytest.raises(DataError, match=match) as e:
        read_source("annotation-json", p)
    assert str(p) in str(e.value)


def test_folder_without_annotation_json(tmp_path):
    with pytest.raises(DataError, match="annotation.json: annotation file not found"):
        read_source("annotation-json", tmp_path)


def test_strict(tmp_path):
    p = _write(tmp_path, {"test": [{"id": "CXR1_IM-1", "report": "x", "image_path": ["nope.png"]}]})
    with pytest.raises(DataError, match="nope.png: image not found"):
        read_source("annotation-json", p, strict=True)
