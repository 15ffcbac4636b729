"""Mesh: the tenant. Holds mesh-wide settings (mTLS and its CA, default permission...)."""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from meshline.core.resource import KindInfo, Resource
from meshline.core.schema import Duration, Name, Spec


class CertificateAuthority(Spec):
    """``builtin``: the control plane makes and keeps a root. ``provided``: your own CA.

    For ``provided``, ``cert`` and ``key`` are PEM text (an intermediate under your root works too).
    """

    type: Literal["builtin", "provided"] = "builtin"
    cert: str | None = None
    key: str | None = None


class MTLS(Spec):
    mode: Literal["strict", "permissive", "disabled"] = "strict"
    ca: CertificateAuthority = Field(default_factory=CertificateAuthority)
    cert_lifetime: Duration = timedelta(hours=24)

    @field_validator("cert_lifetime")
    @classmethod
    def _lifetime(cls, v: timedelta) -> timedelta:
        if v < timedelta(minutes=1):
            raise ValueError("must be at least 1m")
        if v > timedelta(days=365):
            raise ValueError("must be at most 365 days (8760h)")
        return v


# Placeholders a logging.file template may use (filled per sidecar section at render time).
LOG_PATH_PLACEHOLDERS = ("mesh", "service")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


# Percent of successful requests streamed while no tap (or dashboard page) watches: the control
# plane's per-request work is what it saves (benchmarks/RESULTS.md, issue 14); the golden
# signals never depend on it (they are Envoy's counters).
DEFAULT_SUCCESSES = 1.0


