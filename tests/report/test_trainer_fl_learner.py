"""FedMRGLearner: the FL learner protocol on top of LocalTrainer (numpy float32 states, private S2, bank extra)."""

from __future__ import annotations

import numpy as np
import yaml

from fedmrg.cli import main
from fedmrg.fl.learner import SharedStateLearner, build_learner, check_state


def test_learner_round_trip(tmp_path, tiny_llama_dir):
    data = tmp_path / "data"
    assert main(["data", "prepare", "--source", "synthetic", "--num-studies", "30", "--sites", "2",
                 "--image-size", "64", "--seed", "1", "--out", str(data)]) == 0  # fmt: skip
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "encoder": {"preset": "resnet-tiny", "image_size": 64},
        "decoder": {"path": str(tiny_llama_dir), "mode": "llm", "max_report_tokens": 32},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "memory_bank": {"upload_per_round": 4},
        "generation": {"num_beams": 1, "max_new_tokens": 8},
        "training": {"batch_size": 4, "rounds": 2, "device": "cpu"},
    }))  # fmt: skip
    args = {"config": str(config), "local_steps": 2, "validate_max_studies": 3}
    server = build_learner("fedmrg.report.fl_learner.FedMRGLearner", args)
    initial = check_state(server.initial_shared_state(), server.shared_keys(), what="initial state")

    site = build_learner("fedmrg.report.fl_learner.FedMRGLearner", args)
    assert isinstance(site, SharedStateLearner)
    site.setup("site-1", str(tmp_path / "ws"), {"data_root": str(data)})
    assert site.shared_keys() == sorted(initial)
    out = site.train(initial, round_num=0, extra={})
    check_state(out.shared_state, site.shared_keys(), what="upload")
    assert out.num_samples == 8 and out.extra["bank"].shape[0] == 4 and out.extra["bank"].dtype == np.float32

    peer_bank = {"bank": {"site-2": out.extra["bank"] * -1.0}}
    out2 = site.train(out.shared_state, round_num=1, extra=peer_bank)
    assert np.isfinite(out2.metrics["g/con"])

    from fedmrg.report.shared_state import get_shared_state

    before = get_shared_state(site._model)
    metrics = site.validate(initial, personalized=True, split="val")  # another state: must not stick
    n_val = len(site._data.split("site-1", "val"))
    assert set(metrics) == {"bleu4", "rouge_l", "ce_f1", "diag_f1", "n"} and metrics["n"] == min(3, n_val)
    after = get_shared_state(site._model)
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)

    (tmp_path / "private").mkdir()
    site.save_private(str(tmp_path / "private"))
    restored = build_learner("fedmrg.report.fl_learner.FedMRGLearner", args)
    restored.load_private(str(tmp_path / "private"))
    assert restored._private.keys() == site._private.keys()
    assert all(np.array_equal(restored._private[k].numpy(), site._private[k].numpy()) for k in site._private)


def test_base_learner_refuses_site_model_paths_it_cannot_apply(tmp_path):
    import pytest

    from fedmrg.errors import ConfigError
    from fedmrg.report.fl_learner import FedMRGLearner

    with pytest.raises(ConfigError, match="`model_paths`.*JobFedMRGLearner"):
        FedMRGLearner().setup("site-1", str(tmp_path), {"model_paths": {"decoder.path": "/models/x"}})
