"""scripts/diagnose_findings.py: the MeSH agreement footer (a reference that is not the labeler)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).parents[2] / "scripts" / "diagnose_findings.py"
_spec = importlib.util.spec_from_file_location("diagnose_findings", _PATH)
diagnose = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(diagnose)


def test_mesh_agreement_counts_positives_against_the_human_indexing():
    mesh = {
        "a": ["Cardiomegaly/mild", "Pleural Effusion/right"],
        "b": ["normal"],
        "c": ["No Indexing"],  # left out
    }
    rows = [
        {"study_id": "a", "prediction": "the heart is enlarged. no pleural effusion."},  # cardiomegaly tp, effusion fn
        {"study_id": "b", "prediction": "there is a small left pleural effusion."},  # effusion fp, No Finding fn
        {"study_id": "c", "prediction": "the heart is enlarged."},
        {"study_id": "d", "prediction": "the heart is enlarged."},  # no MeSH: left out
    ]
    out = diagnose.mesh_agreement(rows, mesh)
    assert out["n"] == 2
    # MeSH "normal" is the No Finding reference: 3 reference positives, 2 predicted, 1 in common
    assert out["precision"] == pytest.approx(1 / 2) and out["recall"] == pytest.approx(1 / 3)
    assert out["f1"] == pytest.approx(0.4)
    assert diagnose.mesh_agreement(rows[2:], mesh) is None
