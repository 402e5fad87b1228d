"""The labeler on real data: CheXpert's own labeled sample (exact) and IU X-ray's MeSH indexing (F1 floors).

Reads ``../shared/data`` at test time through the ``shared_data`` / ``iu_dir`` fixtures; nothing is copied here.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

from fedmrg.labels import label_report, label_reports
from fedmrg.labels.mesh_eval import NOT_INDEXED, parse_mesh, score_against_mesh
from fedmrg.labels.report_csv import NO_TEXT, read_report_csv
from fedmrg.observations import OBSERVATIONS

pytestmark = pytest.mark.shared_data


def test_chexpert_labeled_reports_match_exactly(shared_data: Path) -> None:
    path = shared_data / "chexpert_phrases" / "labeled_reports.csv"
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows, f"{path} has no rows"
    mismatches = []
    for row in rows:
        got = label_report(row["Reports"])
        for obs in OBSERVATIONS:
            want = None if row[obs] == "" else int(float(row[obs]))
            if got[obs] != want:
                mismatches.append((row["Reports"][:40], obs, got[obs], want))
    assert not mismatches


def test_chexpert_sample_reports_are_the_labeled_ones(shared_data: Path) -> None:
    # sample_reports.csv is the unlabeled input of labeled_reports.csv: same texts, same labels.
    d = shared_data / "chexpert_phrases"
    with (d / "sample_reports.csv").open(newline="", encoding="utf-8") as f:
        samples = [r[0] for r in csv.reader(f) if r]
    with (d / "labeled_reports.csv").open(newline="", encoding="utf-8") as f:
        labeled = [r["Reports"] for r in csv.DictReader(f)]
    assert samples == labeled
    assert label_reports(samples) == [label_report(t) for t in labeled]


def _iu_scores(iu_dir: Path, *, full_report: bool) -> tuple[dict[str, float], float, int]:
    rows = read_report_csv(
        iu_dir / "indiana_reports.csv", id_column="uid", text_column="findings", fallback_column="impression"
    )
    kept = [
        r
        for r in rows
        if r.source != NO_TEXT and not any(h == NOT_INDEXED.lower() for h, _ in parse_mesh(r.fields["MeSH"]))
    ]
    texts = [f"{r.fields['findings']}\n{r.fields['impression']}" if full_report else r.text for r in kept]
    t0 = time.process_time()  # CPU seconds of this process: the labeler's cost, not the other processes' load
    labels = label_reports(texts)
    seconds = time.process_time() - t0
    scores = score_against_mesh(labels, [r.fields["MeSH"] for r in kept])
    return {s.observation: s.f1 for s in scores}, seconds, len(rows)


# Measured (scripts/eval_labeler_iu.py): findings (impression fallback) 0.964 / 0.835 / 0.841 / 0.889,
# findings + impression 0.985 / 0.932 / 0.948 / 0.889. The floors sit a little below, so that a rule change that
# costs a few reports fails here.
FLOORS_FINDINGS = {"Cardiomegaly": 0.93, "Pleural Effusion": 0.80, "Atelectasis": 0.80, "Pneumothorax": 0.85}
FLOORS_FULL_REPORT = {"Cardiomegaly": 0.95, "Pleural Effusion": 0.90, "Atelectasis": 0.90, "Pneumothorax": 0.85}


def test_iu_mesh_f1_findings_text(iu_dir: Path) -> None:
    f1, seconds, n = _iu_scores(iu_dir, full_report=False)
    low = {o: round(f1[o], 3) for o, floor in FLOORS_FINDINGS.items() if f1[o] < floor}
    assert not low, f"F1 below floor: {low}"
    assert seconds < 10, f"labeling {n} IU reports took {seconds:.1f} CPU s"


def test_iu_mesh_f1_full_report(iu_dir: Path) -> None:
    f1, _, _ = _iu_scores(iu_dir, full_report=True)
    low = {o: round(f1[o], 3) for o, floor in FLOORS_FULL_REPORT.items() if f1[o] < floor}
    assert not low, f"F1 below floor: {low}"