class MeshLogging(Spec):
    """Access logs of every sidecar (inbound and outbound, HTTP and TCP).

    ``file``: a path template for JSON lines on the sidecar's host, e.g.
    ``/var/log/meshline/{mesh}/{service}.log`` (null: no file). ``stream``: send entries to
    the control plane (what `meshline tap/explain` read; `stat/top/edges` count from the
    sidecars' counters). ``successes``: percent of successful requests streamed while no tap
    watches their service (0-100); failures, traced requests and everything a tap watches are
    always streamed.
    """

    file: str | None = None
    stream: bool = True
    successes: float = DEFAULT_SUCCESSES

    @model_serializer(mode="wrap")
    def _without_default_successes(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Left out at its default: a Mesh written before the setting existed reads back as written.
        out = handler(self)
        if isinstance(out, dict) and self.successes == DEFAULT_SUCCESSES:
            out.pop("successes", None)
        return out

    @field_validator("successes", mode="before")
    @classmethod
    def _not_bool(cls, v: object) -> object:
        if isinstance(v, bool):
            raise ValueError("must be a number from 0 to 100")
        return v

    @field_validator("successes")
    @classmethod
    def _successes(cls, v: float) -> float:
        if not 0 <= v <= 100:
            raise ValueError(f"{v:g} is not a percentage; use 0-100 (e.g. 1 streams one success in a hundred)")
        return v

    @field_validator("file")
    @classmethod
    def _file(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith("/"):
            raise ValueError(f"'{v}' must be an absolute path, e.g. /var/log/meshline/{{mesh}}/{{service}}.log")
        if "/../" in v + "/" or v.endswith("/"):
            raise ValueError(f"'{v}' must name a file and must not contain '..'")
        for name in _PLACEHOLDER_RE.findall(v):
            if name not in LOG_PATH_PLACEHOLDERS:
                known = ", ".join("{" + p + "}" for p in LOG_PATH_PLACEHOLDERS)
                raise ValueError(f"unknown placeholder '{{{name}}}'; use {known}")
        if "%" in v or any(c in v for c in "\n\0"):
            raise ValueError(f"'{v}' must not contain '%', newlines or NUL")
        return v


def check_host_port(value: str) -> str:
    """``host:port`` with an IP (IPv6 in brackets) or DNS name and a port 1-65535."""
    host, sep, port = value.rpartition(":")
    hint = "must be HOST:PORT, e.g. otel-collector:4317 or 10.0.0.9:4317"
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"'{value}' {hint}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"'{value}': '{host}' is not an IPv6 address") from None
        return value
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not _HOST_RE.match(host):
            raise ValueError(f"'{value}': '{host}' is not an IP address or host name; {hint}") from None
    return value


class MeshTracing(Spec):
    """Distributed tracing: every sidecar reports its spans to one collector.

    ``otlp``: an OpenTelemetry collector (OTLP/gRPC); W3C ``traceparent`` is propagated.
    ``zipkin``: a Zipkin-compatible collector (HTTP JSON v2, ``/api/v2/spans``); B3 and W3C
    headers are both accepted and both sent on. Set exactly one.
    ``sampling``: percent of requests that start a new trace (0-100; requests that arrive
    with a sampled trace context keep the caller's decision).
    """

    otlp: str | None = None
    zipkin: str | None = None
    sampling: float = 100.0

    _collector = field_validator("otlp", "zipkin")(
        classmethod(lambda cls, v: v if v is None else check_host_port(v))
    )

    @model_validator(mode="after")
    def _one_collector(self) -> MeshTracing:
        if (self.otlp is None) == (self.zipkin is None):
            raise ValueError(
                "set exactly one collector: otlp: HOST:PORT (OpenTelemetry, OTLP/gRPC) or zipkin: HOST:PORT"
                " (Zipkin, also accepts B3 headers)"
            )
        return self

    @property
    def collector(self) -> str:
        return self.otlp or self.zipkin or ""

    @field_validator("sampling", mode="before")
    @classmethod
    def _not_bool(cls, v: object) -> object:
        if isinstance(v, bool):
            raise ValueError("must be a number from 0 to 100")
        return v

    @field_validator("sampling")
    @classmethod
    def _sampling(cls, v: float) -> float:
        if not 0 <= v <= 100:
            raise ValueError(f"{v:g} is not a percentage; use 0-100 (e.g. 10 samples one request in ten)")
        return v


DEFAULT_VIP_RANGE = "240.240.0.0/16"  # reserved (class E) space: never a real host's address


# Where a transparent workload's connections to destinations outside the mesh may go:
# ``all``: anywhere (unchanged); ``declared``: only to ExternalServices and the ``allow`` list;
# ``none``: nowhere outside the mesh (ExternalServices included). docs/egress.md.
PassthroughMode = Literal["all", "declared", "none"]
MAX_ALLOW = 256


class PassthroughAllow(Spec):
    """One destination let through with ``passthrough: declared``: a ``domain`` (matched on
    the TLS server name the app sends; ``*.example.com`` for its subdomains), an ``ip`` or a
    ``cidr``; ``port`` (optional) narrows it to one port."""

    domain: str | None = None
    ip: str | None = None
    cidr: str | None = None
    port: int | None = None

    @model_validator(mode="after")
    def _one(self) -> PassthroughAllow:
        if sum(v is not None for v in (self.domain, self.ip, self.cidr)) != 1:
            raise ValueError("set exactly one of domain, ip or cidr (e.g. {cidr: 203.0.113.0/24, port: 443})")
        return self

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str | None) -> str | None:
        if v is None:
            return v
        name = v.lower().rstrip(".")
        bare = name[2:] if name.startswith("*.") else name
        if not _HOST_RE.match(bare) or "." not in bare or "*" in bare:
            raise ValueError(f"'{v}' is not a domain; write e.g. api.example.com or *.example.com")
        return name

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            raise ValueError(f"'{v}' is not an IP address; for a network use cidr") from None

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return str(ipaddress.ip_network(v, strict=True))
        except ValueError as err:
            raise ValueError(f"'{v}' is not a CIDR ({err}); e.g. 203.0.113.0/24") from None

    @field_validator("port")
    @classmethod
    def _port(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 65535:
            raise ValueError("must be 1-65535")
        return v

    @property
    def prefix(self) -> str | None:
        """The IP or CIDR, as a CIDR (None for a domain)."""
        if self.ip is not None:
            return str(ipaddress.ip_network(self.ip))
        return self.cidr


class TransparentProxySettings(Spec):
    """What transparent workloads (``meshline run --transparent``) get.

    ``vipRange``: where the control plane allocates each service's virtual IP (IPv4, /8 to
    /28); a VIP once given is kept. ``passthrough``: where connections a transparent
    workload opens to anything that is not a mesh service may go (:data:`PassthroughMode`;
    ``true``/``false`` are still accepted: ``all``/``declared``). ``allow``: with
    ``declared``, destinations let through besides the ExternalServices.
    ``bareNames``: mesh DNS answers ``orders`` as well as ``orders.mesh``.
    """

    vip_range: str = DEFAULT_VIP_RANGE
    passthrough: PassthroughMode = "all"
    allow: list[PassthroughAllow] = Field(default_factory=list, max_length=MAX_ALLOW)
    bare_names: bool = True

    @field_validator("passthrough", mode="before")
    @classmethod
    def _boolean(cls, v: object) -> object:
        # The first release had a boolean: true is today's "all"; false refused every
        # undeclared destination, which is "declared" now that ExternalServices exist.
        if isinstance(v, bool):
            return "all" if v else "declared"
        return v

    @model_validator(mode="after")
    def _allow_only_declared(self) -> TransparentProxySettings:
        if self.allow and self.passthrough != "declared":
            raise ValueError(f"allow lists destinations let through with passthrough: declared; passthrough is "
                             f"{self.passthrough} (set passthrough: declared, or remove allow)")  # fmt: skip
        return self

    @field_validator("vip_range")
    @classmethod
    def _range(cls, v: str) -> str:
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError as err:
            raise ValueError(f"'{v}' is not an IPv4 network ({err}); use e.g. {DEFAULT_VIP_RANGE}") from None
        if net.version != 4 or not 8 <= net.prefixlen <= 28:
            raise ValueError(f"'{v}' must be an IPv4 network from /8 to /28, e.g. {DEFAULT_VIP_RANGE}")
        if net.is_loopback or net.overlaps(ipaddress.ip_network("0.0.0.0/8")):
            raise ValueError(f"'{v}' overlaps loopback or 0.0.0.0/8; use e.g. {DEFAULT_VIP_RANGE}")
        return str(net)


class MeshEgress(Spec):
    """How the mesh's workloads reach ExternalServices. ``gateway``: the name of an egress
    gateway (``meshline egress-gateway --name NAME``): sidecars send ExternalService traffic to
    it over mTLS and only it talks to the outside (docs/egress.md)."""

    gateway: Name | None = None


class MeshSpec(Spec):
    mtls: MTLS = Field(default_factory=MTLS)
    # SPIFFE trust domain; identities are spiffe://<trustDomain>/<mesh>/<service>.
    trust_domain: str = "meshline.local"
    # What happens to traffic no TrafficPermission matches. None: "deny" when mTLS is
    # strict (zero trust), "allow" otherwise (so a permissive migration breaks nothing).
    default_permission: Literal["allow", "deny"] | None = None
    # Access logs (streamed to the control plane by default) and tracing (off unless set).
    logging: MeshLogging = Field(default_factory=MeshLogging)
    tracing: MeshTracing | None = None
    transparent_proxy: TransparentProxySettings = Field(default_factory=TransparentProxySettings)
    egress: MeshEgress = Field(default_factory=MeshEgress)

    def effective_default_permission(self) -> str:
        if self.default_permission:
            return self.default_permission
        return "deny" if self.mtls.mode == "strict" else "allow"


def _mtls_column(r: Resource) -> str:
    assert isinstance(r.spec, MeshSpec)
    return r.spec.mtls.mode


KIND = KindInfo(
    kind="Mesh",
    plural="meshes",
    spec=MeshSpec,
    summary="A tenant: its own CA, identities, resources and mesh-wide settings",
    mesh_scoped=False,
    aliases=("mesh",),
    columns={"MTLS": _mtls_column},
)
