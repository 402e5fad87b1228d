"""Names that travel in DXO meta or FLARE events between our components, declared once.

They are plain strings (not an Enum) because FOBS serialises DXO meta with strict msgpack types.
"""

from __future__ import annotations


class FedMetaKey:
    """Keys of DXO meta written by :class:`~fedmrg.fl.shared_state_executor.SharedStateExecutor` and the server."""

    #: site -> server, train result: ``dict[str, float]`` training metrics of the round (e.g. ``{"loss": 0.7}``).
    TRAIN_METRICS = "fedmrg.train_metrics"
    #: site -> server, train result: ``dict[str, np.ndarray]`` extra payloads (e.g. ``{"bank": (K, D) float32}``).
    EXTRA = "fedmrg.extra"
    #: server -> site, train task: ``dict[str, dict[site, np.ndarray]]`` the other sites' extras, by key then site.
    PEER_EXTRA = "fedmrg.peer_extra"
    #: train result: the round the global model came from (int), echoed for logs and summaries.
    ROUND = "fedmrg.round"


class FedHeaderKey:
    """Shareable headers set by our components."""

    #: site -> server, on a reply with an error return code: ``str`` what went wrong (logged by the server's
    #: :class:`~fedmrg.fl.run_summary.RunSummary`, so the server log says why a site's result is missing).
    ERROR = "fedmrg.error"
    #: site -> server, on a declined ``train`` task: ``str`` the site's role (``"evaluate"``); the server's
    #: :class:`~fedmrg.fl.resumable_scatter_and_gather.ResumableScatterAndGather` sends it no more ``train`` tasks.
    ROLE = "fedmrg.role"


class FedEventType:
    """Local (server-side) events fired by our components."""

    #: fired by :class:`~fedmrg.fl.wire_bytes_meter.WireBytesMeter` for every measured message; the record is the
    #: ``FedContextKey.WIRE_BYTES`` prop (a ``dict``, see the meter).
    WIRE_BYTES = "fedmrg.wire_bytes"


class FedContextKey:
    """FLContext props set by our components."""

    WIRE_BYTES = "fedmrg.wire_bytes_record"
