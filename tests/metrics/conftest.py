"""Report-pair fixtures for the metric tests: synthetic (always) and real IU X-ray pairs (skipped without data).

No real report text is stored in the repository: the IU pairs are built from the shared CSV at test time.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

# Invented sentences in the style of chest radiograph reports (not taken from any dataset).
_SENTENCES = (
    "The heart size is normal.",
    "The heart is mildly enlarged.",
    "Mediastinal contours are within normal limits.",
    "No focal consolidation, pleural effusion, or pneumothorax.",
    "There is a small left pleural effusion.",
    "Lungs are clear bilaterally.",
    "Mild bibasilar atelectasis.",
    "Patchy opacity in the right lower lobe, concerning for pneumonia.",
    "Degenerative changes of the thoracic spine.",
    "A right-sided central venous catheter tip projects over the SVC.",
    "No acute cardiopulmonary abnormality.",
    "Stable 2.5 cm nodule in the left upper lobe.",
    "Pulmonary vascularity is normal; no edema.",
    "Healed fracture of the left 6th rib.",
    "Possible early interstitial edema (cannot exclude).",
)


def make_synthetic_pairs(n: int, *, seed: int) -> tuple[dict[str, str], dict[str, str]]:
    """``(predictions, references)``: n raw-style reference reports and noisy copies of them as predictions."""
    rng = random.Random(seed)
    preds: dict[str, str] = {}
    refs: dict[str, str] = {}
    for i in range(n):
        ref = rng.sample(_SENTENCES, rng.randint(2, 6))
        pred = [s for s in ref if rng.random() > 0.3]  # drop some sentences
        if rng.random() < 0.7:
            pred.append(rng.choice(_SENTENCES))  # add a possibly wrong one
        rng.shuffle(pred)
        if not pred:
            pred = [rng.choice(_SENTENCES)]
        refs[f"syn-{i:04d}"] = " ".join(ref)
        preds[f"syn-{i:04d}"] = " ".join(pred)
    return preds, refs


@pytest.fixture(scope="session")
def synthetic_pairs() -> tuple[dict[str, str], dict[str, str]]:
    return make_synthetic_pairs(150, seed=0)


@pytest.fixture(scope="session")
def iu_pairs(iu_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """300 pairs of real IU reports: reference = findings of report i; prediction = the impression of report i
    (odd i) or the findings of the next report (even i), so overlap ranges from none to much."""
    with (iu_dir / "indiana_reports.csv").open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["findings"].strip()]
    rows = rows[:301]
    assert len(rows) == 301, "expected at least 301 IU reports with findings"
    preds: dict[str, str] = {}
    refs: dict[str, str] = {}
    for i, row in enumerate(rows[:-1]):
        refs[row["uid"]] = row["findings"]
        other = row["impression"] if i % 2 and row["impression"].strip() else rows[i + 1]["findings"]
        preds[row["uid"]] = other
    return preds, refs
