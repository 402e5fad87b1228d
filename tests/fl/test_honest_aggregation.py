"""ResumableScatterAndGather's honest aggregation, driven without a federation: error replies and rejected updates
do not count towards min_clients and do not close the round; a round with too few valid updates is not aggregated
and its participation names every site and why."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from nvflare.apis.client import Client
from nvflare.apis.controller_spec import ClientTask, Task
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.impl import bcast_manager
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants

from fedmrg.fl.constants import FedHeaderKey
from fedmrg.fl.finite_update_aggregator import FiniteUpdateAggregator
from fedmrg.fl.resumable_scatter_and_gather import PARTICIPATION_PROP, ROUND_PARTICIPATION, ResumableScatterAndGather

SITES = ["site-1", "site-2", "site-3"]
MIN = bcast_manager._KEY_MIN_RESPS  # the broadcast's minimum number of responses (FLARE-internal task prop)


class Recorder:
    """A component that keeps the participation records the workflow publishes."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def handle_event(self, event_type, fl_ctx) -> None:
        if event_type == ROUND_PARTICIPATION:
            self.records.append(fl_ctx.get_prop(PARTICIPATION_PROP))


@pytest.fixture()
def setup(flare, tmp_path):
    recorder = Recorder()
    engine = flare.engine(tmp_path, "server", {"recorder": recorder})
    ctx = flare.ctx(engine, identity="server")
    weights = {"w": np.zeros(3, np.float32)}
    ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable(weights, {}), private=True, sticky=False)
    ctx.set_prop(AppConstants.CURRENT_ROUND, 0, private=True, sticky=False)
    wf = ResumableScatterAndGather(min_clients=2, wait_time_after_min_received=0)
    wf.aggregator = FiniteUpdateAggregator(expected_data_kind="WEIGHT_DIFF")
    wf.aggregator.handle_event(EventType.START_RUN, ctx)
    wf._current_round = 0
    task = Task(name="train", data=Shareable(), props={MIN: 2})
    task.targets = list(SITES)
    return wf, task, ctx, recorder


def _reply(wf, task, ctx, site, *, rc=ReturnCode.OK, value=1.0, message=""):
    if rc == ReturnCode.OK:
        result = DXO(
            DataKind.WEIGHT_DIFF, {"w": np.full(3, value, np.float32)}, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 4}
        )
        result = result.to_shareable()
        result.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
    else:
        result = make_reply(rc)
        result.set_header(FedHeaderKey.ERROR, message)
    result.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    client_task = ClientTask(Client(site, None), task)
    client_task.result = result
    client_task.result_received_time = 1.0
    task.client_tasks.append(client_task)
    wf._process_train_result(client_task, ctx)


def test_an_error_reply_neither_counts_nor_closes_the_round(setup):
    wf, task, ctx, _ = setup
    _reply(wf, task, ctx, "site-3", rc=ReturnCode.EXECUTION_EXCEPTION, message="data root /x does not exist")
    # FLARE would close the round at 2 responses: one error + the first valid update (wait 0 -> one site's model)
    assert task.props[MIN] == 3
    _reply(wf, task, ctx, "site-1")
    assert wf._valid == {"site-1"} and "does not exist" in wf._failed["site-3"]


def test_a_rejected_update_does_not_count(setup):
    wf, task, ctx, _ = setup
    _reply(wf, task, ctx, "site-2", value=np.nan)
    assert task.props[MIN] == 3 and wf._valid == set()
    assert wf._failed["site-2"].startswith("update rejected: non-finite values")


def test_too_few_valid_updates_are_not_aggregated_and_every_site_is_named(setup, caplog):
    wf, task, ctx, recorder = setup
    _reply(wf, task, ctx, "site-1")
    _reply(wf, task, ctx, "site-2", rc=ReturnCode.EXECUTION_EXCEPTION, message="boom")
    with caplog.at_level(logging.ERROR):
        assert wf.check_valid_updates(sorted(wf._valid), task, ctx) is False
    assert "round 0: NOT aggregated: 1 valid update(s) ['site-1'], fewer than min_clients=2" in caplog.text
    (record,) = recorder.records
    assert record["aggregated"] is False and record["valid"] == ["site-1"]
    assert record["failed"] == {"site-2": "error EXECUTION_EXCEPTION: boom"}
    assert record["missing"] == {"site-3": "no result before the round closed"}


def test_enough_valid_updates_aggregate_and_name_the_absent_site(setup):
    wf, task, ctx, recorder = setup
    _reply(wf, task, ctx, "site-1")
    _reply(wf, task, ctx, "site-2")
    assert wf.check_valid_updates(sorted(wf._valid), task, ctx) is True
    assert recorder.records[0]["missing"] == {"site-3": "no result before the round closed"}


def test_the_round_ends_as_soon_as_min_clients_cannot_be_reached(setup, monkeypatch):
    wf, task, ctx, _ = setup
    cancelled = []
    monkeypatch.setattr(wf, "cancel_task", lambda t, **kw: cancelled.append(t))
    _reply(wf, task, ctx, "site-1", rc=ReturnCode.EXECUTION_EXCEPTION)
    assert not cancelled  # site-2 and site-3 may still send two valid updates
    _reply(wf, task, ctx, "site-2", rc=ReturnCode.EXECUTION_EXCEPTION)
    assert cancelled == [task]


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"round_retries": -1}, ">= 0"), ({"min_clients": 0}, "greater than 0")]
)
def test_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResumableScatterAndGather(**kwargs)
