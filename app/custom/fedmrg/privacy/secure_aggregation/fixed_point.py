"""Fixed-point encoding of clipped, weighted deltas on ``uint32`` with wrap-around (arithmetic mod 2^32).

A site with integer weight ``w`` (its sample count, capped at ``max_weight``) and delta ``x`` (L2 norm clipped to
``clip_norm`` C, so every ``|x_i| <= C``) uploads ``w * round(x_i * 2^f) mod 2^32``. The server adds the uploads mod
2^32, reads the sum as a signed int32 (exact while ``|sum| < 2^31``) and divides by ``2^f`` and by the total weight
``W = sum(w)``. ``f`` (:func:`fraction_bits`) is the largest number of fraction bits for which ``n`` sites can never
overflow: ``n * max_weight * (C * 2^f + 1/2) < 2^31``.

Error bound: each site's rounding error is at most ``2^-(f+1)`` per element, so the decoded weighted average differs
from the exact ``sum(w x) / W`` by at most ``sum(w) 2^-(f+1) / W = 2^-(f+1)`` per element (:func:`error_bound`),
whatever the number of sites and their weights, plus the float32 rounding of the result (relative ``2^-24``).
Example: 3 sites, ``max_weight`` 1000, C = 1 -> f = 19, bound 9.5e-7.
"""

from __future__ import annotations

import math

import numpy as np

MODULUS_BITS = 32
MAX_FRACTION_BITS = 30
MIN_FRACTION_BITS = 8


def fraction_bits(n_sites: int, max_weight: int, clip_norm: float) -> int:
    """Largest ``f`` (<= 30) with ``n_sites * max_weight * (clip_norm * 2^f + 1/2) < 2^31``.

    Raises:
        ValueError: when fewer than 8 fraction bits would remain (lower ``max_weight`` or ``clip_norm``).
    """
    if n_sites < 1 or max_weight < 1 or not clip_norm > 0:
        raise ValueError(f"need n_sites, max_weight >= 1 and clip_norm > 0, got {n_sites}, {max_weight}, {clip_norm}")
    budget = 2.0**31 / (n_sites * max_weight) - 0.5
    f = min(MAX_FRACTION_BITS, math.floor(math.log2(budget / clip_norm)) if budget > 0 else -1)
    while f >= 0 and n_sites * max_weight * (clip_norm * 2.0**f + 0.5) >= 2.0**31:
        f -= 1
    if f < MIN_FRACTION_BITS:
        raise ValueError(
            f"{n_sites} sites x max_weight {max_weight} x clip_norm {clip_norm} leave {f} fraction bits in 32-bit "
            f"fixed point (< {MIN_FRACTION_BITS}); lower `max_weight` or `clip_norm`"
        )
    return f


def error_bound(fraction_bits: int) -> float:
    """Largest per-element difference between the decoded weighted average and the exact one (before float32)."""
    return 2.0 ** -(fraction_bits + 1)


def clip_l2(x: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]:
    """``x`` (float64, any shape) scaled to L2 norm <= ``clip_norm``; returns ``(clipped, norm before clipping)``."""
    norm = float(np.linalg.norm(x))
    if norm > clip_norm:
        return x * (clip_norm / norm), norm
    return x, norm


def encode(x: np.ndarray, weight: int, fraction_bits: int) -> np.ndarray:
    """``weight * round(x * 2^f) mod 2^32`` as uint32, shape of ``x``; ``x`` must already be clipped."""
    q = np.rint(np.asarray(x, dtype=np.float64) * 2.0**fraction_bits).astype(np.int64) * np.int64(weight)
    return np.bitwise_and(q, 0xFFFFFFFF).astype(np.uint32)


def decode(total: np.ndarray, fraction_bits: int, total_weight: int) -> np.ndarray:
    """Weighted average from the mod-2^32 sum of encodings: ``int32(total) / 2^f / total_weight`` as float32."""
    signed = np.ascontiguousarray(total, dtype=np.uint32).view(np.int32).astype(np.float64)
    return (signed / (2.0**fraction_bits * total_weight)).astype(np.float32)
