"""ExternalService: a destination outside the mesh that workloads may call by name.

A host name (``api.example.test``), an IP address or a CIDR, a port and a protocol; with
``tls``, the sidecar originates TLS (the app speaks plain HTTP or TCP, the sidecar speaks
TLS to the outside and verifies the server against a CA bundle and a SAN).

Transparent workloads reach it by its host name (mesh DNS answers the host with a VIP, the
outbound capture listener routes that VIP to the service), or, for an address or CIDR, by
dialling it; explicit workloads through an outbound port (``--upstream NAME=PORT`` or
``--upstream HOST=PORT``). Policies select it by its name as a destination service
(``destinations: [{match: {service: httpbin}}]``), like a mesh service. The mesh's
``transparentProxy.passthrough`` says whether undeclared destinations are reachable at all
(docs/egress.md). Rendering: ``render/external.py``.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import field_validator, model_validator

from meshline.core.errors import FieldProblem
from meshline.core.resource import KindInfo, Resource, spec_as
from meshline.core.schema import Spec

ExternalProtocol = Literal["http", "tcp", "tls"]
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})+$")
SAN_RE = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
MAX_CA_BYTES = 256 * 1024


def check_dns_name(value: str, what: str = "host") -> str:
    name = value.rstrip(".").lower()
    if not HOST_RE.match(name) or len(name) > 253:
        raise ValueError(f"'{value}' is not a DNS name with a dot, e.g. api.example.com; for an address use "
                         f"spec.address")  # fmt: skip
    if name.endswith(".mesh"):
        raise ValueError(f"'{value}' is a mesh name (*.mesh); an ExternalService names a {what} outside the mesh")
    return name


class CaBundle(Spec):
    """The CAs the server's certificate must chain to: ``pem`` (inline) or ``file`` (a path
    on every sidecar's host, read by Envoy)."""

    pem: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one(self) -> CaBundle:
        if (self.pem is None) == (self.file is None):
            raise ValueError("set exactly one of pem (the CA certificates, PEM) or file (a path on the sidecar's host)")
        return self

    @field_validator("pem")
    @classmethod
    def _pem(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if len(v) > MAX_CA_BYTES:
            raise ValueError(f"is over {MAX_CA_BYTES // 1024} KiB; give a file instead")
        from cryptography import x509  # here: core.dataplane (the agent) imports this module

        try:
            certs = x509.load_pem_x509_certificates(v.encode())
        except ValueError:
            raise ValueError("is not PEM certificates (-----BEGIN CERTIFICATE-----...); paste the CA bundle") from None
        if not certs:
            raise ValueError("holds no certificate; paste the CA bundle")
        now = datetime.now(UTC)
        if all(c.not_valid_after_utc < now for c in certs):
            latest = max(c.not_valid_after_utc for c in certs)
            raise ValueError(f"every certificate in it has expired (the latest on {latest:%Y-%m-%d}); paste a current CA bundle")
        return v if v.endswith("\n") else v + "\n"

    @field_validator("file")
    @classmethod
    def _file(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or "\0" in v or "\n" in v):
            raise ValueError(f"'{v}' must be an absolute path, e.g. /etc/ssl/certs/ca-certificates.crt")
        return v


class TlsOrigination(Spec):
    """The sidecar speaks TLS to the external service (the app speaks plain text to its sidecar).

    ``serverName``: the SNI sent (default: the host). ``subjectAltNames``: DNS names the
    server's certificate must hold one of (default: the server name). ``ca``: the CA bundle
    it must chain to (required: a sidecar never trusts an external server by default)."""

    ca: CaBundle
    server_name: str | None = None
    subject_alt_names: list[str] = []

    @field_validator("server_name")
    @classmethod
    def _sni(cls, v: str | None) -> str | None:
        return v if v is None else check_dns_name(v, "server")

    @field_validator("subject_alt_names")
    @classmethod
    def _sans(cls, v: list[str]) -> list[str]:
        for name in v:
            if not SAN_RE.match(name):
                raise ValueError(f"'{name}' is not a DNS name (a leading '*.' is allowed), e.g. api.example.com")
        if len(v) > 16:
            raise ValueError("lists more than 16 names")
        return [n.lower() for n in v]


class ExternalServiceSpec(Spec):
    host: str | None = None  # a DNS name
    address: str | None = None  # an IP address or a CIDR
    port: int
    protocol: ExternalProtocol = "tcp"
    tls: TlsOrigination | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        return v if v is None else check_dns_name(v)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError as err:
            raise ValueError(f"'{v}' is not an IP address or CIDR ({err}); e.g. 203.0.113.7 or 203.0.113.0/24") from None
        if net.is_unspecified:
            raise ValueError(f"'{v}' is the unspecified address; name the address the service listens on")
        return str(net.network_address) if net.num_addresses == 1 else str(net)

    @field_validator("port")
    @classmethod
    def _port(cls, v: int) -> int:
        if not 1 <= v <= 65535:
            raise ValueError("must be 1-65535")
        return v

    @property
    def is_cidr(self) -> bool:
        return self.address is not None and "/" in self.address

    @property
    def mesh_protocol(self) -> str:
        """What the app speaks to its sidecar: http (L7 policies), else tcp (TLS passes through as tcp)."""
        return "http" if self.protocol == "http" else "tcp"

    @property
    def server_name(self) -> str:
        """The SNI of TLS origination (empty: none known)."""
        if self.tls is not None and self.tls.server_name:
            return self.tls.server_name
        return self.host or ""

    @property
    def target(self) -> str:
        return f"{self.host or self.address}:{self.port}"


def _problems(r: Resource) -> list[FieldProblem]:
    spec = spec_as(r, ExternalServiceSpec)
    out: list[FieldProblem] = []
    if (spec.host is None) == (spec.address is None):
        out.append(FieldProblem("spec.host", "set exactly one of host (a DNS name) or address (an IP or CIDR)"))
    if spec.tls is not None:
        if spec.protocol == "tls":
            out.append(FieldProblem("spec.tls", "protocol tls means the app speaks TLS itself (passed through);"
                                                " remove spec.tls, or set protocol http or tcp to originate TLS"))  # fmt: skip
        elif not spec.server_name:
            out.append(FieldProblem("spec.tls.serverName", "is required with an address (no host name to send as SNI"
                                                           " and to verify); set the name the server's certificate holds"))  # fmt: skip
    return out


def _target_column(r: Resource) -> str:
    return spec_as(r, ExternalServiceSpec).target


def _tls_column(r: Resource) -> str:
    spec = spec_as(r, ExternalServiceSpec)
    return f"originate ({spec.server_name})" if spec.tls is not None else "-"


KIND = KindInfo(
    kind="ExternalService",
    plural="externalservices",
    spec=ExternalServiceSpec,
    summary="A destination outside the mesh (host, address or CIDR; port; protocol; TLS origination)",
    aliases=("externalservice", "es", "meshexternalservice", "meshexternalservices"),
    validators=(_problems,),
    columns={"TARGET": _target_column, "PROTOCOL": lambda r: spec_as(r, ExternalServiceSpec).protocol,
             "TLS": _tls_column},  # fmt: skip
)
