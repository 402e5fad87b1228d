"""``fedmrg vision demo`` end to end through the FLARE simulator (small random SAM, synthetic polyp task)."""

from __future__ import annotations

import json

import pytest

from fedmrg.cli import main
from fedmrg.vision.bundle import load_model_dir


@pytest.mark.slow
def test_demo_runs_the_simulator_and_leaves_a_loadable_model(tiny_backbones, tmp_path):
    out = tmp_path / "demo"
    rc = main(["vision", "demo", "--task", "polyp", "--backbone", str(tiny_backbones["sam"]), "--sites", "2",
               "--rounds", "1", "--local-steps", "2", "--eval-max-images", "16", "--out", str(out)])
    assert rc == 0, (out / "simulator.log").read_text()[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["rounds"]) == 1
    model, pre, info = load_model_dir(out / "model")
    assert info["synthetic"] is True and info["config"]["task"] == "synthetic_seg"
    assert pre.image_size == 32 and not model.backbone.vision_encoder.training
