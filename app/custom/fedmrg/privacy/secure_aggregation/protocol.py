"""The pairwise-mask protocol (Bonawitz et al., CCS 2017, with signed keys), free of FLARE: one round at a site
(:class:`ClientRound`) and the server's checks and unmasking (:func:`verify_advertisements`, :func:`reconstruct`,
:func:`remove_masks`). The FLARE components call these; the tests drive them directly too.

Round ``r`` of job ``j`` with server-drawn ``session`` (16 random bytes):

1. advertise: each site makes two X25519 key pairs (mask keys, share-encryption keys) and a 32-byte self-mask seed
   ``b``, and signs ``(protocol, j, r, session, site, mask_pk, share_pk, SHA-256 commitment to b)`` with its identity;
2. share: every site verifies every advertisement against the CA (a forged, substituted or replayed one is an error
   naming the site), then Shamir-splits (t-of-n) its mask private key and ``b`` and sends share ``i`` to participant
   ``i``, encrypted with ChaCha20-Poly1305 under an HKDF key from X25519(share keys);
3. train: each site uploads ``y = encode(w * clip(delta)) + PRG(b) + sum_v ±PRG(s_uv) mod 2^32`` where ``s_uv`` is the
   HKDF of X25519(mask keys) and the sign is + when ``u < v`` (names sorted), so pairwise masks cancel in the sum;
4. unmask: survivors reveal shares of the survivors' ``b`` and of the dropped sites' mask private keys, never both for
   one site (a second unmask request for the round finds no state and is refused). The server reconstructs them,
   checks each against its commitment / public key, and removes the self masks and the dropped sites' pairwise masks.

Every participant of step 2 must be a participant of step 1 and vice versa (a site that drops between advertising and
sharing fails the round); a site that drops after sharing is recovered in step 4 as long as ``t`` sites survive.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from cryptography import x509
from cryptography.exceptions import InvalidTag

from fedmrg.privacy.secure_aggregation import crypto, fixed_point, shamir
from fedmrg.privacy.secure_aggregation.constants import SecureAggregationError
from fedmrg.privacy.secure_aggregation.identity import SiteIdentity, verify_signed


@dataclass(frozen=True)
class Params:
    """Protocol parameters, chosen by the server's job config and checked by every site.

    Args:
        clip_norm: L2 norm C every site clips its delta to before encoding (> 0).
        max_weight: cap on a site's integer weight (its sample count) (>= 1).
        threshold: Shamir threshold t; 0 means a strict majority ``n // 2 + 1`` of the round's participants.
        min_sites: fewest participants a round may have (>= 3: with 2, each site learns the other's delta).
    """

    clip_norm: float = 1.0
    max_weight: int = 1000
    threshold: int = 0
    min_sites: int = 3

    def __post_init__(self) -> None:
        if not (isinstance(self.clip_norm, (int, float)) and self.clip_norm > 0):
            raise ValueError(f"`clip_norm` must be a number > 0, got {self.clip_norm!r}")
        for name in ("max_weight", "threshold", "min_sites"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (1 if name == "max_weight" else 0):
                raise ValueError(f"`{name}` must be an int >= {1 if name == 'max_weight' else 0}, got {v!r}")
        if self.min_sites < 3:
            raise ValueError(
                f"`min_sites` must be >= 3 (with 2 sites the sum reveals the peer's delta), got {self.min_sites}"
            )

    def threshold_for(self, n: int) -> int:
        """Shamir threshold for ``n`` participants; must be a strict majority and at most ``n``."""
        t = self.threshold or n // 2 + 1
        if not n // 2 < t <= n:
            raise SecureAggregationError(f"threshold {t} is not a strict majority of {n} participants (n/2 < t <= n)")
        return t

    @classmethod
    def from_dict(cls, d: dict) -> Params:
        return cls(**{k: d[k] for k in ("clip_norm", "max_weight", "threshold", "min_sites")})


@dataclass(frozen=True)
class Advertisement:
    """A site's signed public keys for one round (all bytes)."""

    site: str
    round: int
    session: bytes
    mask_pk: bytes
    share_pk: bytes
    commitment: bytes
    cert_pem: bytes
    signature: bytes = b""

    def message(self, job_id: str) -> bytes:
        """What the site signs: binds protocol, job, round, session, site name and every public value."""
        return crypto.pack(
            crypto.PROTOCOL, "advertise", job_id, self.round, self.session, self.site,
            self.mask_pk, self.share_pk, self.commitment,
        )  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Advertisement:
        try:
            ad = cls(**d)
        except TypeError as e:
            raise SecureAggregationError(f"malformed advertisement: {e}") from e
        if not (isinstance(ad.site, str) and isinstance(ad.round, int)) or not all(
            isinstance(getattr(ad, k), bytes) for k in ("session", "mask_pk", "share_pk", "commitment", "cert_pem")
        ):
            raise SecureAggregationError(f"malformed advertisement from {ad.site!r}")
        return ad


def verify_advertisement(
    ad: Advertisement, site: str, ca_cert: x509.Certificate, job_id: str, round_num: int, session: bytes
) -> None:
    """Raise :class:`SecureAggregationError` naming ``site`` unless ``ad`` is its valid advertisement for this round."""
    if ad.site != site:
        raise SecureAggregationError(f"site {site}: advertisement carries the name {ad.site!r} (substituted)")
    if ad.round != round_num or ad.session != session:
        raise SecureAggregationError(
            f"site {site}: advertisement is for round {ad.round} / another session, not round {round_num} (replayed)"
        )
    if len(ad.mask_pk) != 32 or len(ad.share_pk) != 32 or len(ad.commitment) != 32:
        raise SecureAggregationError(f"site {site}: public keys or commitment have the wrong length")
    verify_signed(ca_cert, ad.cert_pem, site, ad.message(job_id), ad.signature)


def verify_advertisements(
    ads: dict[str, Advertisement], ca_cert: x509.Certificate, job_id: str, round_num: int, session: bytes
) -> None:
    for site, ad in sorted(ads.items()):
        verify_advertisement(ad, site, ca_cert, job_id, round_num, session)
    keys = [ad.mask_pk for ad in ads.values()] + [ad.share_pk for ad in ads.values()]
    if len(set(keys)) != len(keys):
        raise SecureAggregationError("two advertisements share a public key (a replayed or copied key)")


def _hex(b: bytes) -> str:
    return b.hex()


@dataclass
class ClientRound:
    """One site's secrets and view of one round; saved to a 0600 file between tasks (see :meth:`save`)."""

    job_id: str
    site: str
    round: int
    session: bytes
    params: Params
    mask_sk: bytes
    share_sk: bytes
    self_seed: bytes
    advertisement: Advertisement
    participants: list[str] = field(default_factory=list)
    peers: dict[str, Advertisement] = field(default_factory=dict)
    own_shares: bytes = b""  # this site's own share (mask_sk share || self_seed share)
    masked: bool = False

    # -- step 1 --------------------------------------------------------------------------------------------------
    @classmethod
    def start(cls, identity: SiteIdentity, job_id: str, round_num: int, session: bytes, params: Params) -> ClientRound:
        mask_sk, mask_pk = crypto.new_key_pair()
        share_sk, share_pk = crypto.new_key_pair()
        seed = os.urandom(32)
        salt = crypto.round_salt(job_id, round_num, session)
        ad = Advertisement(
            identity.name, round_num, session, mask_pk, share_pk, crypto.commitment(seed, identity.name, salt),
            identity.cert_pem,
        )  # fmt: skip
        ad = Advertisement(**(ad.to_dict() | {"signature": identity.sign(ad.message(job_id))}))
        return cls(job_id, identity.name, round_num, session, params, mask_sk, share_sk, seed, ad)

    @property
    def salt(self) -> bytes:
        return crypto.round_salt(self.job_id, self.round, self.session)

    # -- step 2 --------------------------------------------------------------------------------------------------
    def share(self, ads: dict[str, Advertisement], ca_cert: x509.Certificate) -> dict[str, bytes]:
        """Verify every advertisement; return ``{recipient: encrypted share}`` for the other participants."""
        if self.participants:
            raise SecureAggregationError(f"site {self.site}: round {self.round} keys were already shared")
        if ads.get(self.site) != self.advertisement:
            raise SecureAggregationError(f"site {self.site}: the relayed bundle does not hold this site's own keys")
        verify_advertisements(ads, ca_cert, self.job_id, self.round, self.session)
        n = len(ads)
        if n < self.params.min_sites:
            raise SecureAggregationError(f"round {self.round} has {n} participants, fewer than {self.params.min_sites}")
        t = self.params.threshold_for(n)
        self.participants = sorted(ads)
        self.peers = {s: ad for s, ad in ads.items() if s != self.site}
        key_shares = shamir.split(self.mask_sk, n, t)
        seed_shares = shamir.split(self.self_seed, n, t)
        out = {}
        for i, site in enumerate(self.participants):
            plain = key_shares[i] + seed_shares[i]
            if site == self.site:
                self.own_shares = plain
                continue
            key = crypto.share_key(self.share_sk, ads[site].share_pk, self.salt, self.site, site)
            out[site] = crypto.seal(key, plain, crypto.pack(crypto.PROTOCOL, "share", self.salt, self.site, site))
        return out

    # -- step 3 --------------------------------------------------------------------------------------------------
    def fraction_bits(self) -> int:
        return fixed_point.fraction_bits(len(self.participants), self.params.max_weight, self.params.clip_norm)

    def mask(self, flat: np.ndarray, weight: int) -> tuple[np.ndarray, float]:
        """Masked upload ``(m,)`` uint32 of a flat float delta; returns it and the delta's norm before clipping."""
        if not self.participants:
            raise SecureAggregationError(f"site {self.site}: round {self.round} has no shared keys (no share step)")
        if self.masked:
            raise SecureAggregationError(f"site {self.site}: round {self.round} was already masked once")
        if not 1 <= weight <= self.params.max_weight:
            raise SecureAggregationError(f"site {self.site}: weight {weight} outside [1, {self.params.max_weight}]")
        clipped, norm = fixed_point.clip_l2(np.asarray(flat, dtype=np.float64), self.params.clip_norm)
        y = fixed_point.encode(clipped, weight, self.fraction_bits())
        n = y.size
        y += crypto.mask(crypto.self_seed(self.self_seed, self.salt, self.site), n)
        for site, ad in self.peers.items():
            m = crypto.mask(crypto.pairwise_seed(self.mask_sk, ad.mask_pk, self.salt, self.site, site), n)
            if self.site < site:
                y += m
            else:
                y -= m
        self.masked = True
        return y, norm

    # -- step 4 --------------------------------------------------------------------------------------------------
    def unmask(
        self, survivors: list[str], dropped: list[str], shares_for_me: dict[str, bytes]
    ) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """``({survivor: self-seed share}, {dropped: mask-key share})`` held by this site (x = its index + 1)."""
        s, d = set(survivors), set(dropped)
        if s & d or s | d != set(self.participants) or len(survivors) != len(s):
            raise SecureAggregationError(
                f"site {self.site}: survivors {sorted(s)} and dropped {sorted(d)} do not partition the round's "
                f"participants {self.participants}"
            )
        if self.site not in s:
            raise SecureAggregationError(f"site {self.site}: asked to unmask while declared dropped; refusing")
        if not self.masked:
            raise SecureAggregationError(f"site {self.site}: declared a survivor but uploaded no masked update")
        t = self.params.threshold_for(len(self.participants))
        if len(s) < t:
            raise SecureAggregationError(f"only {len(s)} survivors, fewer than the threshold {t}; refusing to unmask")
        seeds, keys = {}, {}
        for src in self.participants:
            if src == self.site:
                plain = self.own_shares
            else:
                blob = shares_for_me.get(src)
                if not isinstance(blob, bytes):
                    raise SecureAggregationError(f"site {self.site}: no share from site {src} in the unmask request")
                key = crypto.share_key(self.share_sk, self.peers[src].share_pk, self.salt, src, self.site)
                aad = crypto.pack(crypto.PROTOCOL, "share", self.salt, src, self.site)
                try:
                    plain = crypto.open_sealed(key, blob, aad)
                except InvalidTag as e:
                    raise SecureAggregationError(f"site {self.site}: the share from site {src} does not decrypt") from e
            key_share, seed_share = plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :]
            if src in s:
                seeds[src] = seed_share
            else:
                keys[src] = key_share
        return seeds, keys

    # -- persistence ---------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write to ``path`` with mode 0600 (atomic replace). Holds the round's ephemeral secrets: delete after use."""
        d = {
            "job_id": self.job_id, "site": self.site, "round": self.round, "session": _hex(self.session),
            "params": asdict(self.params), "mask_sk": _hex(self.mask_sk), "share_sk": _hex(self.share_sk),
            "self_seed": _hex(self.self_seed), "advertisement": _ad_json(self.advertisement),
            "participants": self.participants, "peers": {s: _ad_json(a) for s, a in self.peers.items()},
            "own_shares": _hex(self.own_shares), "masked": self.masked,
        }  # fmt: skip
        path = Path(path)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(d, f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> ClientRound:
        d = json.loads(Path(path).read_text())
        return cls(
            d["job_id"], d["site"], d["round"], bytes.fromhex(d["session"]), Params.from_dict(d["params"]),
            bytes.fromhex(d["mask_sk"]), bytes.fromhex(d["share_sk"]), bytes.fromhex(d["self_seed"]),
            _ad_from_json(d["advertisement"]), d["participants"],
            {s: _ad_from_json(a) for s, a in d["peers"].items()}, bytes.fromhex(d["own_shares"]), d["masked"],
        )  # fmt: skip


def _ad_json(ad: Advertisement) -> dict:
    return {k: v.hex() if isinstance(v, bytes) else v for k, v in ad.to_dict().items()}


def _ad_from_json(d: dict) -> Advertisement:
    return Advertisement(**{k: bytes.fromhex(v) if k not in ("site", "round") else v for k, v in d.items()})


# -- server -------------------------------------------------------------------------------------------------------------
def reconstruct(
    ads: dict[str, Advertisement],
    survivors: list[str],
    dropped: list[str],
    seed_shares: dict[str, dict[str, bytes]],
    key_shares: dict[str, dict[str, bytes]],
    t: int,
    salt: bytes,
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Recover survivors' self-mask seeds and dropped sites' mask private keys from the shares the responders sent.

    Args:
        ads: the round's advertisements by site (participants = sorted keys; share x = index + 1).
        seed_shares / key_shares: ``{responder: {site: share}}`` from the unmask step.
        t: the Shamir threshold.

    Returns:
        ``({survivor: self seed}, {dropped: mask private key})``, each checked against its commitment / public key.

    Raises:
        SecureAggregationError: naming a site whose secret has fewer than ``t`` shares or does not match.
    """
    participants = sorted(ads)
    x_of = {s: i + 1 for i, s in enumerate(participants)}
    seeds, keys = {}, {}
    for target, by_responder, out in ((survivors, seed_shares, seeds), (dropped, key_shares, keys)):
        for site in target:
            shares = {x_of[r]: sh[site] for r, sh in by_responder.items() if isinstance(sh.get(site), bytes)}
            if len(shares) < t:
                raise SecureAggregationError(
                    f"site {site}: {len(shares)} shares received, fewer than the threshold {t}"
                )
            try:
                secret = shamir.combine(dict(sorted(shares.items())[:t]))
            except ValueError as e:
                raise SecureAggregationError(f"site {site}: its shares are inconsistent ({e})") from e
            ok = (
                crypto.commitment(secret, site, salt) == ads[site].commitment
                if out is seeds
                else crypto.public_key(secret) == ads[site].mask_pk
            )
            if not ok:
                what = "self-mask seed" if out is seeds else "mask private key"
                raise SecureAggregationError(f"site {site}: the reconstructed {what} does not match its advertisement")
            out[site] = secret
    return seeds, keys


def remove_masks(
    total: np.ndarray,
    ads: dict[str, Advertisement],
    seeds: dict[str, bytes],
    dropped_keys: dict[str, bytes],
    salt: bytes,
) -> np.ndarray:
    """``total`` (the mod-2^32 sum of the survivors' uploads, ``(m,)`` uint32) minus their self masks and their
    pairwise masks with the dropped sites, in place; survivors = ``seeds``' keys."""
    n = total.size
    for site, seed in seeds.items():
        total -= crypto.mask(crypto.self_seed(seed, salt, site), n)
    for gone, sk in dropped_keys.items():
        for site in seeds:
            m = crypto.mask(crypto.pairwise_seed(sk, ads[site].mask_pk, salt, gone, site), n)
            if site < gone:  # the survivor added +m; take it back
                total -= m
            else:
                total += m
    return total


def layout_of(arrays: dict[str, np.ndarray]) -> list[tuple[str, tuple[int, ...]]]:
    """``[(key, shape)]`` in sorted key order: the order in which :func:`flatten` concatenates."""
    return [(k, tuple(np.shape(arrays[k]))) for k in sorted(arrays)]


def flatten(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, list[tuple[str, tuple[int, ...]]]]:
    """Concatenate arrays in sorted key order: ``(flat (m,), layout [(key, shape)])``."""
    layout = layout_of(arrays)
    flat = np.concatenate([np.asarray(arrays[k]).reshape(-1) for k, _ in layout]) if layout else np.zeros(0)
    return flat, layout


def unflatten(flat: np.ndarray, layout: list[tuple[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    out, i = {}, 0
    for key, shape in layout:
        size = int(np.prod(shape, dtype=np.int64))
        out[key] = flat[i : i + size].reshape(shape)
        i += size
    return out
