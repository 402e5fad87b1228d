"""FiniteUpdateAggregator: NaN/Inf, key mismatches and bad weights are rejected before aggregation, naming the site."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants

from fedmrg.fl.finite_update_aggregator import FiniteUpdateAggregator

KEYS = ("a", "b")


def _ctx(round_num=0, with_global=True):
    ctx = FLContext()
    ctx.set_prop(AppConstants.CURRENT_ROUND, round_num, private=True, sticky=False)
    if with_global:
        weights = {k: np.zeros(3, np.float32) for k in KEYS}
        ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable(weights, {}), private=True, sticky=False)
    return ctx


def _update(site, data, steps=10, round_num=0):
    s = DXO(DataKind.WEIGHT_DIFF, data=data, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: steps}).to_shareable()
    s.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    s.add_cookie(AppConstants.CONTRIBUTION_ROUND, round_num)
    return s


def _agg(ctx):
    agg = FiniteUpdateAggregator()
    agg.handle_event(EventType.START_RUN, ctx)
    return agg


def _ok(v=1.0):
    return {k: np.full(3, v, np.float32) for k in KEYS}


@pytest.mark.parametrize(
    ("data", "steps", "reason"),
    [
        ({"a": np.array([1, np.nan, 0], np.float32), "b": np.zeros(3, np.float32)}, 10, r"non-finite .* in 1 of 2"),
        ({"a": np.array([np.inf, 0, 0], np.float32), "b": np.zeros(3, np.float32)}, 10, r"non-finite .*\['a'\]"),
        ({"a": np.zeros(3, np.float32)}, 10, r"missing \['b'\]"),
        (_ok() | {"c": np.zeros(3, np.float32)}, 10, r"unknown \['c'\]"),
        (_ok(), 0, "must be a finite number > 0, got 0"),
        (_ok(), float("nan"), "must be a finite number > 0"),
    ],
)
def test_rejects_bad_update_naming_the_site(caplog, data, steps, reason):
    ctx = _ctx()
    agg = _agg(ctx)
    with caplog.at_level(logging.ERROR):
        assert agg.accept(_update("site-7", data, steps), ctx) is False
    assert "REJECTED update from site site-7 in round 0" in caplog.text
    assert re.search(reason, caplog.text), caplog.text


def test_good_updates_are_averaged_by_samples_and_stay_float32():
    ctx = _ctx()
    agg = _agg(ctx)
    assert agg.accept(_update("site-1", _ok(1.0), steps=10), ctx)
    assert agg.accept(_update("site-2", _ok(4.0), steps=30), ctx)
    bad = {"a": np.array([np.nan] * 3, np.float32), "b": np.zeros(3, np.float32)}
    assert not agg.accept(_update("site-3", bad, steps=1000), ctx)
    out = from_shareable(agg.aggregate(ctx))
    assert out.data_kind == DataKind.WEIGHT_DIFF
    for k in KEYS:
        assert out.data[k].dtype == np.float32
        np.testing.assert_allclose(out.data[k], (1.0 * 10 + 4.0 * 30) / 40)


def test_without_global_model_only_finiteness_is_checked():
    ctx = _ctx(with_global=False)
    agg = _agg(ctx)
    assert agg.accept(_update("site-1", {"anything": np.ones(2, np.float32)}), ctx)
