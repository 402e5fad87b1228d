"""WireBytesMeter: the recorded size is exactly len(fobs.dumps(shareable)); direction comes from the chain."""

from __future__ import annotations

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.filter import FilterChainType, FilterContextKey
from nvflare.apis.shareable import ReservedHeaderKey
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.decomposers import numpy_decomposers
from nvflare.fuel.utils import fobs

from fedmrg.fl.constants import FedContextKey, FedEventType, FedMetaKey
from fedmrg.fl.wire_bytes_meter import WireBytesMeter


class _Listener:
    def __init__(self):
        self.records = []

    def handle_event(self, event_type, fl_ctx):
        if event_type == FedEventType.WIRE_BYTES:
            self.records.append(fl_ctx.get_prop(FedContextKey.WIRE_BYTES))


def _task(n_values: int, with_extra: bool):
    data = {"enc.w": np.arange(n_values, dtype=np.float32), "adapter.b": np.ones((3, 4), np.float32)}
    meta = {FedMetaKey.PEER_EXTRA: {"bank": {"site-2": np.ones((8, 16), np.float32)}}} if with_extra else {}
    s = DXO(DataKind.WEIGHTS, data, meta=meta).to_shareable()
    s.set_header(ReservedHeaderKey.TASK_NAME, "train")
    s.set_header(AppConstants.CURRENT_ROUND, 4)
    return s


def _meter(chain):
    m = WireBytesMeter()
    m.set_prop(FilterContextKey.CHAIN_TYPE, chain)
    return m


@pytest.mark.parametrize(("n_values", "with_extra"), [(10, False), (100_000, False), (1000, True)])
def test_bytes_equal_fobs_dumps(flare, tmp_path, n_values, with_extra):
    listener = _Listener()
    engine = flare.engine(tmp_path, "server", {"listener": listener})
    task = _task(n_values, with_extra)
    out = _meter(FilterChainType.TASK_DATA_CHAIN).process(task, flare.ctx(engine, identity="server", peer="site-1"))
    assert out is task  # pass-through
    numpy_decomposers.register()
    (rec,) = listener.records
    assert rec["wire_bytes"] == len(fobs.dumps(task))
    assert rec["param_bytes"] == 4 * (n_values + 12)
    assert rec["wire_bytes"] > rec["param_bytes"] + (8 * 16 * 4 if with_extra else 0)
    assert (rec["site"], rec["task"], rec["round"], rec["direction"]) == ("site-1", "train", 4, "down")


def test_result_chain_is_up_and_round_from_cookie(flare):
    result = DXO(DataKind.WEIGHT_DIFF, {"w": np.ones(5, np.float32)}).to_shareable()
    result.add_cookie(AppConstants.CONTRIBUTION_ROUND, 2)
    rec = _meter(FilterChainType.TASK_RESULT_CHAIN).measure(result, flare.ctx(identity="site-3"))
    assert (rec["direction"], rec["round"], rec["site"], rec["param_bytes"]) == ("up", 2, "site-3", 20)


def test_meter_outside_a_chain_says_where_it_belongs(flare):
    with pytest.raises(RuntimeError, match="task_data_filters or task_result_filters"):
        WireBytesMeter().measure(_task(3, False), flare.ctx())
