"""scripts/vision_compare.py: the table's numbers are read correctly from a run summary."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "vision_compare.py"


@pytest.fixture(scope="module")
def cmp():
    spec = importlib.util.spec_from_file_location("vision_compare", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _summary(vals: list[float], shared: int, share: float) -> dict:
    rounds = [{"round": i, "bytes_down": 100 + i, "bytes_up": 200, "val": {"dice": v},
               "train": {"trained_share": share}} for i, v in enumerate(vals)]
    cross = {f"site-{k}": {"SRV_FL_global_model": {"dice": 0.5 + 0.1 * k, "hd95": 10.0 * k},
                           f"site-{k}": {"dice": 0.1 * k, "hd95": 1.0}} for k in (1, 2)}
    return {"rounds": rounds, "cross_site": cross, "shared_param_bytes": shared, "totals": {"seconds": 12.0}}


def test_rounds_to_95(cmp):
    assert cmp.rounds_to_fraction([0.1, 0.5, 0.96, 0.9, 1.0]) == 2
    assert cmp.rounds_to_fraction([0.2, 0.3, 0.4]) == 2
    assert cmp.rounds_to_fraction([]) is None
    assert cmp.rounds_to_fraction([0.3, 0.0]) is None


def test_summarise_and_table(cmp, tmp_path):
    for method, shared, share in (("full_ft", 4000, 1.0), ("prompt_gen", 400, 0.1), ("local", 400, 0.1)):
        d = tmp_path / method
        d.mkdir()
        (d / "summary.json").write_text(json.dumps(_summary([0.2, 0.7, 0.8], shared, share)))
    rows = [cmp.summarise(tmp_path / m, m, "segmentation") for m in ("full_ft", "prompt_gen", "local")]
    ft, pg, loc = rows
    assert pg["dice"] == pytest.approx(0.65)  # mean over sites of the global model
    assert loc["dice"] == pytest.approx(0.15)  # local: each site's own model
    assert pg["hd95"] == pytest.approx(15.0)
    assert pg["rounds_to_95_dice"] == 2  # 0.7 < 0.95 * 0.8
    assert pg["bytes_per_round"] == pytest.approx(301.0)
    assert pg["trained_share"] == pytest.approx(0.1)
    md = cmp.table_markdown(rows, "segmentation", "header")
    pg_line = next(line for line in md.splitlines() if line.startswith("| prompt_gen"))
    assert "10.0x less" in pg_line and "10.00 %" in pg_line
    assert "1.0x" in next(line for line in md.splitlines() if line.startswith("| full_ft"))
