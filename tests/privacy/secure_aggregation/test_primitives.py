"""Fixed point, Shamir, masks and identities: the building blocks, each checked against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest

from fedmrg.privacy.secure_aggregation import crypto, fixed_point, shamir
from fedmrg.privacy.secure_aggregation.constants import SecureAggregationError
from fedmrg.privacy.secure_aggregation.identity import simulated_ca, simulated_identity, verify_signed


def test_fraction_bits_never_overflow_and_decode_within_bound():
    rng = np.random.default_rng(0)
    n, max_w, clip = 5, 300, 2.0
    f = fixed_point.fraction_bits(n, max_w, clip)
    assert n * max_w * (clip * 2.0**f + 0.5) < 2**31 <= n * max_w * (clip * 2.0 ** (f + 1) + 0.5)
    # worst case: every site at the clip bound with the largest weight, all the same sign -> no wrap-around
    xs = [np.full(7, clip) for _ in range(n)]
    total = sum(fixed_point.encode(x, max_w, f) for x in xs).astype(np.uint32)
    assert np.allclose(fixed_point.decode(total, f, n * max_w), clip, atol=fixed_point.error_bound(f))
    # random deltas and weights: |decoded - exact| <= 2^-(f+1) (+ float32 rounding)
    weights = rng.integers(1, max_w + 1, size=n)
    xs = [fixed_point.clip_l2(rng.normal(0, 1, 1000), clip)[0] for _ in range(n)]
    total = np.zeros(1000, np.uint32)
    for x, w in zip(xs, weights, strict=True):
        total += fixed_point.encode(x, int(w), f)
    exact = sum(w * x for x, w in zip(xs, weights, strict=True)) / weights.sum()
    err = np.abs(fixed_point.decode(total, f, int(weights.sum())).astype(np.float64) - exact)
    assert err.max() <= fixed_point.error_bound(f) + np.abs(exact).max() * 2**-24
    assert err.max() > 0  # the bound is not vacuous: quantisation is visible


def test_fraction_bits_refuses_too_coarse():
    with pytest.raises(ValueError, match="fraction bits"):
        fixed_point.fraction_bits(100, 100_000, 10.0)


def test_shamir_threshold():
    secret = bytes(range(32))
    shares = shamir.split(secret, 5, 3)
    assert shamir.combine({1: shares[0], 3: shares[2], 5: shares[4]}) == secret
    assert shamir.combine({2: shares[1], 3: shares[2], 4: shares[3], 5: shares[4]}) == secret
    try:
        two = shamir.combine({1: shares[0], 2: shares[1]})
    except ValueError:
        two = None
    assert two != secret  # t-1 shares give a wrong value (overwhelming probability)


def test_masks_are_deterministic_symmetric_and_domain_separated():
    a_sk, a_pk = crypto.new_key_pair()
    b_sk, b_pk = crypto.new_key_pair()
    salt = crypto.round_salt("job", 3, b"s" * 16)
    s_ab = crypto.pairwise_seed(a_sk, b_pk, salt, "site-a", "site-b")
    assert s_ab == crypto.pairwise_seed(b_sk, a_pk, salt, "site-b", "site-a")
    assert s_ab != crypto.pairwise_seed(a_sk, b_pk, crypto.round_salt("job", 4, b"s" * 16), "site-a", "site-b")
    assert crypto.share_key(a_sk, b_pk, salt, "site-a", "site-b") != s_ab
    assert crypto.share_key(a_sk, b_pk, salt, "site-a", "site-b") != crypto.share_key(
        a_sk, b_pk, salt, "site-b", "site-a"
    )
    m = crypto.mask(s_ab, 10_000)
    assert m.dtype == np.uint32 and np.array_equal(m, crypto.mask(s_ab, 10_000))
    assert abs(m.astype(np.float64).mean() / 2**32 - 0.5) < 0.02  # ~uniform


def test_identity_sign_verify_and_wrong_ca(tmp_path, pki):
    ca, ids = pki
    msg = b"hello"
    sig = ids["site-1"].sign(msg)
    verify_signed(ca, ids["site-1"].cert_pem, "site-1", msg, sig)
    with pytest.raises(SecureAggregationError, match="site-2.*names"):
        verify_signed(ca, ids["site-1"].cert_pem, "site-2", msg, sig)
    with pytest.raises(SecureAggregationError, match="site-1.*does not verify"):
        verify_signed(ca, ids["site-1"].cert_pem, "site-1", b"hellO", sig)
    other_ca, _ = simulated_ca(tmp_path / "other")
    rogue = simulated_identity(tmp_path / "other", "site-1")  # same name, another CA
    with pytest.raises(SecureAggregationError, match="not issued by the federation"):
        verify_signed(ca, rogue.cert_pem, "site-1", msg, rogue.sign(msg))
    assert other_ca.subject == ca.subject  # same CA name: only the signature tells them apart
