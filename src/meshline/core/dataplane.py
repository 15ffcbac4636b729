"""Dataplane: one workload and its sidecar.

Port conventions (universal mode, no traffic interception):

* ``inbound[].port`` is where the sidecar accepts mesh traffic, on ``address``;
  it forwards to the app at ``serviceAddress:servicePort`` (default 127.0.0.1).
* ``outbound[].port`` is a local port (127.0.0.1) the app calls to reach ``service``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Literal

from pydantic import Field, field_validator

from meshline.core.errors import FieldProblem
from meshline.core.external_service import HOST_RE as EXTERNAL_HOST_RE
from meshline.core.resource import KindInfo, Resource
from meshline.core.schema import NAME_HINT, NAME_RE, Spec

Protocol = Literal["http", "http2", "grpc", "tcp"]
PROTOCOLS: tuple[str, ...] = ("http", "http2", "grpc", "tcp")
DEFAULT_PROTOCOL = "tcp"  # safe for any traffic; set protocol: http for L7 features
# What a proxy is (render/proxies.py): a sidecar next to an app; a gateway into the mesh; a
# zone's ingress (traffic from other zones in, by SNI, never decrypted) or egress.
# An egress gateway: the one proxy that talks to ExternalServices when the Mesh names it.
ProxyKind = Literal["sidecar", "gateway", "zone-ingress", "zone-egress", "egress-gateway"]
TAG_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")


def service_protocol(declared: Iterable[str]) -> str:
    """The one protocol rule: a service speaks what all its instances declare, else tcp
    (instances that disagree, or none at all: tcp is safe for any traffic)."""
    found = set(declared)
    return found.pop() if len(found) == 1 else DEFAULT_PROTOCOL


def service_protocols(dataplanes: Iterable[Resource]) -> dict[str, str]:
    """service -> protocol (:func:`service_protocol`) over the inbounds of ``dataplanes``."""
    declared: dict[str, list[str]] = {}
    for dp in dataplanes:
        if isinstance(dp.spec, DataplaneSpec):
            for inbound in dp.spec.inbound:
                declared.setdefault(inbound.service, []).append(inbound.protocol)
    return {service: service_protocol(protocols) for service, protocols in declared.items()}


def _port(v: int) -> int:
    if not 1 <= v <= 65535:
        raise ValueError("must be 1-65535")
    return v


def _ip(v: str) -> str:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        raise ValueError(f"'{v}' is not an IP address") from None
    return v


def check_tags(tags: Mapping[str, str]) -> None:
    for key, value in tags.items():
        if not TAG_RE.match(key):
            raise ValueError(f"tag name '{key}' must be letters, digits, '.', '_', '/' or '-'")
        if not isinstance(value, str) or not TAG_RE.match(value):
            raise ValueError(f"tag '{key}' value '{value}' must be letters, digits, '.', '_', '/' or '-'")
    proto = tags.get("protocol")
    if proto is not None and proto not in PROTOCOLS:
        raise ValueError(f"tag protocol '{proto}' must be one of {', '.join(PROTOCOLS)}")


class Inbound(Spec):
    port: int
    service_port: int | None = None  # default: same as port (only valid if the addresses differ)
    service_address: str = "127.0.0.1"
    tags: dict[str, str]

    _p = field_validator("port", "service_port")(classmethod(lambda cls, v: v if v is None else _port(v)))
    _a = field_validator("service_address")(classmethod(lambda cls, v: _ip(v)))

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        if "service" not in v:
            raise ValueError("must include 'service' (e.g. tags: {service: orders})")
        if not NAME_RE.match(v["service"]):
            raise ValueError(f"service '{v['service']}' {NAME_HINT}")
        check_tags(v)
        return v

    @property
    def service(self) -> str:
        return self.tags["service"]

    @property
    def protocol(self) -> str:
        return self.tags.get("protocol", DEFAULT_PROTOCOL)

    @property
    def app_port(self) -> int:
        return self.service_port or self.port


class Outbound(Spec):
    port: int
    service: str
    address: str = "127.0.0.1"
    # What the caller speaks to the service, used only while no instance of it says (a service
    # declared before it is deployed): see MeshSnapshot.service_protocol.
    protocol: str | None = None

    _p = field_validator("port")(classmethod(lambda cls, v: _port(v)))
    _a = field_validator("address")(classmethod(lambda cls, v: _ip(v)))

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, v: str | None) -> str | None:
        if v is not None and v not in PROTOCOLS:
            raise ValueError(f"'{v}' must be one of {', '.join(PROTOCOLS)}")
        return v

    @field_validator("service")
    @classmethod
    def _service(cls, v: str) -> str:
        # a mesh service or ExternalService name, or an ExternalService's host (api.example.com)
        if not NAME_RE.match(v) and not (EXTERNAL_HOST_RE.match(v) and len(v) <= 253):
            raise ValueError(NAME_HINT + " (or the host of an ExternalService, e.g. api.example.com)")
        return v


METRICS_PATH_RE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")


class DataplaneMetrics(Spec):
    """Where Prometheus scrapes this dataplane: http://<address>:<port><path> (served by the agent)."""

    port: int
    path: str = "/metrics"

    _p = field_validator("port")(classmethod(lambda cls, v: _port(v)))

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not METRICS_PATH_RE.match(v):
            raise ValueError(f"'{v}' must be a URL path starting with '/' (e.g. /metrics), without a query")
        return v


