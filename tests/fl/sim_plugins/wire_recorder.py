"""A client-side test filter that records what crosses the wire, for the simulator tests (not part of the package).

Put it last in a client's ``task_result_filters`` (what is uploaded) and in its ``task_data_filters`` (what arrived);
it appends one JSON line per message to ``<out_dir>/<site>.jsonl`` and passes the message through unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

from nvflare.apis.dxo import MetaKey, from_shareable
from nvflare.apis.filter import Filter, FilterChainType, FilterContextKey
from nvflare.apis.fl_constant import FLContextKey
from nvflare.app_common.app_constant import AppConstants

PEER_EXTRA = "fedmrg.peer_extra"


class WireRecorder(Filter):
    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = out_dir

    def process(self, shareable, fl_ctx):
        site = fl_ctx.get_identity_name()
        up = self.get_prop(FilterContextKey.CHAIN_TYPE) == FilterChainType.TASK_RESULT_CHAIN
        rec = {
            "site": site,
            "direction": "up" if up else "down",
            "task": fl_ctx.get_prop(FLContextKey.TASK_NAME),
            "round": shareable.get_header(AppConstants.CURRENT_ROUND),
            "rc": shareable.get_return_code(),
        }
        try:
            dxo = from_shareable(shareable)
        except ValueError:
            dxo = None
        if dxo is not None:
            rec["kind"] = str(getattr(dxo.data_kind, "value", dxo.data_kind))
            rec["keys"] = sorted(dxo.data)
            rec["dtypes"] = sorted({str(getattr(v, "dtype", type(v).__name__)) for v in dxo.data.values()})
            rec["num_steps"] = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND)
            rec["meta_keys"] = sorted(dxo.meta)
            peer = dxo.get_meta_prop(PEER_EXTRA) or {}
            rec["peer_extra_sites"] = {k: sorted(v) for k, v in peer.items()}
        path = Path(self.out_dir) / f"{site}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        return shareable
