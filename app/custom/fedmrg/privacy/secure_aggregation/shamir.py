"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

Written by hand because ``cryptography`` (pyca) has no secret sharing and the project avoids a second crypto library
(PyCryptodome) for about 40 lines; only a few 32-byte secrets are shared per round, so speed does not matter.
Coefficients come from :mod:`secrets`. Share ``i`` (1-based x-coordinate) is the polynomial's value at ``x = i``,
serialised as 66 big-endian bytes.
"""

from __future__ import annotations

import secrets

PRIME = 2**521 - 1  # a Mersenne prime; any 32-byte secret is < PRIME
SHARE_BYTES = 66


def split(secret: bytes, n: int, t: int) -> list[bytes]:
    """``n`` shares of ``secret`` (<= 64 bytes), any ``t`` of which recover it; share ``i`` is for ``x = i + 1``."""
    if not 1 <= t <= n:
        raise ValueError(f"need 1 <= t <= n, got t={t}, n={n}")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares.append(y.to_bytes(SHARE_BYTES, "big"))
    return shares


def combine(shares: dict[int, bytes], length: int = 32) -> bytes:
    """The secret (``length`` bytes) from ``{x: share}``; needs at least ``t`` shares with distinct ``x >= 1``.

    With fewer than ``t`` shares the result is a wrong value, not an error: callers check it against a public
    commitment (a hash, or the X25519 public key).
    """
    if not shares or any(x < 1 for x in shares):
        raise ValueError(f"need shares with x >= 1, got x = {sorted(shares)}")
    points = [(x, int.from_bytes(y, "big")) for x, y in shares.items()]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 2 ** (8 * length):
        raise ValueError("shares do not combine to a secret of the expected length (inconsistent shares)")
    return secret.to_bytes(length, "big")
