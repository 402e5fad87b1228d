"""Head calibration (training.head_calibration: lda): additive per-site statistics, the closed-form head, the
configuration's refusals, and the learner that refuses it where no calibration round runs (the FLARE job)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from fedmrg.errors import ConfigError
from fedmrg.observations import OBSERVATIONS, State
from fedmrg.report.head_calibration import ABSENT_STATE_BIAS, HeadStatistics, fit_lda_head

NF, CARDIO = OBSERVATIONS.index("No Finding"), OBSERVATIONS.index("Cardiomegaly")


def _site(n: int, normal_rate: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature 0 tells a normal study (No Finding positive) from one with cardiomegaly; 7 noise features."""
    normal = torch.rand(n, generator=gen) < normal_rate
    x = torch.randn(n, 8, generator=gen)
    x[:, 0] += torch.where(normal, 2.0, -2.0)
    y = torch.full((n, len(OBSERVATIONS)), int(State.BLANK))
    y[normal, NF] = int(State.POSITIVE)
    y[~normal, CARDIO] = int(State.POSITIVE)
    return x, y


def _stats(x, y) -> HeadStatistics:
    stats = HeadStatistics.zeros(x.shape[1])
    stats.add(x, y)
    return stats


def test_site_statistics_sum_to_the_pooled_statistics_and_travel_as_arrays():
    gen = torch.Generator().manual_seed(0)
    sites = [_site(50, 0.9, gen), _site(40, 0.1, gen)]  # label skew: normal studies live at the first site
    summed = _stats(*sites[0]) + _stats(*sites[1])
    pooled = _stats(torch.cat([s[0] for s in sites]), torch.cat([s[1] for s in sites]))
    assert summed.count == pooled.count == 90
    for a, b in ((summed.scatter, pooled.scatter), (summed.sums, pooled.sums), (summed.counts, pooled.counts)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9)
    again = HeadStatistics.from_arrays(summed.to_arrays())
    assert again.count == 90 and np.array_equal(again.sums, summed.sums)
    with pytest.raises(ValueError, match="feature widths differ"):
        summed + HeadStatistics.zeros(3)
    arrays = summed.to_arrays()
    with pytest.raises(ValueError, match="need count, scatter, sums, counts"):
        HeadStatistics.from_arrays({k: v for k, v in arrays.items() if k != "counts"})
    with pytest.raises(ValueError, match="shapes"):
        HeadStatistics.from_arrays(arrays | {"sums": arrays["sums"][:, :, :3]})


def test_the_lda_head_of_skewed_sites_reads_the_finding_that_their_average_head_misses():
    from fedmrg.report.diagnosis import DiagnosisHead

    gen = torch.Generator().manual_seed(1)
    sites = [_site(200, 0.9, gen), _site(200, 0.1, gen)]
    val_x, val_y = _site(200, 0.5, gen)
    weight, bias = fit_lda_head(_stats(*sites[0]) + _stats(*sites[1]), shrinkage=0.01)
    assert weight.shape == (len(OBSERVATIONS) * 4, 8) and bias.shape == (len(OBSERVATIONS) * 4,)
    head = DiagnosisHead(8)
    with torch.no_grad():
        head.linear.weight.copy_(weight)
        head.linear.bias.copy_(bias)
        pred = head(val_x).argmax(-1)
    for o in (NF, CARDIO):
        assert (pred[:, o] == val_y[:, o]).float().mean() > 0.95
    # a state no study had (negative, uncertain) is never predicted; blank-only observations stay blank
    assert (bias.view(-1, 4)[OBSERVATIONS.index("Edema"), 1:] == ABSENT_STATE_BIAS).all()
    assert (pred[:, OBSERVATIONS.index("Edema")] == int(State.BLANK)).all()


def test_too_few_studies_are_refused():
    from fedmrg.errors import FedMRGError

    gen = torch.Generator().manual_seed(2)
    with pytest.raises(FedMRGError, match="more than 4 training studies"):
        fit_lda_head(_stats(*_site(3, 0.5, gen)))


def _config(tmp_path, tiny_llama_dir, **extra) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "encoder": {"preset": "resnet-tiny", "image_size": 32},
        "decoder": {"path": str(tiny_llama_dir), "mode": "llm", "max_report_tokens": 16},
        "training": {"batch_size": 2, "rounds": 1, "device": "cpu", "head_calibration": "lda"},
    } | extra))  # fmt: skip
    return str(path)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"method": "fedlora"}, r"calibrates the diagnosis head, which `method: fedlora` does not have"),
        (
            {
                "ablations": {"no_contrastive": True},
                "privacy": {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0}},
                "training": {"batch_size": 2, "device": "cpu", "balance_findings": 0, "head_calibration": "lda"},
            },
            r"DP-SGD does not protect",
        ),
        ({"training": {"head_calibration": "mean"}}, r"head_calibration` must be one of \['none', 'lda'\], got 'mean'"),
    ],
    ids=["no-head", "dp-sgd", "unknown"],
)
def test_the_configuration_refuses_what_it_cannot_honour(tmp_path, tiny_llama_dir, extra, message):
    from fedmrg.report.fl_learner import FedMRGLearner

    with pytest.raises(ConfigError, match=message):
        FedMRGLearner(config=_config(tmp_path, tiny_llama_dir, **extra))._load_config()


def test_a_site_whose_job_runs_no_statistics_round_refuses_calibration(tmp_path, tiny_llama_dir):
    from fedmrg.fl.site_config import SiteConfig
    from fedmrg.report.fl_learner import FedMRGLearner

    learner = FedMRGLearner(config=_config(tmp_path, tiny_llama_dir))
    assert learner.needs_statistics_round()
    with pytest.raises(ConfigError, match=r"head_calibration: lda` needs the statistics round .*`statistics_task`"):
        learner.setup("site-1", str(tmp_path / "ws"), SiteConfig(site="site-1", data_root=str(tmp_path / "none")))
    assert learner._data is None  # refused before any data is read
