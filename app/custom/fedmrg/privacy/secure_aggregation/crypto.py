"""Cryptographic primitives of the pairwise-mask protocol, all from ``cryptography`` (pyca).

- key agreement: X25519 (:func:`new_key_pair`, :func:`agree`), 32-byte raw public keys;
- key derivation: HKDF-SHA256 with the salt bound to (job id, round, session) (:func:`round_salt`) and the purpose and
  site names in ``info`` (domain separation: mask seeds, self-mask seeds and share-encryption keys never coincide);
- mask expansion: the ChaCha20 keystream of a 32-byte seed viewed as little-endian ``uint32`` (:func:`mask`);
- share transport: ChaCha20-Poly1305 with the (job, round, session, sender, recipient) bound as associated data.

Byte strings that are hashed or signed are built with :func:`pack` (length-prefixed fields), so that no two different
field tuples serialise to the same bytes.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PROTOCOL = b"fedmrg-secagg-v1"
PAIRWISE_MASK = b"pairwise-mask"
SELF_MASK = b"self-mask"
SHARE_ENCRYPTION = b"share-encryption"
_ZERO_NONCE16 = bytes(16)  # ChaCha20 in pyca takes a 16-byte counter+nonce; every mask key is used once


def pack(*fields: bytes | str | int) -> bytes:
    """Injective encoding of a tuple of fields: each as a 4-byte big-endian length and its bytes (str: UTF-8)."""
    out = bytearray()
    for f in fields:
        b = f.encode() if isinstance(f, str) else str(f).encode() if isinstance(f, int) else bytes(f)
        out += struct.pack(">I", len(b)) + b
    return bytes(out)


def round_salt(job_id: str, round_num: int, session: bytes) -> bytes:
    """HKDF salt of one round: SHA-256 of (protocol, job id, round, session)."""
    h = hashes.Hash(hashes.SHA256())
    h.update(pack(PROTOCOL, "salt", job_id, round_num, session))
    return h.finalize()


def commitment(seed: bytes, site: str, salt: bytes) -> bytes:
    """SHA-256 commitment to a site's self-mask seed, published (signed) in its advertisement."""
    h = hashes.Hash(hashes.SHA256())
    h.update(pack(PROTOCOL, "self-mask-commitment", salt, site, seed))
    return h.finalize()


def new_key_pair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as ``(private 32 bytes, public 32 bytes)``."""
    sk = X25519PrivateKey.generate()
    return sk.private_bytes_raw(), sk.public_key().public_bytes_raw()


def public_key(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def agree(private: bytes, peer_public: bytes) -> bytes:
    """X25519 shared secret (32 bytes); raises ``ValueError`` for an all-zero result (a low-order peer key)."""
    return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))


def derive(ikm: bytes, salt: bytes, purpose: bytes, *sites: str) -> bytes:
    """HKDF-SHA256 -> 32 bytes, ``info`` = (protocol, purpose, sites...)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=pack(PROTOCOL, purpose, *sites)).derive(ikm)


def pairwise_seed(private: bytes, peer_public: bytes, salt: bytes, site_a: str, site_b: str) -> bytes:
    """Mask seed shared by ``site_a`` and ``site_b`` (symmetric: the names are sorted)."""
    lo, hi = sorted((site_a, site_b))
    return derive(agree(private, peer_public), salt, PAIRWISE_MASK, lo, hi)


def self_seed(seed: bytes, salt: bytes, site: str) -> bytes:
    return derive(seed, salt, SELF_MASK, site)


def mask(seed: bytes, n: int) -> np.ndarray:
    """ChaCha20 keystream of ``seed`` (32 bytes) as ``n`` uint32 values, shape ``(n,)``."""
    enc = Cipher(algorithms.ChaCha20(seed, _ZERO_NONCE16), mode=None).encryptor()
    return np.frombuffer(enc.update(bytes(4 * n)), dtype="<u4").astype(np.uint32, copy=False)


def share_key(private: bytes, peer_public: bytes, salt: bytes, sender: str, recipient: str) -> bytes:
    """Directional key for shares sent from ``sender`` to ``recipient``."""
    return derive(agree(private, peer_public), salt, SHARE_ENCRYPTION, sender, recipient)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """ChaCha20-Poly1305: ``nonce (12 random bytes) || ciphertext+tag``."""
    nonce = os.urandom(12)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`seal`; raises ``cryptography.exceptions.InvalidTag`` when the blob or its context differ."""
    return ChaCha20Poly1305(key).decrypt(blob[:12], blob[12:], aad)
