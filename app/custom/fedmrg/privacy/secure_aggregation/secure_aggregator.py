"""Server-side aggregator of masked uploads: sums them mod 2^32, and after the unmask step removes the masks and
decodes the weighted average of the shared deltas.

It works with :class:`~.secure_scatter_and_gather.SecureScatterAndGather`, which opens each round
(:meth:`begin_round`), freezes the set of survivors after the train task (:meth:`close`) and hands over the
reconstructed secrets (:meth:`finish`). An upload is rejected (logged with site, round and reason, not summed) when
its site is not a participant of the round, it arrives after :meth:`close`, it is a duplicate, it is not a WEIGHT_DIFF
of ``uint32`` arrays with the global model's keys and shapes, its ``SecAggKey.MASKED`` meta does not match the round
(round, session, fraction bits, weight in ``[1, max_weight]``), or it carries extra payloads. :meth:`aggregate` refuses
(raises) a round that was not unmasked: a masked sum is never decoded into a model.

Output: a WEIGHT_DIFF DXO of float32 arrays, ``sum(w_u * clip(delta_u)) / sum(w_u)`` over the survivors, within
``2^-(f+1)`` per element (see :mod:`~fedmrg.privacy.secure_aggregation.fixed_point`).
"""

from __future__ import annotations

import threading

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.aggregator import Aggregator
from nvflare.app_common.abstract.model import ModelLearnable, ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants

from fedmrg.fl.constants import FedMetaKey
from fedmrg.privacy.secure_aggregation import crypto, fixed_point
from fedmrg.privacy.secure_aggregation.constants import SecAggKey, SecureAggregationError
from fedmrg.privacy.secure_aggregation.protocol import (
    Advertisement,
    Params,
    flatten,
    layout_of,
    remove_masks,
    unflatten,
)


class SecureAggregator(Aggregator):
    def __init__(self):
        """Sums masked uploads; takes no arguments (the round comes from the workflow)."""
        super().__init__()
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self._round: int | None = None
        self._session = b""
        self._ads: dict[str, Advertisement] = {}
        self._params: Params | None = None
        self._salt = b""
        self._bits = 0
        self._layout: list | None = None
        self._sum: np.ndarray | None = None
        self._weights: dict[str, int] = {}
        self._closed = False
        self._secrets: tuple[dict[str, bytes], dict[str, bytes]] | None = None
        self.rejections: dict[str, str] = {}  # site -> why its upload was not summed (the round's participation)

    # -- driven by the workflow ------------------------------------------------------------------------------------
    def begin_round(self, round_num: int, session: bytes, ads: dict[str, Advertisement], params: Params, job_id: str):
        with self._lock:
            self._clear()
            self._round, self._session, self._ads, self._params = round_num, session, dict(ads), params
            self._salt = crypto.round_salt(job_id, round_num, session)
            self._bits = fixed_point.fraction_bits(len(ads), params.max_weight, params.clip_norm)

    def close(self) -> list[str]:
        """Stop accepting uploads; the sites whose uploads were summed (the survivors), sorted."""
        with self._lock:
            self._closed = True
            return sorted(self._weights)

    def finish(self, seeds: dict[str, bytes], dropped_keys: dict[str, bytes]) -> None:
        """The survivors' self-mask seeds and the dropped sites' mask private keys, checked by the workflow."""
        with self._lock:
            if not self._closed or set(seeds) != set(self._weights):
                raise SecureAggregationError("unmasking secrets do not match the summed uploads")
            self._secrets = (dict(seeds), dict(dropped_keys))

    @property
    def fraction_bits(self) -> int:
        return self._bits

    # -- Aggregator ------------------------------------------------------------------------------------------------
    def reset(self, fl_ctx: FLContext):
        with self._lock:
            self._clear()

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        site = shareable.get_peer_prop(key=ReservedKey.IDENTITY_NAME, default="?")
        with self._lock:
            try:
                flat, weight = self._check(shareable, site, fl_ctx)
            except SecureAggregationError as e:
                self.log_error(fl_ctx, f"REJECTED masked update from site {site} in round {self._round}: {e}")
                self.rejections[site] = f"masked update rejected: {e}"
                return False
            if self._sum is None:
                self._sum = np.zeros_like(flat)
            self._sum += flat  # uint32: wraps mod 2^32
            self._weights[site] = weight
        self.log_info(fl_ctx, f"round {self._round}: summed the masked update of site {site} (weight {weight})")
        return True

    def _check(self, shareable: Shareable, site: str, fl_ctx: FLContext) -> tuple[np.ndarray, int]:
        if self._round is None or site not in self._ads:
            raise SecureAggregationError("not a participant of this round's key exchange")
        if self._closed:
            raise SecureAggregationError("arrived after the round's survivors were fixed")
        if site in self._weights:
            raise SecureAggregationError("duplicate upload")
        try:
            dxo = from_shareable(shareable)
        except ValueError as e:
            raise SecureAggregationError(f"not a DXO: {e}") from e
        if dxo.get_meta_prop(FedMetaKey.EXTRA):
            raise SecureAggregationError("carries extra payloads, which must not travel under secure aggregation")
        info = dxo.get_meta_prop(SecAggKey.MASKED)
        if dxo.data_kind != DataKind.WEIGHT_DIFF or not isinstance(info, dict):
            raise SecureAggregationError(f"not a masked WEIGHT_DIFF (kind {dxo.data_kind}, no {SecAggKey.MASKED})")
        expected = {"round": self._round, "session": self._session, "fraction_bits": self._bits}
        got = {k: info.get(k) for k in expected}
        if got != expected:
            raise SecureAggregationError(f"masking metadata {got} does not match the round's {expected}")
        weight = info.get("weight")
        if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= self._params.max_weight:
            raise SecureAggregationError(f"weight {weight!r} outside [1, {self._params.max_weight}]")
        data = dxo.data if isinstance(dxo.data, dict) else {}
        if not data or any(not (isinstance(v, np.ndarray) and v.dtype == np.uint32) for v in data.values()):
            raise SecureAggregationError("arrays must all be uint32")
        flat, layout = flatten(data)
        expected_layout = self._layout or _global_layout(fl_ctx)
        if expected_layout is not None and layout != expected_layout:
            raise SecureAggregationError("array names or shapes differ from the global model's")
        self._layout = layout
        return flat.astype(np.uint32, copy=False), weight

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        with self._lock:
            if self._secrets is None or self._sum is None:
                raise SecureAggregationError(
                    f"round {self._round}: the masked sum was not unmasked; refusing to produce a model"
                )
            seeds, dropped = self._secrets
            total = remove_masks(self._sum.copy(), self._ads, seeds, dropped, self._salt)
            weight = sum(self._weights.values())
            avg = fixed_point.decode(total, self._bits, weight)
            result = DXO(DataKind.WEIGHT_DIFF, unflatten(avg, self._layout), {MetaKey.NUM_STEPS_CURRENT_ROUND: weight})
            sites = sorted(self._weights)
        self.log_info(
            fl_ctx,
            f"round {self._round}: decoded the weighted average of {sites} (total weight {weight}, dropped "
            f"{sorted(dropped) or 'none'}); per-element error <= {fixed_point.error_bound(self._bits):.3g}",
        )
        return result.to_shareable()


def _global_layout(fl_ctx: FLContext) -> list | None:
    ml = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
    if isinstance(ml, ModelLearnable) and ml.get(ModelLearnableKey.WEIGHTS):
        return layout_of(ml[ModelLearnableKey.WEIGHTS])
    return None
