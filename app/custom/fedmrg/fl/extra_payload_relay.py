"""The global memory bank (FedMRG paper 3.2.1) on the server: it keeps the sites' extra payloads (FedMRG's pooled
image features, ``memory_bank.upload_per_round`` per site and round) and relays them to the *other* sites.

This is the bank's one home: sites hold no bank of their own, they draw contrastive negatives from what the task
brings. Configure one instance as a server ``task_data_filters`` entry on the ``train`` task, placed *before* the
:class:`~fedmrg.fl.wire_bytes_meter.WireBytesMeter` so that the relayed bytes are counted. It works in two halves:

- collecting (an event handler; FLARE hands every filter the run's events): when a train result is accepted by the
  aggregator (``AFTER_CONTRIBUTION_ACCEPT``), the arrays under ``FedMetaKey.EXTRA`` in its DXO meta whose key is in
  ``extra_keys`` are held for that site until the round ends (a round re-run keeps the site's last upload).
  Rejected updates contribute nothing;
- banking (at the next ``ROUND_STARTED``): each site's upload is appended to its rows in the bank, which keeps the
  newest ``max_items_per_site`` rows per site and key *across rounds* (the bank's one capacity setting; ``jobs/fedmrg``
  uses 64). A site without an accepted update in the round that ended (it failed, was
  rejected, was killed, left) is forgotten: its rows are dropped and logged, and are never relayed again unless it
  contributes again;
- attaching (the filter): when a site pulls a train task, the bank as frozen at the start of the round, minus the
  receiving site's own rows, is put in the task's DXO meta under ``FedMetaKey.PEER_EXTRA`` as
  ``{key: {source_site: (K, D) float32}}``.

Payloads must be finite float32 ``(K, D)`` arrays with one width ``D`` per key; anything else is dropped with an
error naming the site. Keys outside ``extra_keys`` are never relayed (a warning names them once).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from fedmrg.fl.checks import check_int, check_str_list
from fedmrg.fl.constants import FedMetaKey


class ExtraPayloadRelay(DXOFilter):
    def __init__(self, extra_keys: list[str], max_items_per_site: int = 256):
        """Relays extra payloads between sites.

        Args:
            extra_keys: names of the payloads to relay, e.g. ``["bank"]``; other keys sent by sites are ignored.
            max_items_per_site: the bank's capacity per site and key: rows kept across rounds (the most recent ones).
                Defaults to 256.

        Raises:
            TypeError, ValueError: when an argument has a wrong type or value (the message names it).
        """
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS], data_kinds_to_filter=[DataKind.WEIGHTS])
        check_str_list("extra_keys", extra_keys, allow_empty=False)
        check_int("max_items_per_site", max_items_per_site, minimum=1)
        self.extra_keys = extra_keys
        self.max_items_per_site = max_items_per_site

        self._lock = threading.Lock()
        self._bank: dict[str, dict[str, np.ndarray]] = {}  # key -> site -> (K <= max_items_per_site, D)
        self._pending: dict[str, dict[str, np.ndarray]] = {}  # key -> site -> this round's upload
        self._contributors: set[str] = set()  # sites with an accepted update in this round
        self._rounds_started = 0
        self._outgoing: dict[str, dict[str, np.ndarray]] = {}
        self._warned: set[str] = set()

    # -- collecting --------------------------------------------------------------------------------------------
    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == AppEventType.ROUND_STARTED:
            forgotten = self.start_round()
            if forgotten:
                r = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
                self.log_info(fl_ctx, f"round {r}: memory bank forgot {forgotten} (no accepted update last round)")
        elif event_type == AppEventType.AFTER_CONTRIBUTION_ACCEPT:
            if not fl_ctx.get_prop(AppConstants.AGGREGATION_ACCEPTED):
                return
            result = fl_ctx.get_prop(AppConstants.TRAINING_RESULT)
            if isinstance(result, Shareable):
                self.collect(result, fl_ctx)

    def start_round(self) -> list[str]:
        """Bank the ended round's uploads, forget the sites that did not contribute to it, and freeze the bank for
        the new round's tasks. Returns the forgotten sites, sorted."""
        with self._lock:
            forgotten: set[str] = set()
            if self._rounds_started:
                for by_site in self._bank.values():
                    for site in [s for s in by_site if s not in self._contributors]:
                        del by_site[site]
                        forgotten.add(site)
                for key, by_site in self._pending.items():
                    bank = self._bank.setdefault(key, {})
                    for site, rows in by_site.items():
                        merged = np.concatenate([bank[site], rows]) if site in bank else rows
                        bank[site] = np.ascontiguousarray(merged[-self.max_items_per_site :])
            self._pending, self._contributors = {}, set()
            self._rounds_started += 1
            self._outgoing = {k: dict(by_site) for k, by_site in self._bank.items() if by_site}
        return sorted(forgotten)

    def collect(self, result: Shareable, fl_ctx: FLContext) -> None:
        """Store the extras of one accepted train result (called on ``AFTER_CONTRIBUTION_ACCEPT``)."""
        site = result.get_peer_prop(ReservedKey.IDENTITY_NAME, None)
        try:
            extras = from_shareable(result).get_meta_prop(FedMetaKey.EXTRA) or {}
        except ValueError:
            return
        if not site or not isinstance(extras, dict):
            return
        with self._lock:
            self._contributors.add(site)
        r = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        for key, value in extras.items():
            if key not in self.extra_keys:
                if key not in self._warned:
                    self._warned.add(key)
                    self.log_warning(fl_ctx, f"extra {key!r} from site {site} is not in `extra_keys`; not relayed")
                continue
            problem = self._problem(key, value)
            if problem:
                self.log_error(fl_ctx, f"dropped extra {key!r} from site {site} in round {r}: {problem}")
                continue
            kept = np.ascontiguousarray(value[-self.max_items_per_site :])
            with self._lock:
                self._pending.setdefault(key, {})[site] = kept
            self.log_info(fl_ctx, f"round {r}: received extra {key!r} from site {site}: {kept.shape[0]} rows")

    def _problem(self, key: str, value: Any) -> str:
        if not (isinstance(value, np.ndarray) and value.dtype == np.float32 and value.ndim == 2):
            desc = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
            return f"expected a float32 (K, D) array, got {desc}"
        if not np.isfinite(value).all():
            return "non-finite values"
        with self._lock:
            held = [*self._bank.get(key, {}).values(), *self._pending.get(key, {}).values()]
            widths = {a.shape[1] for a in held}
        if widths and value.shape[1] not in widths:
            return f"width D={value.shape[1]} differs from the other sites' {sorted(widths)}"
        return ""

    # -- attaching ---------------------------------------------------------------------------------------------
    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        peer = fl_ctx.get_peer_context()
        receiver = peer.get_identity_name() if peer else ""
        if not receiver:
            self.log_warning(fl_ctx, "task data without a receiving site; no extras attached")
            return None
        payload = self.payload_for(receiver)
        if not payload:
            return None
        summary = {k: {s: int(a.shape[0]) for s, a in by_site.items()} for k, by_site in payload.items()}
        self.log_info(fl_ctx, f"relaying to site {receiver}: {summary} (rows by key and source site)")
        # a new DXO with a new meta dict: the task data is shared by all receivers until this filter runs
        meta = dict(dxo.meta or {})
        meta[FedMetaKey.PEER_EXTRA] = payload
        return DXO(data_kind=dxo.data_kind, data=dxo.data, meta=meta)

    def payload_for(self, receiver: str) -> dict[str, dict[str, np.ndarray]]:
        """The other sites' payloads as frozen at the start of the round: ``{key: {site: array}}``, never ``receiver``."""
        with self._lock:
            out = {
                key: {site: arr for site, arr in sorted(by_site.items()) if site != receiver}
                for key, by_site in self._outgoing.items()
            }
        return {k: v for k, v in out.items() if v}
