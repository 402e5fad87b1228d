"""FedMRGLearner: the FL learner protocol on top of LocalTrainer (numpy float32 states, private S2, bank extra), and
the site settings it honours or refuses (DP-SGD)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from fedmrg.cli import main
from fedmrg.errors import ConfigError
from fedmrg.fl.learner import SharedStateLearner, build_learner, check_state
from fedmrg.fl.site_config import SiteConfig
from fedmrg.privacy.dp_config import DPSGDConfig


@pytest.mark.slow  # ~55-65 s on the shared 2-core machine
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
    site.setup("site-1", str(tmp_path / "ws"), SiteConfig(site="site-1", data_root=str(data)))
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


def test_the_former_learner_path_is_the_same_class():
    from fedmrg.report.fl_job_learner import JobFedMRGLearner
    from fedmrg.report.fl_learner import FedMRGLearner

    assert JobFedMRGLearner is FedMRGLearner  # one class, configured, not subclassed
    assert FedMRGLearner.__bases__ == (object,)


def _tiny_config(tmp_path, tiny_llama_dir, **extra) -> str:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "encoder": {"preset": "resnet-tiny", "image_size": 32},
        "decoder": {"path": str(tiny_llama_dir), "mode": "llm", "max_report_tokens": 16},
        "training": {"batch_size": 2, "rounds": 1, "device": "cpu"},
    } | extra))  # fmt: skip
    return str(config)


DP_ON = {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0}


@pytest.mark.parametrize(
    ("job_extra", "site_dp", "message"),
    [
        # the job keeps the contrastive loss: the site's DP-SGD cannot be honoured, refused before any data
        (
            {},
            DP_ON,
            r"site 'site-1' /kit/fedmrg_site.json: `dp_sgd` cannot be honoured with this job: .*no_contrastive",
        ),
        # the job enables DP-SGD; a site may tune it, never switch it off
        (
            {"ablations": {"no_contrastive": True}, "privacy": {"dp_sgd": DP_ON}},
            DPSGDConfig(enabled=False),
            r"/kit/fedmrg_site.json `dp_sgd.enabled` is false but the job enables DP-SGD",
        ),
    ],
    ids=["cannot-honour", "site-switches-job-dp-off"],
)
def test_a_dp_setting_that_cannot_be_honoured_stops_the_site(tmp_path, tiny_llama_dir, job_extra, site_dp, message):
    from fedmrg.report.fl_learner import FedMRGLearner

    dp = site_dp if isinstance(site_dp, DPSGDConfig) else DPSGDConfig(**site_dp)
    site = SiteConfig(site="site-1", source="/kit/fedmrg_site.json", data_root=str(tmp_path / "no-data"), dp_sgd=dp)
    learner = FedMRGLearner(config=_tiny_config(tmp_path, tiny_llama_dir, **job_extra))
    with pytest.raises(ConfigError, match=message):
        learner.setup("site-1", str(tmp_path / "ws"), site)
    assert learner._data is None and learner._trainer is None  # never got as far as the data


def test_a_site_switches_dp_sgd_on_for_itself(tmp_path, tiny_llama_dir):
    from fedmrg.report.fl_learner import FedMRGLearner

    learner = FedMRGLearner(config=_tiny_config(tmp_path, tiny_llama_dir, ablations={"no_contrastive": True}))
    assert not learner._load_config().model.privacy.dp_sgd.enabled  # the job alone: off
    learner.apply_site_config(SiteConfig(site="site-1", dp_sgd=DPSGDConfig(**DP_ON, max_epsilon=8.0), device="cpu"))
    dp = learner._load_config().model.privacy.dp_sgd
    assert dp.enabled and dp.noise_multiplier == 1.0 and dp.max_epsilon == 8.0


def test_a_site_that_asks_for_dp_sgd_trains_with_it_and_reports_epsilon(tmp_path, tiny_llama_dir):
    """The site's own file switches DP-SGD on for a job that has it off: the round is private (epsilon reported, no
    un-noised losses), which is what the executor requires of every update of such a site."""
    from fedmrg.privacy.dp_config import DP_EPSILON_METRIC
    from fedmrg.report.fl_learner import FedMRGLearner

    data = tmp_path / "data"
    assert main(["data", "prepare", "--source", "synthetic", "--num-studies", "16", "--sites", "2",
                 "--image-size", "32", "--seed", "1", "--out", str(data)]) == 0  # fmt: skip
    learner = FedMRGLearner(
        config=_tiny_config(tmp_path, tiny_llama_dir, ablations={"no_contrastive": True}), local_steps=1
    )
    assert FedMRGLearner.honours_dp_sgd is True
    site = SiteConfig(site="site-1", data_root=str(data), dp_sgd=DPSGDConfig(**DP_ON, max_epsilon=50.0))
    learner.setup("site-1", str(tmp_path / "ws"), site)
    out = learner.train(learner.initial_shared_state(), round_num=0, extra={})
    assert out.metrics[DP_EPSILON_METRIC] > 0
    assert not any("loss" in k or k.startswith(("g/", "s/")) for k in out.metrics), sorted(out.metrics)
