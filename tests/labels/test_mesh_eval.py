"""MeSH parsing and scoring (invented cells)."""

from __future__ import annotations

import pytest

from fedmrg.labels.mesh_eval import markdown_table, mesh_has, parse_mesh, score_against_mesh


def test_parse_and_match_terms_with_subterms() -> None:
    entries = parse_mesh("Cardiac Shadow/enlarged/mild;Pleural Effusion/right/small; normal")
    assert entries[0] == ("cardiac shadow", ("enlarged", "mild"))
    assert mesh_has(entries, "Cardiac Shadow/enlarged")
    assert mesh_has(entries, "pleural effusion")
    assert mesh_has(entries, "normal")
    assert not mesh_has(entries, "Cardiac Shadow/borderline")
    assert not mesh_has(entries, "Pleural")  # whole main headings only


def test_score_against_mesh() -> None:
    labels = [{"Cardiomegaly": 1}, {"Cardiomegaly": -1}, {"Cardiomegaly": None}, {"Cardiomegaly": 1}]
    mesh = ["Cardiomegaly/mild", "Cardiomegaly", "normal", "normal"]
    ref = {"Cardiomegaly": ("Cardiomegaly",)}
    (s,) = score_against_mesh(labels, mesh, ref)
    assert (s.support, s.predicted, s.n) == (2, 2, 4)
    assert s.precision == pytest.approx(0.5) and s.recall == pytest.approx(0.5) and s.f1 == pytest.approx(0.5)
    (u,) = score_against_mesh(labels, mesh, ref, uncertain_as_positive=True)
    assert u.recall == pytest.approx(1.0) and u.precision == pytest.approx(2 / 3)
    table = markdown_table([s])
    assert "| Cardiomegaly | Cardiomegaly | 0.500 | 0.500 | 0.500 | 2 | 2 |" in table


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        score_against_mesh([{}], [])
