"""A TLS certificate chain and its private key: whether they can be served (the key is the
leaf's, the leaf is valid now). Used where a gateway's certificate is applied (the API) and where
its files are read (the gateway's agent)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

CERT_FILE, KEY_FILE = "tls.crt", "tls.key"


def _public(key: object) -> bytes:
    assert hasattr(key, "public_bytes")
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_certs(pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        return []


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"is a {type(key).__name__}; use an ECDSA or RSA key")
    return key


class CertificateProblem(ValueError):
    """A certificate pair that cannot be served, with what to do."""


@dataclass(frozen=True)
class CertificatePair:
    name: str
    chain_pem: bytes
    key_pem: bytes
    not_after: datetime.datetime


def check_pair(name: str, chain_pem: bytes, key_pem: bytes, now: datetime.datetime | None = None) -> CertificatePair:
    """The pair if it can be served; else :class:`CertificateProblem` saying why and what to do."""
    try:
        certs = load_certs(chain_pem)
    except Exception:
        certs = []
    if not certs:
        raise CertificateProblem(f"{name}/{CERT_FILE} holds no PEM certificate; put the certificate chain there")
    try:
        key = load_key(key_pem)
    except Exception:
        raise CertificateProblem(f"{name}/{KEY_FILE} holds no usable PEM private key (unencrypted PKCS#8, EC or RSA)") from None
    leaf = certs[0]
    if _public(key.public_key()) != _public(leaf.public_key()):
        raise CertificateProblem(
            f"{name}/{KEY_FILE} is not the key of {name}/{CERT_FILE} (leaf {leaf.subject.rfc4514_string()});"
            " put the matching key next to the certificate"
        )
    now = now or datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc <= now:
        raise CertificateProblem(
            f"{name}/{CERT_FILE} expired on {leaf.not_valid_after_utc.isoformat()}; renew it"
        )
    if leaf.not_valid_before_utc > now:
        raise CertificateProblem(f"{name}/{CERT_FILE} is not valid before {leaf.not_valid_before_utc.isoformat()}")
    return CertificatePair(name, chain_pem, key_pem, leaf.not_valid_after_utc)


