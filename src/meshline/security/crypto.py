"""Small cryptographic building blocks shared by the CA, tokens and the agent.

Everything here is a plain function over ``cryptography`` objects; no I/O except
:class:`KeyEncryptor` loading (or creating) its key file.

Private keys the control plane keeps (mesh CAs, the token signing key, the
control-plane CA) are stored in the resource store *sealed*: AES-256-GCM with a
key-encryption key (KEK) that never enters the store. The KEK lives in
``<data_dir>/kek`` (mode 0600), or where ``MESHLINE_KEK_FILE`` points. A copy of
the database alone therefore reveals no private key; several replicas sharing a
PostgreSQL store must share the KEK file too.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import secrets
import stat
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from meshline.core.datadir import write_private
from meshline.core.errors import MeshlineError

log = logging.getLogger("meshline.security")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
KEK_ENV = "MESHLINE_KEK_FILE"


class SecretError(MeshlineError):
    """A sealed secret cannot be opened (wrong key-encryption key, or tampered)."""

    status = 500


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def from_ts(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def iso(ts: float) -> str:
    return from_ts(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- keys ------------------------------------------------------------------------------


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def load_key(pem: str | bytes) -> PrivateKey:
    """Parse an unencrypted PEM private key; ValueError with a readable reason otherwise."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError("is encrypted with a passphrase; provide it unencrypted") from None
    except Exception as err:  # cryptography raises ValueError or UnsupportedAlgorithm
        raise ValueError(f"is not a PEM private key ({type(err).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"is a {type(key).__name__}; use an ECDSA (P-256/P-384) or RSA (2048+) key")
    check_key_strength(key.public_key())
    return key


def check_key_strength(pub: object) -> None:
    if isinstance(pub, ec.EllipticCurvePublicKey):
        if pub.curve.name not in ("secp256r1", "secp384r1"):
            raise ValueError(f"uses curve {pub.curve.name}; use P-256 or P-384")
    elif isinstance(pub, rsa.RSAPublicKey):
        if pub.key_size < 2048:
            raise ValueError(f"is a {pub.key_size}-bit RSA key; use at least 2048 bits")
    elif isinstance(pub, ed25519.Ed25519PublicKey):
        raise ValueError("is an Ed25519 key, which Envoy cannot use for TLS; use ECDSA P-256")
    else:
        raise ValueError(f"is a {type(pub).__name__} key; use ECDSA P-256/P-384 or RSA 2048+")


def public_der(key: object) -> bytes:
    assert hasattr(key, "public_bytes")
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        return hashes.SHA384()
    return hashes.SHA256()


# -- certificates ----------------------------------------------------------------------


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def load_certs(pem: str | bytes) -> list[x509.Certificate]:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as err:
        raise ValueError(f"is not PEM certificate text ({err})") from None
    if not certs:
        raise ValueError("holds no PEM certificate")
    return certs


def fingerprint(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the DER certificate, shortened (enough to name a CA)."""
    return cert.fingerprint(hashes.SHA256()).hex()[:32]


def is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:  # wrong key type, bad signature
        return False
    return True


def is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not bc.ca:
        return False
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return bool(ku.key_cert_sign)


def new_root(
    common_name: str,
    key: PrivateKey,
    lifetime: dt.timedelta = dt.timedelta(days=3650),
    organization: str = "Meshline",
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """A self-signed CA certificate (may sign leaves only: pathlen 0)."""
    now = now or utcnow()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    pub = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .sign(key, signature_hash(key))
    )


def leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


# -- sealing private keys at rest ------------------------------------------------------


class KeyEncryptor:
    """AES-256-GCM with a key-encryption key; the purpose string is bound as associated
    data, so a sealed blob cannot be moved to another record and opened there."""

    PREFIX = "kek1:"

    def __init__(self, key: bytes, source: str = "memory") -> None:
        if len(key) != 32:
            raise SecretError("the key-encryption key must be 32 bytes")
        self._aead = AESGCM(key)
        self.source = source

    @classmethod
    def generate(cls) -> KeyEncryptor:
        return cls(AESGCM.generate_key(bit_length=256))

    @classmethod
    def load_or_create(cls, path: Path) -> KeyEncryptor:
        if path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                log.warning("%s is readable by other users (mode %o); run `chmod 600 %s`", path, mode, path)
            try:
                key = base64.b64decode(path.read_text().strip(), validate=True)
            except ValueError:
                raise SecretError(f"{path} is not a Meshline key-encryption key (base64 of 32 bytes)") from None
            return cls(key, str(path))
        key = AESGCM.generate_key(bit_length=256)
        write_private(path, base64.b64encode(key).decode() + "\n")
        log.info("created the key-encryption key %s (keep it; the store's private keys are sealed with it)", path)
        return cls(key, str(path))

    def seal(self, plaintext: bytes, purpose: str) -> str:
        nonce = secrets.token_bytes(12)
        ct = self._aead.encrypt(nonce, plaintext, purpose.encode())
        return self.PREFIX + base64.b64encode(nonce + ct).decode()

    def open(self, sealed: str, purpose: str) -> bytes:
        if not sealed.startswith(self.PREFIX):
            raise SecretError(f"the sealed secret for {purpose} has an unknown format")
        raw = base64.b64decode(sealed[len(self.PREFIX) :])
        try:
            return self._aead.decrypt(raw[:12], raw[12:], purpose.encode())
        except InvalidTag:
            raise SecretError(
                f"cannot open the sealed secret for {purpose}: the key-encryption key ({self.source})"
                " is not the one it was sealed with; every replica must use the same KEK file"
                f" (copy it, or point {KEK_ENV} at it)"
            ) from None


def digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
