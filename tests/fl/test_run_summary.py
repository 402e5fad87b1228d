"""RunSummary: events in, summary.json / .md / .png and TensorBoard scalars out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from fedmrg.fl.constants import FedContextKey, FedEventType, FedMetaKey
from fedmrg.fl.run_summary import RunSummary


def _result(site, n, loss, r2):
    meta = {
        MetaKey.NUM_STEPS_CURRENT_ROUND: n,
        FedMetaKey.TRAIN_METRICS: {"loss": loss},
        MetaKey.INITIAL_METRICS: {"r2": r2},
    }
    s = DXO(DataKind.WEIGHT_DIFF, {"w": np.zeros(3, np.float32)}, meta=meta).to_shareable()
    s.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    return s


def _fire(widget, ctx, event, **props):
    for k, v in props.items():
        ctx.set_prop(k, v, private=True, sticky=False)
    widget.handle_event(event, ctx)


def test_summary_from_events(flare, tmp_path):
    engine = flare.engine(tmp_path / "server", "server")
    ctx = flare.ctx(engine, identity="server")
    w = RunSummary()
    w.handle_event(EventType.START_RUN, ctx)
    model = make_model_learnable({"w": np.zeros(3, np.float32), "v": np.zeros((2, 2), np.float32)}, {})
    for r, (loss1, loss2) in enumerate([(2.0, 4.0), (1.0, 3.0)]):
        _fire(w, ctx, AppEventType.ROUND_STARTED, **{AppConstants.CURRENT_ROUND: r, AppConstants.GLOBAL_MODEL: model})
        for site, nbytes in (("site-1", 100), ("site-2", 200)):
            rec = {
                "site": site,
                "task": "train",
                "round": r,
                "direction": "down",
                "wire_bytes": nbytes,
                "param_bytes": 28,
            }
            _fire(w, ctx, FedEventType.WIRE_BYTES, **{FedContextKey.WIRE_BYTES: rec})
            _fire(w, ctx, FedEventType.WIRE_BYTES, **{FedContextKey.WIRE_BYTES: rec | {"direction": "up"}})
        for site, n, loss, accepted in (
            ("site-1", 10, loss1, True),
            ("site-2", 30, loss2, True),
            ("site-3", 5, 99.0, False),
        ):
            props = {
                AppConstants.TRAINING_RESULT: _result(site, n, loss, 0.1 * (r + 1)),
                AppConstants.AGGREGATION_ACCEPTED: accepted,
            }
            _fire(w, ctx, AppEventType.AFTER_CONTRIBUTION_ACCEPT, **props)
        _fire(w, ctx, AppEventType.ROUND_DONE)
    cross = DXO(DataKind.METRICS, {"r2": 0.5, "mse": 1.5}).to_shareable()
    props = {
        AppConstants.DATA_CLIENT: "site-1",
        AppConstants.MODEL_OWNER: "SRV_FL_global_model",
        AppConstants.VALIDATION_RESULT: cross,
    }
    _fire(w, ctx, AppEventType.VALIDATION_RESULT_RECEIVED, **props)
    _fire(w, ctx, EventType.END_RUN)

    out = tmp_path / "server" / flare.job_id / "app_server" / "summary"
    summary = json.loads((out / "summary.json").read_text())
    r0, r1 = summary["rounds"]
    assert r0["train"]["loss"] == pytest.approx((2.0 * 10 + 4.0 * 30) / 40)  # site-3 was rejected: not in the mean
    assert r1["val"]["r2"] == pytest.approx(0.2)
    assert r0["sites"]["site-3"]["accepted"] is False
    assert (r0["bytes_down"], r0["bytes_up"], r0["param_bytes_up"]) == (300, 300, 56)
    assert r0["seconds"] >= 0
    assert summary["shared_param_bytes"] == 4 * 7 and summary["num_shared_keys"] == 2
    assert summary["totals"]["bytes_down"] == 600
    assert summary["cross_site"] == {"site-1": {"SRV_FL_global_model": {"mse": 1.5, "r2": 0.5}}}
    md = (out / "summary.md").read_text()
    assert "| 0 | 2/3 |" in md and "Rejected updates: site-3 (round 0), site-3 (round 1)." in md
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tb = tmp_path / "server" / flare.job_id / "tb_events"
    assert sorted(p.name for p in tb.iterdir()) == ["server", "site-1", "site-2", "site-3"]
    assert any(p.name.startswith("events.out.tfevents") for p in (tb / "site-1").iterdir())


def _dp_result(site, n, metrics):
    meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: n, FedMetaKey.TRAIN_METRICS: metrics, MetaKey.INITIAL_METRICS: {}}
    s = DXO(DataKind.WEIGHT_DIFF, {"w": np.zeros(3, np.float32)}, meta=meta).to_shareable()
    s.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    return s


def test_epsilon_is_reported_per_site_and_never_averaged(flare, tmp_path):
    """site-2 trains without DP: no mean may hide it behind site-1's epsilon."""
    engine = flare.engine(tmp_path / "server", "server")
    ctx = flare.ctx(engine, identity="server")
    w = RunSummary(tb_folder="")
    w.handle_event(EventType.START_RUN, ctx)
    _fire(w, ctx, AppEventType.ROUND_STARTED, **{AppConstants.CURRENT_ROUND: 0})
    for site, metrics in (
        ("site-1", {"loss": 1.0, "dp/epsilon": 2.5, "dp/noise_multiplier": 1.1}),
        ("site-2", {"loss": 3.0}),
    ):
        props = {AppConstants.TRAINING_RESULT: _dp_result(site, 10, metrics), AppConstants.AGGREGATION_ACCEPTED: True}
        _fire(w, ctx, AppEventType.AFTER_CONTRIBUTION_ACCEPT, **props)
    _fire(w, ctx, AppEventType.ROUND_DONE)
    _fire(w, ctx, EventType.END_RUN)
    out = tmp_path / "server" / flare.job_id / "app_server" / "summary"
    summary = json.loads((out / "summary.json").read_text())
    (r0,) = summary["rounds"]
    assert r0["train"] == {"loss": 2.0}  # no dp/* mean
    assert summary["privacy"] == {
        "site-1": {"dp/epsilon": 2.5, "site_dp/epsilon": None},
        "site-2": {"dp/epsilon": None, "site_dp/epsilon": None},
    }
    md = (out / "summary.md").read_text()
    assert "| site-1 | 2.5 | no DP |" in md and "| site-2 | no DP | no DP |" in md


