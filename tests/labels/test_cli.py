"""``fedmrg label`` end to end on temporary CSV files (invented reports)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fedmrg.cli import main
from fedmrg.observations import OBSERVATIONS


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def reports_csv(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "reports.csv",
        [
            {"uid": "a1", "findings": "Mild cardiomegaly. No pleural effusion.", "impression": "Cardiomegaly."},
            {"uid": "a2", "findings": "", "impression": "Possible right lower lobe pneumonia."},
            {"uid": "a3", "findings": "  ", "impression": ""},
            {"uid": "a4", "findings": "Lungs are clear. No pneumothorax.", "impression": "Normal."},
        ],
    )


def _args(src: Path, out: Path, *extra: str) -> list[str]:
    return ["label", str(src), "--id-column", "uid", "--text-column", "findings", "--out", str(out), *extra]


def test_label_cli_end_to_end(reports_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "labels.csv"
    assert main(_args(reports_csv, out, "--fallback-column", "impression")) == 0
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["uid", *OBSERVATIONS, "source"]
        rows = list(reader)
    assert [r["uid"] for r in rows] == ["a1", "a2", "a3", "a4"]  # nothing dropped, input order
    assert rows[0]["Cardiomegaly"] == "1" and rows[0]["Pleural Effusion"] == "0" and rows[0]["source"] == "findings"
    assert rows[1]["Pneumonia"] == "-1" and rows[1]["source"] == "impression"
    assert all(rows[2][o] == "" for o in OBSERVATIONS) and rows[2]["source"] == "none"
    assert rows[3]["No Finding"] == "1" and rows[3]["Pneumothorax"] == "0" and rows[3]["Fracture"] == ""
    err = capsys.readouterr().err
    assert "labeled 4 reports" in err and "1 from fallback 'impression'" in err
    assert "1 reports empty in 'findings' and 'impression'" in err and "a3" in err


def test_label_cli_without_fallback_counts_empty(reports_csv: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "labels.csv"
    assert main(_args(reports_csv, out, "--no-progress")) == 0
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["source"] for r in rows] == ["findings", "none", "none", "findings"]
    assert "2 reports empty in 'findings'" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--id-column", "--text-column", "--fallback-column"])
def test_missing_column_is_a_clear_error(reports_csv: Path, tmp_path: Path, capsys, option: str) -> None:
    args = _args(reports_csv, tmp_path / "o.csv", "--fallback-column", "impression")
    args[args.index(option) + 1] = "nope"
    assert main(args) == 1
    err = capsys.readouterr().err
    assert str(reports_csv) in err and "'nope'" in err
    assert "'uid', 'findings', 'impression'" in err  # lists the available columns
    assert not (tmp_path / "o.csv").exists()


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "absent.csv"
    assert main(_args(missing, tmp_path / "o.csv")) == 1
    assert f"reports CSV not found: {missing}" in capsys.readouterr().err


def test_label_is_registered() -> None:
    with pytest.raises(SystemExit) as e:
        main(["label", "--help"])
    assert e.value.code == 0