class Transparent(Spec):
    """This workload's traffic is captured (``meshline run --transparent``): the kernel sends
    every connection the app opens to Envoy on ``outboundPort`` and every connection from
    other hosts to ``inboundPort``, each with its original destination. The inbounds' ``port``
    is then the app's own port (callers dial it; capture takes it to Envoy)."""

    outbound_port: int = 15001
    inbound_port: int = 15006
    ipv6: bool = False  # Envoy's capture listeners also listen on [::]

    _p = field_validator("outbound_port", "inbound_port")(classmethod(lambda cls, v: _port(v)))


class DataplaneSpec(Spec):
    address: str
    inbound: list[Inbound] = Field(min_length=1)
    outbound: list[Outbound] = Field(default_factory=list)
    # Envoy admin on 127.0.0.1, as agents before the admin socket registered it; informational.
    # Agents no longer set it: the admin API is a 0600 Unix socket in the agent's work dir.
    admin_port: int | None = None
    # False while the sidecar or the app cannot take traffic yet: callers get this
    # instance's endpoints only once it is ready. The agent registers with false and
    # sets true when Envoy is ready and the app accepts connections.
    ready: bool = True
    # The agent's Prometheus endpoint (meshline_* series for this dataplane's traffic, Envoy's
    # own stats, optionally the app's); listed by the control plane's Prometheus discovery.
    metrics: DataplaneMetrics | None = None
    transparent: Transparent | None = None
    proxy: ProxyKind = "sidecar"

    _a = field_validator("address")(classmethod(lambda cls, v: _ip(v)))

    def services(self) -> list[str]:
        return sorted({i.service for i in self.inbound})

    def tag_sets(self) -> list[dict[str, str]]:
        return [i.tags for i in self.inbound]


def _proxy_problems(r: Resource) -> list[FieldProblem]:
    """A zone proxy listens on one port and reaches services by SNI; only a sidecar captures."""
    spec = r.spec
    assert isinstance(spec, DataplaneSpec)
    problems: list[FieldProblem] = []
    if spec.proxy != "sidecar" and spec.transparent is not None:
        problems.append(FieldProblem("spec.transparent", f"only a sidecar captures traffic; remove it from a {spec.proxy}"))
    if spec.proxy in ("zone-ingress", "zone-egress", "egress-gateway"):
        if len(spec.inbound) != 1:
            problems.append(FieldProblem("spec.inbound", f"a {spec.proxy} listens on one port; list exactly one inbound"))
        if spec.outbound:
            problems.append(FieldProblem("spec.outbound", f"a {spec.proxy} reaches every service by SNI; remove the outbounds"))
    return problems


def _port_problems(r: Resource) -> list[FieldProblem]:
    spec = r.spec
    assert isinstance(spec, DataplaneSpec)
    problems: list[FieldProblem] = []
    seen: dict[tuple[str, int], str] = {}

    def claim(addr: str, port: int, path: str) -> None:
        key = (addr, port)
        if key in seen:
            problems.append(FieldProblem(path, f"port {port} on {addr} is already used by {seen[key]}"))
        else:
            seen[key] = path

    if spec.transparent is not None:
        claim("0.0.0.0", spec.transparent.outbound_port, "spec.transparent.outboundPort")
        claim("0.0.0.0", spec.transparent.inbound_port, "spec.transparent.inboundPort")
    for i, inbound in enumerate(spec.inbound):
        if spec.transparent is not None:  # Envoy does not listen on the inbound ports: capture takes them
            claim("0.0.0.0", inbound.port, f"spec.inbound[{i}].port")
            continue
        claim(spec.address, inbound.port, f"spec.inbound[{i}].port")
        if spec.proxy != "sidecar":
            continue  # an entry port of a gateway or zone proxy: no app behind it
        if inbound.service_port is None and inbound.service_address == spec.address:
            problems.append(
                FieldProblem(
                    f"spec.inbound[{i}].servicePort",
                    "is required when the app and the sidecar share an address; set the app's port",
                )
            )
        elif inbound.service_address == spec.address and inbound.app_port == inbound.port:
            problems.append(
                FieldProblem(
                    f"spec.inbound[{i}].servicePort", "must differ from port (the sidecar listens there)"
                )
            )
    for i, outbound in enumerate(spec.outbound):
        claim(outbound.address, outbound.port, f"spec.outbound[{i}].port")
    if spec.admin_port is not None:
        claim("127.0.0.1", spec.admin_port, "spec.adminPort")
    if spec.metrics is not None:
        claim(spec.address, spec.metrics.port, "spec.metrics.port")
    return problems


def _service_column(r: Resource) -> str:
    assert isinstance(r.spec, DataplaneSpec)
    return ",".join(r.spec.services())


def _address_column(r: Resource) -> str:
    assert isinstance(r.spec, DataplaneSpec)
    return r.spec.address + ":" + ",".join(str(i.port) for i in r.spec.inbound)


KIND = KindInfo(
    kind="Dataplane",
    plural="dataplanes",
    spec=DataplaneSpec,
    summary="One workload and its sidecar: address, inbound ports with tags, outbound upstreams",
    aliases=("dataplane", "dp", "dps"),
    validators=(_port_problems, _proxy_problems),
    columns={"SERVICE": _service_column, "ADDRESS": _address_column},
)
