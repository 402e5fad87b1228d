"""``fedmrg metrics`` end to end on temporary files, and each input error."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedmrg.cli import main
from fedmrg.metrics import evaluate_reports


def _write_jsonl(path: Path, rows: list[dict] | list[str]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path, synthetic_pairs):
    preds, refs = synthetic_pairs
    ids = list(refs)[:40]
    p = _write_jsonl(tmp_path / "pred.jsonl", [{"id": k, "report": preds[k]} for k in ids])
    r = _write_jsonl(tmp_path / "ref.jsonl", [{"id": k, "report": refs[k], "split": "test"} for k in reversed(ids)])
    return p, r, {k: preds[k] for k in ids}, {k: refs[k] for k in ids}


def test_end_to_end(files, tmp_path, capsys):
    p, r, preds, refs = files
    out = tmp_path / "res" / "metrics.json"
    rc = main(["metrics", "--predictions", str(p), "--references", str(r), "--out", str(out), "--no-meteor"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "40 reports" in printed and "BLEU-4" in printed and "example_based" in printed and "micro" in printed
    result = json.loads(out.read_text())
    want = evaluate_reports(preds, refs, meteor=False)
    for key in ("BLEU_1", "BLEU_4", "ROUGE_L", "CIDEr"):
        assert result["text"][key] == pytest.approx(want["text"][key], abs=1e-12)
        assert f"{result['text'][key]:.4f}" in printed
    assert result["clinical"]["micro"] == pytest.approx(want["clinical"]["micro"])
    assert result["text"]["METEOR"] is None and "disabled" in result["conventions"]["text"]["METEOR"]
    assert "clean_report_mimic" in result["conventions"]["text"]["text_normalization"]
    assert "text normalisation: r2gen-mimic" in printed
    assert "positive" in result["conventions"]["clinical"]
    assert result["inputs"] == {"predictions": str(p), "references": str(r)}


def test_custom_keys_and_no_clinical(tmp_path, capsys):
    p = _write_jsonl(tmp_path / "p.jsonl", [{"study": 1, "text": "Heart normal."}, "", {"study": 2, "text": "Clear."}])
    r = _write_jsonl(
        tmp_path / "r.jsonl", [{"study": "2", "findings": "Lungs clear."}, {"study": "1", "findings": "x"}]
    )
    argv = ["metrics", "--predictions", str(p), "--references", str(r), "--id-key", "study", "--text-key", "text"]
    rc = main([*argv, "--reference-text-key", "findings", "--no-clinical", "--no-meteor"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "2 reports" in printed and "clinical efficacy" not in printed


def test_console_entry_point(files, tmp_path):
    p, r, _, _ = files
    out = tmp_path / "m.json"
    cmd = [sys.executable, "-m", "fedmrg.cli", "metrics", "--predictions", str(p), "--references", str(r)]
    proc = subprocess.run([*cmd, "--out", str(out), "--no-meteor", "--no-clinical"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["n_reports"] == 40 and "ROUGE-L" in proc.stdout


@pytest.mark.parametrize(
    "pred_lines, message",
    [
        (None, "pred.jsonl: file not found"),
        (['{"id": "a", "report": "ok."}', '{"id": "b", "report": '], r"pred.jsonl:2: invalid JSON"),
        (['["a", "ok."]'], r"pred.jsonl:1: expected a JSON object, got list"),
        (['{"id": "a", "text": "ok."}'], r"pred.jsonl:1: missing key 'report' \(keys present: \['id', 'text'\]\)"),
        (['{"id": "a", "report": "ok."}', '{"id": "b", "report": "  "}'], r"pred.jsonl:2: empty 'report' for id 'b'"),
        (['{"id": "a", "report": 3}'], r"pred.jsonl:1: 'report' must be a string, got int"),
        (['{"id": ["a"], "report": "ok."}'], r"pred.jsonl:1: 'id' must be a string or an integer, got list"),
        (['{"id": "a", "report": "x."}', '{"id": "a", "report": "y."}'], r"pred.jsonl:2: duplicate id 'a'.*line 1"),
        ([""], r"pred.jsonl: no records"),
        (['{"id": "zz", "report": "ok."}'], r"1 reference id\(s\) have no prediction, e.g. \['a'\].*\['zz'\]"),
    ],
)
def test_input_errors(tmp_path, capsys, pred_lines, message):
    p = tmp_path / "pred.jsonl"
    if pred_lines is not None:
        _write_jsonl(p, pred_lines)
    r = _write_jsonl(tmp_path / "ref.jsonl", [{"id": "a", "report": "The heart is normal."}])
    rc = main(["metrics", "--predictions", str(p), "--references", str(r), "--no-meteor", "--no-clinical"])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("fedmrg metrics: error: ")
    assert re.search(message, err), err


def test_allow_empty_predictions(tmp_path, capsys):
    p = _write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "report": ""}, {"id": "b", "report": "No effusion."}])
    r = _write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "report": "Normal."}, {"id": "b", "report": "No effusion."}])
    argv = ["metrics", "--predictions", str(p), "--references", str(r), "--no-meteor", "--no-clinical"]
    assert main(argv) == 1 and "empty 'report' for id 'a'" in capsys.readouterr().err
    assert main([*argv, "--allow-empty-predictions"]) == 0
    assert "2 reports (1 empty predictions)" in capsys.readouterr().out


def test_meteor_without_java(files, tmp_path, monkeypatch, capsys):
    p, r, _, _ = files
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no java anywhere on PATH
    argv = ["metrics", "--predictions", str(p), "--references", str(r), "--no-clinical"]
    assert main(argv) == 0  # default: METEOR skipped with a note, the rest computed
    assert re.search(r"METEOR\s+n/a\s+\(skipped: `java` not found on PATH", capsys.readouterr().out)
    assert main([*argv, "--meteor"]) == 1  # required: a clean error, not a traceback
    assert "error: `java` was not found on PATH" in capsys.readouterr().err