def test_absent_sites_are_named_and_missing_cross_site_entries_marked(flare, tmp_path):
    from fedmrg.fl.resumable_scatter_and_gather import PARTICIPATION_PROP, ROUND_PARTICIPATION

    engine = flare.engine(tmp_path / "server", "server")
    ctx = flare.ctx(engine, identity="server")
    w = RunSummary(tb_folder="")
    w.handle_event(EventType.START_RUN, ctx)
    _fire(w, ctx, AppEventType.ROUND_STARTED, **{AppConstants.CURRENT_ROUND: 0})
    record = {
        "round": 0, "attempt": 0, "targets": ["site-1", "site-2", "site-3"], "valid": ["site-1", "site-2"],
        "failed": {}, "missing": {"site-3": "no result before the round closed"}, "min_clients": 2, "aggregated": True,
    }  # fmt: skip
    _fire(w, ctx, ROUND_PARTICIPATION, **{PARTICIPATION_PROP: record})
    for site in ("site-1", "site-2"):
        props = {AppConstants.TRAINING_RESULT: _result(site, 10, 1.0, 0.1), AppConstants.AGGREGATION_ACCEPTED: True}
        _fire(w, ctx, AppEventType.AFTER_CONTRIBUTION_ACCEPT, **props)
    _fire(w, ctx, AppEventType.ROUND_DONE)
    _fire(w, ctx, AppEventType.ROUND_STARTED, **{AppConstants.CURRENT_ROUND: 1})
    short = record | {"round": 1, "valid": ["site-1"], "failed": {"site-2": "error EXECUTION_EXCEPTION: boom"}}
    _fire(w, ctx, ROUND_PARTICIPATION, **{PARTICIPATION_PROP: short | {"aggregated": False}})
    for data_site in ("site-1", "site-2"):
        for model in ("SRV_FL_global_model", "site-1", "site-2"):
            props = {
                AppConstants.DATA_CLIENT: data_site,
                AppConstants.MODEL_OWNER: model,
                AppConstants.VALIDATION_RESULT: DXO(DataKind.METRICS, {"r2": 0.5}).to_shareable(),
            }
            _fire(w, ctx, AppEventType.VALIDATION_RESULT_RECEIVED, **props)
    _fire(w, ctx, EventType.END_RUN)
    out = tmp_path / "server" / flare.job_id / "app_server" / "summary"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["absent"] == [
        {"round": 0, "site": "site-3", "reason": "no result before the round closed"},
        {"round": 1, "site": "site-2", "reason": "error EXECUTION_EXCEPTION: boom"},
        {"round": 1, "site": "site-3", "reason": "no result before the round closed"},
    ]
    assert [r["aggregated"] for r in summary["rounds"]] == [True, False]
    assert summary["cross_site_missing"] == {"data_sites": ["site-3"], "models": ["site-3"]}
    md = (out / "summary.md").read_text()
    assert "| 0 | 2/3 (without site-3) |" in md and "| 1 | 1/3 (without site-2, site-3) |" in md
    assert "**Round 1 was NOT aggregated**: 1 valid update(s) ['site-1'], fewer than min_clients=2" in md
    assert "| site-3 (MISSING) | MISSING | MISSING | MISSING | MISSING |" in md
    assert "| site-1 | 0.5 | 0.5 | 0.5 | MISSING |" in md
