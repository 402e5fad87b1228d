"""A pass-through filter that measures how many bytes each message takes once serialised, per site and direction.

Put one instance at the *end* of the server's ``task_data_filters`` chain (bytes down, after every filter that changes
the task, e.g. :class:`~fedmrg.fl.extra_payload_relay.ExtraPayloadRelay`) and one at the *start* of its
``task_result_filters`` chain (bytes up, as received). Each measured message yields a record::

    {"site": "site-1", "task": "train", "round": 3, "direction": "down" | "up",
     "wire_bytes": len(fobs.dumps(shareable)), "param_bytes": raw bytes of the arrays in the DXO data}

``wire_bytes`` is the FOBS serialisation of the whole Shareable (headers, DXO meta, extras, arrays inline), which is
what FLARE puts on the wire up to transport framing (large arrays travel as separate download streams of the same
``np.save`` bytes). ``param_bytes`` is ``sum(array.nbytes)`` over the DXO data (4 bytes per fp32 value). The record is
logged and announced with the local event ``FedEventType.WIRE_BYTES`` (prop ``FedContextKey.WIRE_BYTES``), which
:class:`~fedmrg.fl.run_summary.RunSummary` turns into TensorBoard scalars and the run summary.

The direction comes from the chain the filter is configured in (``task_data`` = down to the site, ``task_result``
= up to the server), so the same class serves both chains, on the server or on a client (the site is the peer on the
server and the client itself on a client).

Serialising costs one extra copy of the message in memory and about 0.1 s per 100 MB.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from nvflare.apis.dxo import from_shareable, get_leaf_dxos
from nvflare.apis.filter import Filter, FilterChainType, FilterContextKey
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.decomposers import numpy_decomposers
from nvflare.fuel.utils import fobs

from fedmrg.fl.constants import FedContextKey, FedEventType


def serialized_size(shareable: Shareable) -> int:
    """``len(fobs.dumps(shareable))``: bytes of the FOBS serialisation, numpy arrays inline."""
    numpy_decomposers.register()
    return len(fobs.dumps(shareable))


def dxo_param_bytes(shareable: Shareable) -> int:
    """Raw bytes of the numpy arrays in the DXO data of ``shareable`` (0 when it holds no DXO)."""
    try:
        dxo = from_shareable(shareable)
    except ValueError:
        return 0
    leaves, _ = get_leaf_dxos(dxo)
    total = 0
    for leaf in leaves.values():
        if isinstance(leaf.data, dict):
            total += sum(v.nbytes for v in leaf.data.values() if isinstance(v, np.ndarray))
    return int(total)


class WireBytesMeter(Filter):
    def __init__(self):
        """Measures serialised message sizes; takes no arguments (the direction comes from the filter chain)."""
        super().__init__()

    def direction(self) -> str:
        chain = self.get_prop(FilterContextKey.CHAIN_TYPE)
        if chain == FilterChainType.TASK_DATA_CHAIN:
            return "down"
        if chain == FilterChainType.TASK_RESULT_CHAIN:
            return "up"
        raise RuntimeError("WireBytesMeter must be configured in task_data_filters or task_result_filters")

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        record = self.measure(shareable, fl_ctx)
        self.log_info(
            fl_ctx,
            f"{record['direction']} {record['site']} task {record['task']} round {record['round']}: "
            f"{record['wire_bytes']} bytes serialised, {record['param_bytes']} bytes of arrays",
        )
        fl_ctx.set_prop(FedContextKey.WIRE_BYTES, record, private=True, sticky=False)
        self.fire_event(FedEventType.WIRE_BYTES, fl_ctx)
        return shareable

    def measure(self, shareable: Shareable, fl_ctx: FLContext) -> dict[str, Any]:
        """The record of one message (see the module docstring); does not change ``shareable``."""
        peer = fl_ctx.get_peer_context()
        site = peer.get_identity_name() if peer else fl_ctx.get_identity_name()
        task = shareable.get_header(ReservedHeaderKey.TASK_NAME) or fl_ctx.get_prop(FLContextKey.TASK_NAME)
        r = shareable.get_header(AppConstants.CURRENT_ROUND)
        if r is None:
            r = shareable.get_cookie(AppConstants.CONTRIBUTION_ROUND)

        return {
            "site": site or "?",
            "task": task or "?",
            "round": r if isinstance(r, int) else None,
            "direction": self.direction(),
            "wire_bytes": serialized_size(shareable),
            "param_bytes": dxo_param_bytes(shareable),
        }
