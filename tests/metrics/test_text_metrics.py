"""Text metrics equal pycocoevalcap's scorers called directly; METEOR is optional and never crashes without Java."""

from __future__ import annotations

import math
import random
import shutil
import stat
from pathlib import Path

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from fedmrg.data.cleaning import clean_report_mimic
from fedmrg.errors import DataError
from fedmrg.metrics import MeteorUnavailable, normalize_report, text_metrics
from fedmrg.metrics.meteor import compute_meteor


def _r2gen(text: str) -> str:
    """R2Gen-cleaned text with single spaces: what R2Gen's tokenizer decode gives back."""
    return " ".join(clean_report_mimic(text).split())


def _direct(preds: dict[str, str], refs: dict[str, str], clean=_r2gen) -> dict[str, float]:
    """The scores from pycocoevalcap's scorers, called the way R2Gen does on cleaned text."""
    gts = {k: [clean(refs[k])] for k in refs}
    res = {k: [clean(preds[k])] for k in refs}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"BLEU_{n}": b for n, b in enumerate(bleu, start=1)}
    out["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    out["CIDEr"] = Cider().compute_score(gts, res)[0]
    return out


def _assert_matches_direct(preds: dict[str, str], refs: dict[str, str], **kwargs) -> dict:
    got = text_metrics(preds, refs, meteor=False, **kwargs)
    want = _direct(preds, refs, **({"clean": normalize_report} if kwargs.get("normalize") == "basic" else {}))
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert got["n_reports"] == len(refs) >= 100
    # a real corpus, not a degenerate one: the scores are strictly between 0 and a perfect match
    assert 0.0 < got["BLEU_4"] < got["BLEU_1"] < 1.0
    assert 0.0 < got["ROUGE_L"] < 1.0 and got["CIDEr"] > 0.0
    return got


@pytest.mark.parametrize("normalize", ["r2gen-mimic", "basic"])
def test_matches_pycocoevalcap_on_synthetic_reports(synthetic_pairs, normalize):
    preds, refs = synthetic_pairs
    _assert_matches_direct(preds, refs, normalize=normalize)


@pytest.mark.shared_data
def test_matches_pycocoevalcap_on_real_iu_reports(iu_pairs):
    preds, refs = iu_pairs
    got = _assert_matches_direct(preds, refs)
    assert got["n_reports"] == 300


def test_identical_reports_score_one_and_hand_computed_bleu():
    refs = {"a": "The heart is normal size.", "b": "No pleural effusion.", "c": "Lungs are clear."}
    same = text_metrics(dict(refs), refs, meteor=False)
    assert same["BLEU_1"] == pytest.approx(1.0, abs=1e-6)
    assert same["BLEU_4"] == pytest.approx(1.0, abs=1e-6)
    assert same["ROUGE_L"] == pytest.approx(1.0)
    # CIDEr of a perfect match: cosine 1 for each n-gram order (every report has a 4-gram), no length penalty,
    # times 10
    assert same["CIDEr"] == pytest.approx(10.0)

    # one pair: "the heart is normal ." (5 tokens) against "the heart is normal size ." (6 tokens).
    # Every hypothesis unigram matches, so p1 = 5/5; brevity penalty exp(1 - 6/5) = 0.818730753...
    one = text_metrics({"a": "The heart is normal."}, {"a": refs["a"]}, meteor=False)
    assert one["BLEU_1"] == pytest.approx(math.exp(1 - 6 / 5), abs=1e-6)
    # ROUGE-L: LCS = 5, P = 5/5, R = 5/6, F = (1 + 1.2^2) P R / (R + 1.2^2 P)
    p, r = 1.0, 5 / 6
    assert one["ROUGE_L"] == pytest.approx((1 + 1.44) * p * r / (r + 1.44 * p))


def test_independent_of_id_order(synthetic_pairs):
    preds, refs = synthetic_pairs
    ids = list(refs)
    random.Random(1).shuffle(ids)
    shuffled = text_metrics({k: preds[k] for k in ids}, {k: refs[k] for k in ids}, meteor=False)
    base = text_metrics(preds, refs, meteor=False)
    for key in ("BLEU_1", "BLEU_4", "ROUGE_L", "CIDEr"):
        assert shuffled[key] == pytest.approx(base[key], abs=1e-12)


def test_mismatched_ids_list_a_few_of_each():
    refs = {f"r{i}": "normal." for i in range(10)}
    preds = {f"r{i}": "normal." for i in range(3)} | {"extra-1": "x.", "extra-2": "y."}
    with pytest.raises(DataError) as exc:
        text_metrics(preds, refs, meteor=False)
    msg = str(exc.value)
    assert "7 reference id(s) have no prediction" in msg and "'r3'" in msg and "'r9'" not in msg
    assert "2 prediction id(s) have no reference" in msg and "'extra-1'" in msg


def test_empty_texts():
    refs = {"a": "Normal heart.", "b": "No effusion."}
    # R2Gen's cleaner turns "" into " ." and " ... " into " . .": no words, so empty
    with pytest.raises(DataError, match=r"1 prediction\(s\) hold no words.*'b'"):
        text_metrics({"a": "Normal heart.", "b": " ... "}, refs, meteor=False)
    with pytest.raises(DataError, match=r"reference\(s\) hold no words.*'a'"):
        text_metrics(refs, {"a": "", "b": "x"}, meteor=False)
    got = text_metrics({"a": "Normal heart.", "b": ""}, refs, meteor=False, allow_empty_predictions=True)
    assert got["n_empty_predictions"] == 1
    assert got["ROUGE_L"] == pytest.approx(0.5)  # 1.0 for "a", 0.0 for the empty "b"


def test_conventions_stated(synthetic_pairs):
    preds, refs = synthetic_pairs
    conv = text_metrics(preds, refs, meteor=False)["conventions"]
    assert conv["text_normalization"].startswith("r2gen-mimic: fedmrg.data.cleaning.clean_report_mimic")
    assert "collapsed to single spaces" in conv["text_normalization"]
    assert "corpus level" in conv["BLEU"] and "beta = 1.2" in conv["ROUGE_L"] and "skipped" in conv["METEOR"]


# --- METEOR: present, absent, broken -------------------------------------------------------------------------


def _fake_java(tmp_path: Path, body: str) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    java = d / "java"
    java.write_text("#!/bin/sh\n" + body + "\n")
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    return d


def test_no_java_on_path_skips_with_note(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no java
    got = text_metrics({"a": "Normal heart."}, {"a": "The heart is normal."})
    assert got["METEOR"] is None
    assert "java" in got["notes"]["METEOR"] and "not found" in got["notes"]["METEOR"]
    assert got["BLEU_1"] > 0  # everything else still computed
    with pytest.raises(MeteorUnavailable, match="not found on PATH"):
        text_metrics({"a": "Normal heart."}, {"a": "The heart is normal."}, meteor=True)


def test_broken_java_skips_with_note(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(_fake_java(tmp_path, 'echo "Error: could not create the JVM" >&2; exit 1')))
    got = text_metrics({"a": "Normal heart."}, {"a": "The heart is normal."})
    assert got["METEOR"] is None and "METEOR failed" in got["notes"]["METEOR"]
    with pytest.raises(MeteorUnavailable, match="could not create the JVM"):
        text_metrics({"a": "Normal heart."}, {"a": "The heart is normal."}, meteor=True)


def test_hanging_java_is_stopped(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(_fake_java(tmp_path, "exec /bin/sleep 60")))
    with pytest.raises(MeteorUnavailable, match="did not finish within 0.5 s"):
        compute_meteor({"a": ["x ."]}, {"a": ["x ."]}, timeout_s=0.5)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="java not on PATH")
def test_meteor_matches_pycocoevalcap():
    """One JVM start (~7 s idle, far more on a busy machine), so one small pinned case.

    The expected values come from calling pycocoevalcap 1.2 directly (meteor-1.5.jar, OpenJDK 17):
    ``Meteor().compute_score({"a": ["the heart is normal ."], "b": ["no pleural effusion ."]},
    {"a": ["the heart is normal size ."], "b": ["there is a pleural effusion ."]})``
    -> ``(0.4569009137080179, [0.4766362624370249, 0.437166920555064])`` (note: gts are the first argument).
    """
    refs = {"a": "The heart is normal.", "b": "No pleural effusion."}
    preds = {"a": "The heart is normal size.", "b": "There is a pleural effusion."}
    got = text_metrics(preds, refs, meteor=True)
    assert got["METEOR"] == pytest.approx(0.4569009137080179, abs=1e-6)
    assert "METEOR" not in got["notes"] and got["timings_s"]["METEOR"] > 0
