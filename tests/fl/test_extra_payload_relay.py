"""ExtraPayloadRelay, the global memory bank: collects accepted sites' extras, keeps a capped number per site across
rounds, forgets a site that dropped out, never returns a site its own rows, validates."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.filter import FilterChainType, FilterContextKey
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import make_copy
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from fedmrg.fl.constants import FedMetaKey
from fedmrg.fl.extra_payload_relay import ExtraPayloadRelay

SITES = ["site-1", "site-2", "site-3"]


def _result(site, extras):
    s = DXO(DataKind.WEIGHT_DIFF, {"w": np.zeros(2, np.float32)}, meta={FedMetaKey.EXTRA: extras}).to_shareable()
    s.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    return s


def _accept(relay, result, accepted=True, round_num=0):
    ctx = FLContext()
    ctx.set_prop(AppConstants.CURRENT_ROUND, round_num, private=True, sticky=False)
    ctx.set_prop(AppConstants.TRAINING_RESULT, result, private=True, sticky=False)
    ctx.set_prop(AppConstants.AGGREGATION_ACCEPTED, accepted, private=True, sticky=False)
    relay.handle_event(AppEventType.AFTER_CONTRIBUTION_ACCEPT, ctx)


def _new_round(relay):
    relay.handle_event(AppEventType.ROUND_STARTED, FLContext())


def _bank(site_index, rows=4, dim=3):
    """Rows tagged with the site: every value equals the site index, so a leak is visible in the numbers."""
    return np.full((rows, dim), float(site_index), np.float32)


def test_never_returns_a_site_its_own_features():
    relay = ExtraPayloadRelay(extra_keys=["bank"])
    _new_round(relay)
    for i, s in enumerate(SITES):
        _accept(relay, _result(s, {"bank": _bank(i)}))
    assert relay.payload_for("site-1") == {}  # nothing relayed before the next round starts
    _new_round(relay)
    for i, receiver in enumerate(SITES):
        payload = relay.payload_for(receiver)
        assert sorted(payload["bank"]) == sorted(set(SITES) - {receiver})
        for source, arr in payload["bank"].items():
            assert np.all(arr == SITES.index(source)) and not np.any(arr == i)


def test_filter_attaches_other_sites_to_the_task_without_touching_the_shared_task(flare):
    relay = ExtraPayloadRelay(extra_keys=["bank"])
    relay.set_prop(FilterContextKey.CHAIN_TYPE, FilterChainType.TASK_DATA_CHAIN)
    _new_round(relay)
    for i, s in enumerate(SITES[:2]):
        _accept(relay, _result(s, {"bank": _bank(i)}))
    _new_round(relay)
    task = DXO(DataKind.WEIGHTS, {"w": np.zeros(2, np.float32)}, meta={"x": 1}).to_shareable()
    shared_dxo = task["DXO"]
    out = relay.process(make_copy(task), flare.ctx(peer="site-2"))  # the server filters a per-client copy
    meta = from_shareable(out).meta
    assert list(meta[FedMetaKey.PEER_EXTRA]["bank"]) == ["site-1"]
    assert meta["x"] == 1 and "ExtraPayloadRelay" in meta[MetaKey.FILTER_HISTORY]
    assert FedMetaKey.PEER_EXTRA not in shared_dxo["meta"]  # the broadcast copy is unchanged


def test_rejected_contributions_are_not_relayed():
    relay = ExtraPayloadRelay(extra_keys=["bank"])
    _new_round(relay)
    _accept(relay, _result("site-1", {"bank": _bank(1)}))
    _accept(relay, _result("site-2", {"bank": _bank(2)}), accepted=False)
    _new_round(relay)
    assert sorted(relay.payload_for("site-3")["bank"]) == ["site-1"]


def test_keeps_per_site_capacity_across_rounds_newest_first():
    relay = ExtraPayloadRelay(extra_keys=["bank"], max_items_per_site=5)
    _new_round(relay)
    for r, value in enumerate((1.0, 2.0, 3.0)):  # three rounds of 2 rows each from site-1
        _accept(relay, _result("site-1", {"bank": np.full((2, 3), value, np.float32)}), round_num=r)
        _accept(relay, _result("site-2", {"bank": _bank(0, rows=1)}), round_num=r)
        _new_round(relay)
    rows = relay.payload_for("site-2")["bank"]["site-1"]
    np.testing.assert_array_equal(rows[:, 0], [1.0, 2.0, 2.0, 3.0, 3.0])  # 6 uploaded, the newest 5 kept
    assert relay.payload_for("site-1")["bank"]["site-2"].shape == (3, 3)  # 1 row a round, under capacity


def test_forgets_a_site_that_dropped_out(flare, caplog):
    relay = ExtraPayloadRelay(extra_keys=["bank"])
    _new_round(relay)
    for i, s in enumerate(SITES):
        _accept(relay, _result(s, {"bank": _bank(i)}), round_num=0)
    _new_round(relay)
    assert sorted(relay.payload_for("site-1")["bank"]) == ["site-2", "site-3"]
    for i, s in enumerate(SITES[:2]):  # site-3 sends nothing in round 1 (killed, failed or rejected)
        _accept(relay, _result(s, {"bank": _bank(i)}), round_num=1)
    ctx = flare.ctx()
    ctx.set_prop(AppConstants.CURRENT_ROUND, 2, private=True, sticky=False)
    with caplog.at_level(logging.INFO):
        relay.handle_event(AppEventType.ROUND_STARTED, ctx)
    assert "round 2: memory bank forgot ['site-3']" in caplog.text
    assert sorted(relay.payload_for("site-1")["bank"]) == ["site-2"]
    assert relay.payload_for("site-2")["bank"]["site-1"].shape == (8, 3)  # two rounds of 4 rows


def test_caps_rows_keeping_the_most_recent():
    relay = ExtraPayloadRelay(extra_keys=["bank"], max_items_per_site=3)
    rows = np.arange(10, dtype=np.float32).reshape(5, 2)
    _new_round(relay)
    _accept(relay, _result("site-1", {"bank": rows}))
    _new_round(relay)
    np.testing.assert_array_equal(relay.payload_for("site-2")["bank"]["site-1"], rows[-3:])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.ones((2, 3), np.float64), "expected a float32 \\(K, D\\) array, got float64"),
        (np.ones(3, np.float32), "got float32 \\(3,\\)"),
        (np.array([[np.nan, 0, 0]], np.float32), "non-finite"),
        (np.ones((2, 5), np.float32), "width D=5 differs"),
        ([1, 2], "got list"),
    ],
)
def test_bad_payloads_are_dropped_naming_the_site(caplog, value, message):
    relay = ExtraPayloadRelay(extra_keys=["bank"])
    _new_round(relay)
    _accept(relay, _result("site-1", {"bank": _bank(1)}))
    with caplog.at_level(logging.ERROR):
        _accept(relay, _result("site-2", {"bank": value}))
    assert "dropped extra 'bank' from site site-2" in caplog.text
    assert re.search(message, caplog.text)
    _new_round(relay)
    assert "site-2" not in relay.payload_for("site-3").get("bank", {})


def test_unlisted_keys_are_never_relayed():
    relay = ExtraPayloadRelay(extra_keys=["bank"])
    _new_round(relay)
    _accept(relay, _result("site-1", {"secret": _bank(1)}))
    _new_round(relay)
    assert relay.payload_for("site-2") == {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"extra_keys": []}, "must not be empty"), ({"extra_keys": ["bank"], "max_items_per_site": 0}, ">= 1")],
)
def test_constructor_validation(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        ExtraPayloadRelay(**kwargs)
