"""Site identities that sign the per-round X25519 public keys, and their verification against the federation's CA.

Provisioned deployments (``nvflare provision`` / POC): each site's startup kit holds ``startup/client.key`` (RSA-2048,
PEM), ``startup/client.crt`` (common name = the site name, issued by the project's root CA) and ``startup/rootCA.pem``;
the server's kit holds ``rootCA.pem`` too. A site signs with RSA-PSS/SHA-256 (as NVFlare's ``lighter.utils.
sign_content``); every verifier checks that the certificate was issued by the root CA, is valid now and names the
site, then checks the signature.

Simulator (no startup kits): a run-local CA and one identity per site are generated on first use in
``<simulator workspace>/fedmrg_secagg_sim_pki/`` (the folder holding every participant's workspace). Every simulated
site can read the CA key there, so this mode exercises the protocol but proves nothing about identities; a warning
says so. ``mode="auto"`` picks ``provisioned`` when the startup kit has the key, ``simulated`` otherwise.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from fedmrg.privacy.secure_aggregation.constants import SecureAggregationError

MODES = ("auto", "provisioned", "simulated")
SIM_PKI_DIR = "fedmrg_secagg_sim_pki"
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)


@dataclass(frozen=True)
class SiteIdentity:
    """A site's signing key and certificate (PEM); ``source`` says where they came from, for logs."""

    name: str
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    cert_pem: bytes
    source: str

    def sign(self, message: bytes) -> bytes:
        key = self.private_key
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(message, _PSS, hashes.SHA256())
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(message, ec.ECDSA(hashes.SHA256()))
        return key.sign(message)


def verify_signed(ca_cert: x509.Certificate, cert_pem: bytes, site: str, message: bytes, signature: bytes) -> None:
    """Check that ``cert_pem`` is issued by ``ca_cert``, valid now and names ``site``, and that it signed ``message``.

    Raises:
        SecureAggregationError: naming ``site`` and the failed check.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        raise SecureAggregationError(f"site {site}: its certificate is not a PEM X.509 certificate ({e})") from e
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise SecureAggregationError(f"site {site}: its certificate is not issued by the federation's CA") from e
    now = datetime.datetime.now(datetime.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SecureAggregationError(f"site {site}: its certificate is not valid now ({cert.not_valid_after_utc})")
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [site]:
        raise SecureAggregationError(f"site {site}: the certificate names {names}, not {site!r} (substituted?)")
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, _PSS, hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            raise SecureAggregationError(f"site {site}: unsupported certificate key type {type(key).__name__}")
    except InvalidSignature as e:
        raise SecureAggregationError(
            f"site {site}: the signature over its public keys does not verify (forged, substituted or replayed "
            "from another round or job)"
        ) from e


def load_ca(path: str | Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise SecureAggregationError(f"{path}: cannot read the root CA certificate: {e}") from e


def resolve_mode(mode: str, startup_dir: str | Path, key_name: str = "client.key") -> str:
    if mode not in MODES:
        raise ValueError(f"`identity` must be one of {list(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    startup = Path(startup_dir)
    return "provisioned" if (startup / key_name).is_file() and (startup / "rootCA.pem").is_file() else "simulated"


def load_provisioned_identity(startup_dir: str | Path, site: str) -> SiteIdentity:
    """The site's ``client.key`` / ``client.crt`` from its startup kit; the certificate must name ``site``."""
    startup = Path(startup_dir)
    try:
        key = serialization.load_pem_private_key((startup / "client.key").read_bytes(), password=None)
        cert_pem = (startup / "client.crt").read_bytes()
        cert = x509.load_pem_x509_certificate(cert_pem)
    except (OSError, ValueError, TypeError) as e:
        raise SecureAggregationError(f"{startup}: cannot load the site identity (client.key/client.crt): {e}") from e
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [site]:
        raise SecureAggregationError(f"{startup / 'client.crt'} names {names}, but this site is {site!r}")
    return SiteIdentity(site, key, cert_pem, f"provisioned ({startup})")


# -- simulator: a run-local CA -----------------------------------------------------------------------------------------
def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _cert(subject: str, public_key, issuer: str, signer, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )


def _pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def simulated_ca(pki_dir: str | Path, timeout: float = 60.0) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """The run-local CA in ``pki_dir``, created by the first caller (an ``O_EXCL`` lock file; others wait)."""
    pki = Path(pki_dir)
    pki.mkdir(parents=True, exist_ok=True)
    ca_pem, ca_key = pki / "ca.pem", pki / "ca.key"
    try:
        fd = os.open(pki / "ca.lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        deadline = time.monotonic() + timeout
        while not ca_pem.is_file():
            if time.monotonic() > deadline:
                raise SecureAggregationError(f"{ca_pem}: the simulated CA was not created within {timeout} s") from None
            time.sleep(0.05)
    else:
        os.close(fd)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = _cert("fedmrg-secagg-simulated-ca", key.public_key(), "fedmrg-secagg-simulated-ca", key, ca=True)
        _write_private(ca_key, _pem(key))
        _write_private(ca_pem, cert.public_bytes(serialization.Encoding.PEM))  # last: its presence means "ready"
    key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    return x509.load_pem_x509_certificate(ca_pem.read_bytes()), key


def simulated_identity(pki_dir: str | Path, site: str) -> SiteIdentity:
    """The site's identity issued by the run-local CA (created once, then reused by later processes of the run)."""
    pki = Path(pki_dir)
    ca_cert, ca_key = simulated_ca(pki)
    key_path, crt_path = pki / f"{site}.key", pki / f"{site}.crt"
    if not crt_path.is_file():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        issuer = ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        cert = _cert(site, key.public_key(), issuer, ca_key, ca=False)
        _write_private(key_path, _pem(key))
        _write_private(crt_path, cert.public_bytes(serialization.Encoding.PEM))
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return SiteIdentity(site, key, crt_path.read_bytes(), f"simulated ({pki})")
