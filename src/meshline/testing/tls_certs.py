"""Test certificates: a CA of the test's own and server certificates for DNS names it signs.

    ca = TestCA.make("gateway test CA")
    ca.issue_to(certs_dir / "web", ["web.example.test"])   # web/tls.crt, web/tls.key
    ca.pem_file(tmp / "ca.pem")                               # for curl --cacert
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class TestCA:
    __test__ = False
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def make(cls, name: str = "meshline test CA") -> TestCA:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        return cls(key, cert)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def pem_file(self, path: Path) -> Path:
        path.write_bytes(self.pem)
        return path

    def issue(self, dns_names: list[str], valid: datetime.timedelta = datetime.timedelta(hours=1),
              not_before: datetime.datetime | None = None, ips: tuple[str, ...] = ()) -> tuple[bytes, bytes]:  # fmt: skip
        """(chain PEM, key PEM) of a server certificate for ``dns_names`` (and addresses ``ips``)."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or _now() - datetime.timedelta(minutes=5)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
            .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + valid)
            .add_extension(x509.SubjectAlternativeName([*(x509.DNSName(n) for n in dns_names),
                                                        *(x509.IPAddress(ipaddress.ip_address(a)) for a in ips)]),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def issue_to(self, directory: Path, dns_names: list[str], **kw: object) -> Path:
        """Write ``directory``/tls.crt and tls.key (each file replaced atomically, key first)."""
        chain, key = self.issue(dns_names, **kw)  # type: ignore[arg-type]
        write_pair(directory, chain, key)
        return directory


def write_pair(directory: Path, chain: bytes, key: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in (("tls.key", key), ("tls.crt", chain)):
        tmp = directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        tmp.replace(directory / name)
