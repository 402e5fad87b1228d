"""SiteDPFilter: the uploaded delta is clipped to C, the noise has standard deviation sigma * C (chi-square test),
accounting matches Opacus, the ledger persists, the budget refuses, un-noised weights are withheld, meta is cleaned."""

from __future__ import annotations

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from opacus.accountants import RDPAccountant
from scipy.stats import chi2

from fedmrg.fl.constants import FedMetaKey
from fedmrg.privacy.site_dp_filter import (
    SITE_DP_META_KEY,
    SiteDPFilter,
    add_gaussian_noise,
    clip_to_norm,
    global_l2_norm,
)


def delta(seed: int = 0, scale: float = 3.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"encoder.w": (scale * rng.normal(size=(40, 30))).astype(np.float32),
            "adapter.lora_A": (scale * rng.normal(size=(8, 64))).astype(np.float32),
            "adapter.lora_B": (scale * rng.normal(size=(64,))).astype(np.float32)}  # fmt: skip


def train_result(data: dict[str, np.ndarray], round_num: int = 0):
    meta = {
        MetaKey.NUM_STEPS_CURRENT_ROUND: 32,
        FedMetaKey.TRAIN_METRICS: {"g/lm": 2.5, "steps": 4.0, "dp/epsilon": 1.5},
        FedMetaKey.EXTRA: {"bank": np.ones((2, 4), dtype=np.float32)},
    }
    shareable = DXO(data_kind=DataKind.WEIGHT_DIFF, data=data, meta=meta).to_shareable()
    shareable.set_header(AppConstants.CURRENT_ROUND, round_num)
    return shareable


@pytest.mark.parametrize("scale,clip", [(3.0, 1.0), (1e-4, 1.0), (0.5, 25.0)])
def test_clip_bounds_the_whole_update(scale, clip):
    d = delta(scale=scale)
    clipped, norm = clip_to_norm(d, clip)
    assert norm == pytest.approx(global_l2_norm(d))
    assert global_l2_norm(clipped) <= clip * (1 + 1e-6)
    if norm <= clip:  # small updates pass unchanged
        assert all(np.array_equal(clipped[k], d[k]) for k in d)
    else:  # one factor for every key: the direction is kept
        factor = clip / norm
        assert all(np.allclose(clipped[k], d[k] * factor, rtol=1e-5) for k in d)
        assert global_l2_norm(clipped) == pytest.approx(clip, rel=1e-5)


def test_noise_standard_deviation_is_sigma_times_c():
    """(noised - clipped) ~ N(0, (sigma C)^2): the sample variance lies in the two-sided 99.9 % chi-square interval."""
    sigma, c = 0.7, 2.0
    d = {"x": np.zeros(200_000, dtype=np.float32), "y": np.zeros((100, 300), dtype=np.float32)}
    noise = add_gaussian_noise(d, sigma * c, np.random.default_rng(123))
    z = np.concatenate([v.ravel().astype(np.float64) for v in noise.values()])
    n = z.size
    s2 = float(np.sum(z**2)) / n  # known mean 0: n * s2 / var ~ chi2(n)
    lo, hi = chi2.ppf([0.0005, 0.9995], n) / n
    var = (sigma * c) ** 2
    assert lo * var <= s2 <= hi * var
    assert abs(z.mean()) < 4 * sigma * c / np.sqrt(n)
    # a 5 % error in the noise scale would be caught
    assert not (lo * (1.05 * sigma * c) ** 2 <= s2 <= hi * (1.05 * sigma * c) ** 2)


