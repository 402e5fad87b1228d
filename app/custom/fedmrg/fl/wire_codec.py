"""Fewer bytes on the wire: encode the DXO's float32 arrays as 16-bit floats or 8-bit integers, decode on arrival.

Codecs (``codec`` argument), bytes per value and what they keep:

- ``"float32"``: no change (4 bytes); the filters pass the DXO through.
- ``"bfloat16"``: 2 bytes, float32's exponent range, 8 significant bits (relative error <= 2^-8, round to nearest
  even); stored as ``uint16`` (numpy has no bfloat16). NVFlare's LLM examples send bf16 the same way.
- ``"float16"``: 2 bytes, 11 significant bits (relative error <= 2^-11) for |x| >= 6.1e-5, absolute error <= 2^-25
  below (subnormals: small deltas lose digits), range +-65504: a value out of range raises (never silently inf).
- ``"int8-tensor"``: 1 byte plus one float32 scale per tensor: ``q = round(x / s)``, ``s = max|x| / 127``.
- ``"int8-row"``: 1 byte plus one float32 scale per row (first axis; 1-D tensors get one scale; a 2-D array with
  more rows than columns, e.g. a LoRA B matrix (out, r), one per column): outliers in one row or rank do not coarsen
  the others.

8-bit codecs are meant for ``WEIGHT_DIFF`` results (deltas are small and centred; the rounding error is at most half
a step per value and does not accumulate in the global model, which stays float32 on the server). Sending the
*global weights* down in 8 bits would re-quantise the whole model every round: :class:`WireEncodeFilter` refuses
8-bit codecs for ``WEIGHTS`` DXOs.

Encoded layout: each array ``k`` is replaced by its payload (same key, dtype ``uint16`` / ``float16`` / ``int8``) and,
for 8-bit codecs, a scale array under ``k + SCALE_SUFFIX``; the DXO meta gets ``WIRE_CODEC_META`` = ``{"codec": name,
"keys": [encoded keys]}``. Arrays that are not floating point (e.g. int buffers) travel unchanged.

Filters (FLARE ``DXOFilter``; configure both ends, or neither):

- up: client ``task_result_filters`` ``WireEncodeFilter`` (last, after a DP filter: clipping and noise happen on
  float32 before quantisation, which is post-processing and keeps the DP guarantee); server ``task_result_filters``
  ``WireDecodeFilter`` *after* the :class:`~fedmrg.fl.wire_bytes_meter.WireBytesMeter`, so the meter counts the
  encoded bytes that crossed the wire and the aggregator gets float32.
- down (optional): server ``task_data_filters`` ``WireEncodeFilter`` (16-bit only) before the meter; client
  ``task_data_filters`` ``WireDecodeFilter``.

Secure aggregation (:mod:`fedmrg.privacy.secure_aggregation`) masks a fixed-point ``uint32`` encoding of the delta
that the server can only sum, never decode per site, so the codec cannot sit between masking and aggregation:
:class:`WireEncodeFilter` refuses a result that is already masked, and a job with secure aggregation keeps its 4-byte
ring elements (halving them needs a 16-bit ring in the protocol, with a smaller clip range).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from fedmrg.errors import ConfigError
from fedmrg.fl.statistics_round import STATISTICS_TASK
from fedmrg.privacy.secure_aggregation.constants import SecAggKey

CODECS = ("float32", "bfloat16", "float16", "int8-tensor", "int8-row")
EIGHT_BIT = ("int8-tensor", "int8-row")
#: DXO meta key of an encoded DXO: ``{"codec": str, "keys": list[str]}``.
WIRE_CODEC_META = "fedmrg.wire_codec"
#: key suffix of the float32 scales of an 8-bit encoded array.
SCALE_SUFFIX = "::wire_scale"
_FLOAT16_MAX = float(np.finfo(np.float16).max)


class WireCodecError(ValueError):
    """A DXO cannot be encoded or decoded as asked (out of range, already encoded, malformed)."""


def check_codec(codec: Any, *, where: str = "codec") -> str:
    """``codec`` if it is one of :data:`CODECS`, else :class:`~fedmrg.errors.ConfigError` naming ``where``."""
    if codec not in CODECS:
        raise ConfigError(f"`{where}` must be one of {list(CODECS)}, got {codec!r}")
    return codec


# ------------------------------------------------------------------------------------------------ array codecs
def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 array -> uint16 bfloat16 bit patterns, rounded to nearest even (NaN stays NaN)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = np.uint16(0x7FC0)
    return out


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 array (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _row_view(x: np.ndarray, per_row: bool) -> np.ndarray:
    """(R, M) view of ``x`` whose R rows each get a scale: one row unless ``per_row`` and ``x.ndim >= 2``; then the
    first axis, except for a 2-D array with more rows than columns (e.g. a LoRA B matrix, (out, r)), whose columns
    are the groups, so there are never more scales than ``sqrt(x.size)``."""
    if not per_row or x.ndim < 2:
        return x.reshape(1, -1)
    if x.ndim == 2 and x.shape[0] > x.shape[1]:
        return x.T
    return x.reshape(x.shape[0], -1)


def quantize_int8(x: np.ndarray, *, per_row: bool) -> tuple[np.ndarray, np.ndarray]:
    """float array -> (int8 array of ``x``'s shape, float32 scales (R,)); symmetric, round to nearest.

    R = ``x.shape[0]`` with ``per_row`` and ``x.ndim >= 2``, else 1. An all-zero row gets scale 0.
    """
    if not np.all(np.isfinite(x)):
        raise WireCodecError("cannot quantise non-finite values (NaN / inf) to int8")
    x = np.asarray(x, dtype=np.float32)
    rows = _row_view(x, per_row)
    scale = (np.abs(rows).max(axis=1) / 127.0).astype(np.float32) if rows.size else np.zeros(len(rows), np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)[:, None]
    q = np.empty(x.shape, dtype=np.int8)
    _row_view(q, per_row)[...] = np.clip(np.rint(rows / safe), -127, 127)
    return q, scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray, *, per_row: bool) -> np.ndarray:
    """Inverse of :func:`quantize_int8`: float32 array of ``q``'s shape."""
    rows = _row_view(q, per_row)
    if scale.shape != (rows.shape[0],):
        raise WireCodecError(f"scale shape {scale.shape} does not match {rows.shape[0]} row(s) of shape {q.shape}")
    out = np.empty(q.shape, dtype=np.float32)
    _row_view(out, per_row)[...] = rows * scale.astype(np.float32)[:, None]
    return out


def _num_scales(codec: str, shape: tuple[int, ...]) -> int:
    if codec != "int8-row" or len(shape) < 2:
        return 1
    return min(shape) if len(shape) == 2 else shape[0]


def encode_arrays(arrays: Mapping[str, Any], codec: str) -> tuple[dict[str, Any], list[str]]:
    """Encode every floating-point numpy array of ``arrays``; returns (new dict, encoded keys). See the module doc."""
    check_codec(codec)
    out: dict[str, Any] = {}
    encoded: list[str] = []
    for key, value in arrays.items():
        if key.endswith(SCALE_SUFFIX):
            raise WireCodecError(f"array name {key!r} ends with the reserved suffix {SCALE_SUFFIX!r}")
        if codec == "float32" or not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
            out[key] = value
            continue
        if codec == "bfloat16":
            out[key] = to_bfloat16_bits(value.astype(np.float32, copy=False))
        elif codec == "float16":
            finite = value[np.isfinite(value)]
            if finite.size and float(np.abs(finite).max()) > _FLOAT16_MAX:
                raise WireCodecError(
                    f"{key!r} holds |x| = {float(np.abs(finite).max()):.3g} > {_FLOAT16_MAX:.0f}, out of float16 "
                    "range; use codec 'bfloat16'"
                )
            out[key] = value.astype(np.float16)
        else:
            out[key], out[key + SCALE_SUFFIX] = quantize_int8(value, per_row=codec == "int8-row")
        encoded.append(key)
    return out, encoded


def decode_arrays(arrays: Mapping[str, Any], codec: str, keys: list[str]) -> dict[str, Any]:
    """Inverse of :func:`encode_arrays`: the encoded ``keys`` back to float32, scale arrays removed."""
    check_codec(codec)
    out = {k: v for k, v in arrays.items() if not k.endswith(SCALE_SUFFIX)}
    for key in keys:
        value = arrays.get(key)
        if not isinstance(value, np.ndarray):
            raise WireCodecError(f"encoded key {key!r} is missing or not an array")
        if codec == "bfloat16" and value.dtype == np.uint16:
            out[key] = from_bfloat16_bits(value)
        elif codec == "float16" and value.dtype == np.float16:
            out[key] = value.astype(np.float32)
        elif codec in EIGHT_BIT and value.dtype == np.int8:
            scale = arrays.get(key + SCALE_SUFFIX)
            if not isinstance(scale, np.ndarray):
                raise WireCodecError(f"encoded key {key!r} has no scale array {key + SCALE_SUFFIX!r}")
            out[key] = dequantize_int8(value, scale, per_row=codec == "int8-row")
        else:
            raise WireCodecError(f"encoded key {key!r}: dtype {value.dtype} does not match codec {codec!r}")
    return out


def wire_ratio(codec: str, shapes: Mapping[str, tuple[int, ...]]) -> float:
    """Bytes of the encoded arrays / float32 bytes, for float32 arrays of these shapes (payload only, no framing)."""
    check_codec(codec)
    raw = sum(4 * int(np.prod(s)) for s in shapes.values())
    per_value = {"float32": 4, "bfloat16": 2, "float16": 2}.get(codec, 1)
    enc = sum(per_value * int(np.prod(s)) for s in shapes.values())
    if codec in EIGHT_BIT:
        enc += sum(4 * _num_scales(codec, s) for s in shapes.values())
    return enc / raw if raw else 1.0


# ------------------------------------------------------------------------------------------------ filters
class WireEncodeFilter(DXOFilter):
    def __init__(self, codec: str = "bfloat16", data_kinds: list[str] | None = None):
        """Encodes the float arrays of WEIGHTS / WEIGHT_DIFF DXOs with ``codec`` (see the module doc).

        Args:
            codec (str, optional): one of ``float32``, ``bfloat16``, ``float16``, ``int8-tensor``, ``int8-row``.
                Defaults to ``"bfloat16"``.
            data_kinds (list[str], optional): DXO kinds to encode. Defaults to ``["WEIGHT_DIFF", "WEIGHTS"]``.

        Raises:
            ConfigError: unknown codec.
        """
        kinds = [DataKind.WEIGHT_DIFF, DataKind.WEIGHTS]
        super().__init__(supported_data_kinds=kinds, data_kinds_to_filter=data_kinds or kinds)
        self.codec = check_codec(codec)
        self.data_kinds_arg = data_kinds

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        if self.codec == "float32" or not isinstance(dxo.data, dict):
            return None
        if dxo.get_meta_prop(WIRE_CODEC_META) is not None:
            raise WireCodecError("the DXO is already wire-encoded; configure one WireEncodeFilter per chain")
        if dxo.get_meta_prop(SecAggKey.MASKED) is not None:
            raise WireCodecError(
                "the DXO is masked for secure aggregation; the server can only sum masked values, so they cannot be "
                "wire-encoded: remove WireEncodeFilter from jobs with secure aggregation"
            )
        if self.codec in EIGHT_BIT and dxo.data_kind == DataKind.WEIGHTS:
            raise WireCodecError(
                f"codec {self.codec!r} would re-quantise the whole model every round; send WEIGHTS with 'bfloat16' "
                "or 'float16' and use 8-bit codecs for WEIGHT_DIFF results"
            )
        data, keys = encode_arrays(dxo.data, self.codec)
        new = DXO(data_kind=dxo.data_kind, data=data, meta=dict(dxo.meta))
        new.set_meta_prop(WIRE_CODEC_META, {"codec": self.codec, "keys": keys})
        self.log_debug(fl_ctx, f"encoded {len(keys)} array(s) with {self.codec}")
        return new


class WireDecodeFilter(DXOFilter):
    def __init__(self, data_kinds: list[str] | None = None):
        """Decodes DXOs encoded by :class:`WireEncodeFilter` back to float32; others pass unchanged.

        Args:
            data_kinds (list[str], optional): DXO kinds to decode. Defaults to ``["WEIGHT_DIFF", "WEIGHTS"]``.
        """
        kinds = [DataKind.WEIGHT_DIFF, DataKind.WEIGHTS]
        super().__init__(supported_data_kinds=kinds, data_kinds_to_filter=data_kinds or kinds)
        self.data_kinds_arg = data_kinds

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        info = dxo.get_meta_prop(WIRE_CODEC_META)
        if info is None:
            return None
        if not isinstance(info, dict) or not isinstance(info.get("keys"), list):
            raise WireCodecError(f"malformed {WIRE_CODEC_META} meta: {info!r}")
        data = decode_arrays(dxo.data, info.get("codec"), info["keys"])
        meta = {k: v for k, v in dxo.meta.items() if k != WIRE_CODEC_META}
        return DXO(data_kind=dxo.data_kind, data=data, meta=meta)


# ------------------------------------------------------------------------------------------------ job configs
_ENCODE = f"{__name__}.WireEncodeFilter"
_DECODE = f"{__name__}.WireDecodeFilter"
_METER = "fedmrg.fl.wire_bytes_meter.WireBytesMeter"
_MASK = "fedmrg.privacy.secure_aggregation.mask_filter.SecureAggregationMaskFilter"


def _insert(cfg: dict[str, Any], key: str, tasks: list[str], flt: dict[str, Any], where: str) -> None:
    """Insert ``flt`` into every chain of ``cfg[key]`` that covers one of ``tasks`` (FLARE allows one chain per task),
    and a new chain for the tasks none covers. ``where``: "first", "last", "after-meter" (after the first
    WireBytesMeter, else first) or "before-meter" (before the last meter, else last)."""
    chains = cfg.setdefault(key, [])
    if not isinstance(chains, list):
        raise ConfigError(f"`{key}` must be a list of filter chains, got {type(chains).__name__}")
    covered: set[str] = set()
    for chain in chains:
        if not set(tasks) & set(chain.get("tasks", [])):
            continue
        covered |= set(chain["tasks"])
        filters = chain.setdefault("filters", [])
        meters = [i for i, f in enumerate(filters) if f.get("path") == _METER]
        pos = {
            "first": 0,
            "last": len(filters),
            "after-meter": meters[0] + 1 if meters else 0,
            "before-meter": meters[-1] if meters else len(filters),
        }[where]
        filters.insert(pos, dict(flt))
    missing = [t for t in tasks if t not in covered]
    if missing:
        chains.append({"tasks": missing, "filters": [dict(flt)]})


def apply_wire_codec(
    server: dict[str, Any], client: dict[str, Any], *, up: str = "bfloat16", down: str = "float32"
) -> None:
    """Put the codec filters into FLARE ``format_version`` 2 server / client config dicts, in place.

    ``up`` encodes the client's ``train`` / ``submit_model`` results last in its chain (after a DP filter: clip and
    noise on float32 first) and decodes them on the server right after its
    :class:`~fedmrg.fl.wire_bytes_meter.WireBytesMeter`; ``down`` (16-bit or ``float32``) encodes the server's
    ``train`` / ``validate`` / ``submit_model`` / ``statistics`` task data right before its meter and decodes it first on the client.

    Raises:
        ConfigError: unknown codec, an 8-bit ``down`` codec, a job with secure aggregation, or codec filters
            already present.
    """
    check_codec(up, where="up")
    check_codec(down, where="down")
    if down in EIGHT_BIT:
        raise ConfigError(f"`down` codec {down!r}: the model sent down is WEIGHTS; use bfloat16, float16 or float32")
    text = json.dumps([server, client])
    if _MASK in text and up != "float32":
        raise ConfigError("this job uses secure aggregation: masked results cannot be wire-encoded (see wire_codec)")
    if _ENCODE in text or _DECODE in text:
        raise ConfigError("the job already has wire-codec filters")
    decode = {"path": _DECODE, "args": {}}
    if up != "float32":
        tasks = ["train", "submit_model", STATISTICS_TASK]  # statistics (float64 STATISTICS) pass unencoded
        _insert(client, "task_result_filters", tasks, {"path": _ENCODE, "args": {"codec": up}}, "last")
        _insert(server, "task_result_filters", tasks, decode, "after-meter")
    if down != "float32":
        tasks = ["train", "validate", "submit_model", STATISTICS_TASK]
        _insert(server, "task_data_filters", tasks, {"path": _ENCODE, "args": {"codec": down}}, "before-meter")
        _insert(client, "task_data_filters", tasks, decode, "first")


def job_wire_codecs(server: dict[str, Any], client: dict[str, Any]) -> tuple[str, str]:
    """``(up, down)`` codecs of the encode filters in a job's server / client configs (``"float32"`` where none)."""

    def codec(cfg: dict[str, Any], key: str) -> str:
        found = {
            f.get("args", {}).get("codec", "bfloat16")
            for chain in cfg.get(key, [])
            for f in chain.get("filters", [])
            if f.get("path") == _ENCODE
        }
        if len(found) > 1:
            raise ConfigError(f"`{key}` holds wire encoders with different codecs {sorted(found)}; keep one")
        return found.pop() if found else "float32"

    return codec(client, "task_result_filters"), codec(server, "task_data_filters")


def remove_wire_codec(server: dict[str, Any], client: dict[str, Any]) -> tuple[str, str]:
    """Take every codec filter out of a job's configs, in place (a chain left empty by it is dropped); returns the
    ``(up, down)`` codecs it had (:func:`job_wire_codecs`)."""
    codecs = job_wire_codecs(server, client)
    for cfg in (server, client):
        for key in ("task_data_filters", "task_result_filters"):
            kept = []
            for chain in cfg.get(key, []):
                filters = chain.get("filters", [])
                rest = [f for f in filters if f.get("path") not in (_ENCODE, _DECODE)]
                if rest or len(rest) == len(filters):
                    kept.append({**chain, "filters": rest})
            if key in cfg:
                cfg[key] = kept
    return codecs


def set_wire_codec(
    server: dict[str, Any], client: dict[str, Any], *, up: str | None = None, down: str | None = None
) -> tuple[str, str]:
    """Replace a job's codec filters, in place: ``up`` / ``down`` given, else kept as the job has them.

    A job with secure aggregation (the client's mask filter) sends its results as masked ring elements and runs its
    protocol tasks through the same filter chains: any codec other than ``float32`` (given or already in the job) is
    refused, naming why. Returns the ``(up, down)`` codecs now configured.

    Raises:
        ConfigError: unknown codec, 8-bit ``down``, or any encoding with secure aggregation.
    """
    if up is not None:
        check_codec(up, where="wire.up")
    if down is not None:
        check_codec(down, where="wire.down")
        if down in EIGHT_BIT:
            raise ConfigError(
                f"`wire.down` {down!r}: the model sent down is the whole global model (WEIGHTS), which 8 bits would "
                "re-quantise every round; use bfloat16, float16 or float32 (8-bit codecs are for wire.up)"
            )
    job_up, job_down = remove_wire_codec(server, client)
    up, down = up or job_up, down or job_down
    if _MASK in json.dumps(client) and (up, down) != ("float32", "float32"):
        # the secure-aggregation tasks (advertise, share, unmask) share the model's filter chains, whose payloads are
        # not model weights: an encoder there would break the protocol, so any codec is refused, never dropped
        raise ConfigError(
            f"`wire.up` {up!r} / `wire.down` {down!r} with secure aggregation: each site's result is masked (uint32 "
            "ring elements the server can only sum, never decode per site), and the protocol's own tasks share the "
            "model's filter chains; use --set wire.up=float32 --set wire.down=float32 with secure aggregation"
        )
    apply_wire_codec(server, client, up=up, down=down)
    return up, down
