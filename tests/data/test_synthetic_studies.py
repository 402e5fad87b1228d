"""make_synthetic_studies and render_for_records: records, files, determinism and errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fedmrg.data.records import StudyRecord, read_records, write_records
from fedmrg.data.synthetic import make_synthetic_studies, render_for_records
from fedmrg.errors import DataError


def test_studies_are_complete_and_round_trip(tmp_path):
    recs = make_synthetic_studies(12, n_styles=3, seed=4, image_dir=tmp_path / "images", image_size=64, progress=False)
    assert len({r.study_id for r in recs}) == 12 and len({r.patient_id for r in recs}) == 12
    assert [r.meta["style"] for r in recs] == [i % 3 for i in range(12)]
    for r in recs:
        assert r.synthetic and r.source == "synthetic" and r.labels is not None and r.report
        assert r.meta["renderer"]["size"] == 64 and isinstance(r.meta["renderer"]["seed"], int)
        path = tmp_path / r.images[0].path  # relative to image_dir's parent
        assert Image.open(path).size == (64, 64)
    write_records(recs, tmp_path / "records.jsonl")
    back = read_records(tmp_path / "records.jsonl")
    assert back[0].labels == recs[0].labels and Image.open(back[0].images[0].path).mode == "L"


def test_same_seed_identical_bytes_and_reports_any_worker_count(tmp_path):
    a = make_synthetic_studies(6, n_styles=2, seed=7, image_dir=tmp_path / "a", image_size=48, progress=False)
    b = make_synthetic_studies(
        6, n_styles=2, seed=7, image_dir=tmp_path / "b", image_size=48, progress=False, workers=2
    )
    c = make_synthetic_studies(6, n_styles=2, seed=8, image_dir=tmp_path / "c", image_size=48, progress=False)
    assert [(r.findings, r.impression, r.labels) for r in a] == [(r.findings, r.impression, r.labels) for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert (tmp_path / ra.images[0].path).read_bytes() == (tmp_path / rb.images[0].path).read_bytes()
    assert [r.findings for r in a] != [r.findings for r in c]


def test_render_for_records_uses_labels_or_labeler(tmp_path):
    recs = [
        StudyRecord("CXR1/a", "p1", findings="Mild cardiomegaly.", labels={"Cardiomegaly": 1}),
        StudyRecord("CXR 2", "p2", findings="No pleural effusion."),
    ]
    with pytest.raises(DataError, match="1 record"):
        render_for_records(recs, tmp_path / "img", seed=0, size=48, progress=False)

    def fake_labeler(text: str) -> dict[str, int | None]:
        return {"Pleural Effusion": 0} if "effusion" in text else {"Cardiomegaly": 1}

    out = render_for_records(recs, tmp_path / "img", seed=0, size=48, labels_fn=fake_labeler, progress=False)
    assert all(r.synthetic and r.meta["image"] == "rendered from report labels" for r in out)
    assert out[0].labels == {"Cardiomegaly": 1} and out[1].labels == {"Pleural Effusion": 0}
    files = [tmp_path / r.images[0].path for r in out]
    assert all(f.is_file() and "/" not in f.name for f in files)
    # same study id -> same image, whatever the order
    again = render_for_records(recs[::-1], tmp_path / "img2", seed=0, size=48, labels_fn=fake_labeler, progress=False)
    img0 = np.asarray(Image.open(files[0]))
    np.testing.assert_array_equal(img0, np.asarray(Image.open(tmp_path / again[1].images[0].path)))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_studies"):
        make_synthetic_studies(0, n_styles=1, seed=0, image_dir=tmp_path)
    with pytest.raises(ValueError, match="label_skew"):
        make_synthetic_studies(1, n_styles=1, seed=0, image_dir=tmp_path, label_skew=2.0)


def test_labeler_recovers_labels_from_record_report(tmp_path):
    """fedmrg.labels on ``record.report`` (what training uses) vs. the record's labels: measured 1.000 on 2,000
    studies x 14 observations in 10 styles with label skew 0.5; the test asserts > 0.98 on 300."""
    from fedmrg import labels
    from fedmrg.data.synthetic import label_agreement

    recs = make_synthetic_studies(
        300, n_styles=10, seed=5, image_dir=tmp_path / "i", image_size=16, label_skew=0.5, progress=False
    )
    assert label_agreement(recs, labels.label_report) > 0.98
