"""`poc/fedmrg_poc.py`'s result report on a downloaded job (fast: no federation, a summary written here)."""

from __future__ import annotations

import json

from .conftest import load_poc


def test_report_prints_rounds_and_cross_site_of_the_hospitals_that_trained(tmp_path, capsys):
    site = {"accepted": True, "num_samples": 4, "bytes_up": 10, "bytes_down": 12, "train": {}, "val": {}}
    summary = {
        "rounds": [
            {"round": 0, "seconds": 1.5, "bytes_up": 20, "bytes_down": 24, "val": {"bleu4": 0.1, "ce_f1": 0.2},
             "sites": {"hospital-a": site, "hospital-b": site, "hospital-c": {"bytes_down": 12}}},
        ],
        "cross_site": {"hospital-a": {"SRV_FL_global_model": {"bleu4": 0.3, "personalized_bleu4": 0.4, "n": 5.0}}},
    }  # fmt: skip
    app = tmp_path / "app_server"
    (app / "summary").mkdir(parents=True)
    (app / "summary" / "summary.json").write_text(json.dumps(summary))
    assert load_poc().report(app) == summary
    out = capsys.readouterr().out
    assert "| 0 | 0.100 |" in out and "| hospital-a | 0.300 | 0.400 |" in out
    assert "| hospital-b |" in out and "hospital-c" not in out  # it never trained
