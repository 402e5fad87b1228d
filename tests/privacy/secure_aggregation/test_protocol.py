"""The whole protocol in one process (4 sites, no FLARE): exact aggregate, noise-like uploads, forged / replayed keys,
dropouts recovered by Shamir, and fail-closed below the threshold."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedmrg.privacy.secure_aggregation import crypto, fixed_point
from fedmrg.privacy.secure_aggregation.constants import SecureAggregationError
from fedmrg.privacy.secure_aggregation.protocol import ClientRound, Params, reconstruct, remove_masks

JOB = "job-123"
M = 5000


PARAMS = Params(clip_norm=4.0, max_weight=500)


def _round(pki, r=0, sites=("site-1", "site-2", "site-3", "site-4"), params=PARAMS):
    ca, ids = pki
    session = bytes([r]) * 16
    clients = {s: ClientRound.start(ids[s], JOB, r, session, params) for s in sites}
    ads = {s: c.advertisement for s, c in clients.items()}
    return ca, session, clients, ads


def _exchange(ca, clients, ads):
    shares = {s: {} for s in clients}
    for sender, c in clients.items():
        for recipient, blob in c.share(ads, ca).items():
            shares[recipient][sender] = blob
    return shares


def _deltas(sites, seed=0):
    rng = np.random.default_rng(seed)
    return {s: rng.normal(0, 0.05, M) for s in sites}, {s: int(rng.integers(20, 400)) for s in sites}


def _run(pki, drop=(), r=0):
    ca, session, clients, ads = _round(pki, r)
    shares = _exchange(ca, clients, ads)
    deltas, weights = _deltas(clients, seed=r)
    uploads = {s: c.mask(deltas[s], weights[s])[0] for s, c in clients.items() if s not in drop}
    survivors, dropped = sorted(uploads), sorted(drop)
    total = np.zeros(M, np.uint32)
    for y in uploads.values():
        total += y
    seed_sh, key_sh = {}, {}
    for s in survivors:
        seed_sh[s], key_sh[s] = clients[s].unmask(survivors, dropped, shares[s])
    t = clients[survivors[0]].params.threshold_for(len(clients))
    salt = crypto.round_salt(JOB, r, session)
    seeds, keys = reconstruct(ads, survivors, dropped, seed_sh, key_sh, t, salt)
    f = clients[survivors[0]].fraction_bits()
    avg = fixed_point.decode(remove_masks(total, ads, seeds, keys, salt), f, sum(weights[s] for s in survivors))
    exact = sum(weights[s] * deltas[s] for s in survivors) / sum(weights[s] for s in survivors)
    return avg, exact, f, uploads, deltas


def test_aggregate_equals_weighted_average_within_bound(pki):
    avg, exact, f, _, _ = _run(pki)
    err = np.abs(avg.astype(np.float64) - exact).max()
    assert err <= fixed_point.error_bound(f) + np.abs(exact).max() * 2**-24
    assert f == fixed_point.fraction_bits(4, 500, 4.0) == 18


def test_masked_upload_is_uncorrelated_with_the_delta(pki):
    _, _, _, uploads, deltas = _run(pki)
    for site, y in uploads.items():
        as_signed = y.view(np.int32).astype(np.float64)
        r = np.corrcoef(as_signed, deltas[site])[0, 1]
        assert abs(r) < 5 / np.sqrt(M)  # |r| ~ N(0, 1/M) for independent data; 5 sigma
        assert abs(y.astype(np.float64).mean() / 2**32 - 0.5) < 0.02  # uniform over uint32, unlike the encoding
    # the unmasked encoding, by contrast, is perfectly correlated with the delta
    enc = fixed_point.encode(deltas["site-1"], 1, 18).view(np.int32).astype(np.float64)
    assert np.corrcoef(enc, deltas["site-1"])[0, 1] > 0.999


def test_one_dropout_after_key_exchange_is_recovered_by_shamir(pki):
    avg, exact, f, uploads, _ = _run(pki, drop=("site-3",))
    assert "site-3" not in uploads
    assert np.abs(avg.astype(np.float64) - exact).max() <= fixed_point.error_bound(f) + np.abs(exact).max() * 2**-24


def test_too_many_dropouts_fail_closed(pki):
    with pytest.raises(SecureAggregationError, match="fewer than the threshold 3"):
        _run(pki, drop=("site-2", "site-3"))


def test_substituted_key_is_detected_naming_the_site(pki):
    ca, _, clients, ads = _round(pki)
    mallory_sk, mallory_pk = crypto.new_key_pair()  # the server swaps site-2's mask key for its own
    forged = dict(ads, **{"site-2": dataclasses.replace(ads["site-2"], mask_pk=mallory_pk)})
    with pytest.raises(SecureAggregationError, match="site site-2: the signature .* does not verify"):
        clients["site-1"].share(forged, ca)
    # another site's certificate and signature under site-2's name
    swapped = dict(ads, **{"site-2": dataclasses.replace(ads["site-4"], site="site-2")})
    with pytest.raises(SecureAggregationError, match="site site-2: the certificate names"):
        clients["site-1"].share(swapped, ca)


def test_key_replayed_from_an_earlier_round_is_detected(pki):
    _, _, _, old_ads = _round(pki, r=0)
    ca, _, clients, ads = _round(pki, r=1)
    replayed = dict(ads, **{"site-3": old_ads["site-3"]})
    with pytest.raises(SecureAggregationError, match="site site-3: advertisement is for round 0.*replayed"):
        clients["site-1"].share(replayed, ca)
    # the old advertisement relabelled as round 1: the signature binds round and session
    relabelled = dict(ads, **{"site-3": dataclasses.replace(old_ads["site-3"], round=1, session=ads["site-3"].session)})
    with pytest.raises(SecureAggregationError, match="site site-3: the signature"):
        clients["site-1"].share(relabelled, ca)


def test_unmask_never_reveals_both_secrets_of_a_site(pki, tmp_path):
    ca, _, clients, ads = _round(pki)
    shares = _exchange(ca, clients, ads)
    for c in clients.values():
        c.mask(np.zeros(10), 1)
    sites = sorted(clients)
    with pytest.raises(SecureAggregationError, match="declared dropped"):
        clients["site-2"].unmask([s for s in sites if s != "site-2"], ["site-2"], shares["site-2"])
    with pytest.raises(SecureAggregationError, match="do not partition"):
        clients["site-1"].unmask(sites, ["site-2"], shares["site-1"])
    # state survives a save/load round trip (process restarts between tasks), file mode 0600
    path = tmp_path / "round.json"
    clients["site-1"].save(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    again = ClientRound.load(path)
    assert again.unmask(sites, [], shares["site-1"]) == clients["site-1"].unmask(sites, [], shares["site-1"])


def test_tampered_share_or_bad_reconstruction_fails_closed(pki):
    ca, session, clients, ads = _round(pki)
    shares = _exchange(ca, clients, ads)
    bad = dict(shares["site-1"])
    bad["site-2"] = bad["site-2"][:-1] + bytes([bad["site-2"][-1] ^ 1])
    for c in clients.values():
        c.mask(np.zeros(10), 1)
    with pytest.raises(SecureAggregationError, match="share from site site-2 does not decrypt"):
        clients["site-1"].unmask(sorted(clients), [], bad)
    # a responder that lies about a share: the reconstructed seed fails its signed commitment
    sites = sorted(clients)
    seed_sh = {s: clients[s].unmask(sites, [], shares[s])[0] for s in sites}
    seed_sh["site-1"]["site-4"] = bytes(66)
    seed_sh = {s: seed_sh[s] for s in ["site-1", "site-2", "site-3"]}
    with pytest.raises(
        SecureAggregationError,
        match="site site-4: (its shares are inconsistent|the reconstructed self-mask seed does not match)",
    ):
        reconstruct(ads, sites, [], seed_sh, {}, 3, crypto.round_salt(JOB, 0, session))


def test_params_checks():
    with pytest.raises(ValueError, match="min_sites"):
        Params(min_sites=2)
    with pytest.raises(SecureAggregationError, match="strict majority"):
        Params(threshold=2).threshold_for(4)