def test_filter_clips_noises_accounts_and_cleans_meta(tmp_path):
    ledger = tmp_path / "site_dp_ledger.json"
    f = SiteDPFilter(enabled=True, clip_norm=1.0, noise_multiplier=1.2, delta=1e-5, ledger_path=str(ledger))
    f._rng = np.random.default_rng(0)
    d = delta()
    epsilons = []
    for r in range(3):
        out = from_shareable(f.process(train_result(d, r), FLContext()))
        assert out.data_kind == DataKind.WEIGHT_DIFF and out.data.keys() == d.keys()
        assert all(out.data[k].dtype == np.float32 and out.data[k].shape == d[k].shape for k in d)
        epsilons.append(out.get_meta_prop(SITE_DP_META_KEY)["epsilon"])
        metrics = out.get_meta_prop(FedMetaKey.TRAIN_METRICS)
        assert "g/lm" not in metrics and metrics["dp/epsilon"] == 1.5 and metrics["steps"] == 4.0
        assert metrics["site_dp/epsilon"] == epsilons[-1] and metrics["site_dp/rounds"] == r + 1
        assert out.get_meta_prop(FedMetaKey.EXTRA) is None  # raw bank features never leave under site-level DP
        assert out.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == 32
        assert "SiteDPFilter" in out.get_filter_history()
    acct = RDPAccountant()
    for _ in range(3):
        acct.step(noise_multiplier=1.2, sample_rate=1.0)
    assert epsilons[-1] == pytest.approx(acct.get_epsilon(delta=1e-5), rel=1e-9)
    assert epsilons[0] < epsilons[1] < epsilons[2]
    # the noise is there: the upload is not the clipped delta
    clipped, _ = clip_to_norm(d, 1.0)
    assert global_l2_norm({k: out.data[k] - clipped[k] for k in d}) > 10 * 1.0

    restarted = SiteDPFilter(enabled=True, clip_norm=1.0, noise_multiplier=1.2, delta=1e-5, ledger_path=str(ledger))
    assert restarted.ledger(FLContext()).steps == 3
    out = from_shareable(restarted.process(train_result(d, 3), FLContext()))
    assert out.get_meta_prop(SITE_DP_META_KEY)["rounds"] == 4


def test_budget_refuses_the_upload_and_nothing_leaves(tmp_path):
    acct = RDPAccountant()
    acct.step(noise_multiplier=2.0, sample_rate=1.0)
    one = acct.get_epsilon(delta=1e-5)
    f = SiteDPFilter(enabled=True, noise_multiplier=2.0, max_epsilon=one * 1.2, ledger_path=str(tmp_path / "l.json"))
    assert f.process(train_result(delta()), FLContext()).get_return_code() == ReturnCode.OK
    refused = f.process(train_result(delta(), 1), FLContext())
    assert refused.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    with pytest.raises(ValueError):
        from_shareable(refused)  # no DXO, no data
    assert f.ledger(FLContext()).steps == 1


def test_weights_are_withheld_and_metrics_pass(tmp_path):
    f = SiteDPFilter(enabled=True, ledger_path=str(tmp_path / "l.json"))
    weights = DXO(data_kind=DataKind.WEIGHTS, data=delta()).to_shareable()
    assert f.process(weights, FLContext()).get_return_code() == ReturnCode.EMPTY_RESULT
    metrics = DXO(data_kind=DataKind.METRICS, data={"bleu4": 0.2}).to_shareable()
    assert from_shareable(f.process(metrics, FLContext())).data == {"bleu4": 0.2}


def test_disabled_filter_passes_through_unchanged():
    f = SiteDPFilter()
    d = delta()
    out = from_shareable(f.process(train_result(d), FLContext()))
    assert all(np.array_equal(out.data[k], d[k]) for k in d)
    assert out.get_meta_prop(FedMetaKey.TRAIN_METRICS)["g/lm"] == 2.5


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"clip_norm": 0.0}, "`clip_norm` must be a number > 0"),
        ({"noise_multiplier": -1.0}, "`noise_multiplier` must be a number > 0"),
        ({"participation_rate": 1.5}, r"`participation_rate` must be in \(0, 1\]"),
        ({"delta": 1.0}, r"`delta` must be in \(0, 1\)"),
        ({"max_epsilon": 0}, "`max_epsilon` must be a number > 0 or null"),
        ({"accountant": "gdp"}, "`accountant` must be 'rdp' or 'prv'"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, error):
    with pytest.raises(ValueError, match=error):
        SiteDPFilter(enabled=False, **kwargs)
