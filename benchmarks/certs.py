"""A throwaway CA and ECDSA P-256 workload certificates with SPIFFE URI SANs.

Like the mesh's own certificates, a leaf carries only a ``spiffe://`` URI SAN (no DNS SAN,
no meaningful CN), so peers must verify it by SAN match, not by hostname.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "bench.meshline.local"


def spiffe_id(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/{service}"


@dataclass(frozen=True)
class CertFiles:
    """PEM files of one workload: its chain, its key, both in one file (HAProxy), the CA."""

    cert: Path
    key: Path
    combined: Path
    ca: Path
    spiffe_id: str


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class BenchCA:
    """A self-signed P-256 CA that issues short-lived workload certificates into ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshline bench CA")])
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_path = directory / "ca.pem"
        self.ca_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, service: str) -> CertFiles:
        """A leaf for ``service`` usable as both TLS client and server, SAN = its SPIFFE ID."""
        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        uri = spiffe_id(service)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=12))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = _key_pem(key)
        files = CertFiles(
            cert=self.directory / f"{service}.crt.pem",
            key=self.directory / f"{service}.key.pem",
            combined=self.directory / f"{service}.pem",
            ca=self.ca_path,
            spiffe_id=uri,
        )
        files.cert.write_bytes(cert_pem)
        files.key.write_bytes(key_pem)
        files.combined.write_bytes(cert_pem + key_pem)
        for path in (files.key, files.combined):
            path.chmod(0o600)
        return files
