"""Mutable builders for one listener and what hangs off it, configured by policies.

Generators create sections; policy plugins change the protos in them (never
anything outside their section); :func:`finalize` then assembles filter chains
and packs everything. HTTP filters are kept as (order, filter) so independent
policies can each add theirs without knowing about the others; the router is
always appended last.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshline.core.dataplane import Inbound, Outbound
from meshline.render import envoy
from meshline.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Packed, pack

# Well-known HTTP filter orders (lower runs first). Policies pick a slot between them.
ORDER_AUTHN = 50  # JWTAuthentication: who the end user is, before anything decides on it
ORDER_AUTHZ = 100  # TrafficPermission (RBAC)
ORDER_RATELIMIT = 200
ORDER_FAULT = 300
ORDER_OBSERVE = 400


@dataclass(frozen=True, order=True)
class SectionId:
    """Which part of one proxy's config a section is, as data: the proxy kind, the
    listener's role in it and its port. Telemetry joins log entries to the policies of
    their section on it, tests pick a section's golden by it; ``Section.target`` is only
    the human label."""

    proxy: str  # sidecar | gateway | zone-ingress | zone-egress
    role: str  # sidecar: inbound | outbound | transparent-*; gateway: listener | outbound; zones: sni
    port: int
    name: str = ""  # where a port holds several sections (transparent capture: the service)

    def __str__(self) -> str:
        return f"{self.proxy}/{self.role}/{self.port}" + (f"/{self.name}" if self.name else "")


@dataclass(frozen=True)
class Applied:
    """One policy that shaped a section, for `meshline inspect`."""

    kind: str
    name: str
    target: str  # "outbound orders (port 15001)" / "inbound 18080"
    reason: str
    section: SectionId | None = None  # the section it shaped (not in inspect's JSON: target says it)

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "target": self.target, "reason": self.reason}


@dataclass
class HttpChain:
    hcm: hcm_pb2.HttpConnectionManager
    filters: list[tuple[int, hcm_pb2.HttpFilter]] = field(default_factory=list)

    def add_filter(self, order: int, name: str, config: object) -> None:
        from google.protobuf.message import Message

        assert isinstance(config, Message)
        self.filters.append((order, hcm_pb2.HttpFilter(name=name, typed_config=envoy.packed(config))))

    def build(self) -> hcm_pb2.HttpConnectionManager:
        out = hcm_pb2.HttpConnectionManager()
        out.CopyFrom(self.hcm)
        for _, f in sorted(self.filters, key=lambda item: item[0]):
            out.http_filters.append(f)
        out.http_filters.append(
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=envoy.packed(router_pb2.Router())
            )
        )
        return out


@dataclass
class Section:
    """Common part: a listener, its L7 or L4 chain, and the clusters it sends to."""

    target: str
    listener: listener_pb2.Listener
    # None: derived from the listener (role from the target's first word), for generators
    # that do not name their sections yet.
    id: SectionId | None = None
    http: HttpChain | None = None
    tcp: tcp_proxy_pb2.TcpProxy | None = None
    # network filters that run before the HCM / tcp_proxy (e.g. L4 RBAC)
    network_filters: list[tuple[int, listener_components_pb2.Filter]] = field(default_factory=list)
    # server-side TLS: listeners with several chains (permissive mTLS) get one per entry;
    # None in the list means a plaintext chain.
    transports: Sequence[base_pb2.TransportSocket | None] = (None,)
    clusters: dict[str, cluster_pb2.Cluster] = field(default_factory=dict)
    endpoints: dict[str, endpoint_pb2.ClusterLoadAssignment] = field(default_factory=dict)
    routes: dict[str, route_pb2.RouteConfiguration] = field(default_factory=dict)
    applied: list[Applied] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.id is None:
            port = self.listener.address.socket_address.port_value
            self.id = SectionId("sidecar", self.target.split(" ", 1)[0], port)

    @property
    def section_id(self) -> SectionId:
        assert self.id is not None  # set by __post_init__
        return self.id

    def tcp_proxies(self) -> list[tcp_proxy_pb2.TcpProxy]:
        """Every TCP proxy of the section (a gateway listener has one per TCP or TLS chain)."""
        return [self.tcp] if self.tcp is not None else []

    def note(self, kind: str, name: str, reason: str) -> None:
        """Tell ``meshline inspect`` that policy ``kind``/``name`` shaped this section, and how."""
        self.applied.append(Applied(kind, name, self.target, reason, self.section_id))

    def finalize(self) -> dict[str, list[Packed]]:
        filters = [f for _, f in sorted(self.network_filters, key=lambda item: item[0])]
        if self.http is not None:
            filters.append(
                envoy.network_filter("envoy.filters.network.http_connection_manager", self.http.build())
            )
        elif self.tcp is not None:
            filters.append(envoy.network_filter("envoy.filters.network.tcp_proxy", self.tcp))
        lst = listener_pb2.Listener()
        lst.CopyFrom(self.listener)
        del lst.filter_chains[:]
        plaintext_fallback = len(self.transports) > 1
        for transport in self.transports:
            chain = listener_components_pb2.FilterChain(filters=filters)
            if transport is not None:
                chain.transport_socket.CopyFrom(transport)
                if plaintext_fallback:
                    chain.filter_chain_match.transport_protocol = "tls"
                    chain.name = "mtls"
            else:
                chain.name = "plaintext"
            lst.filter_chains.append(chain)
        if plaintext_fallback:
            lst.listener_filters.append(envoy.tls_inspector())
        return {
            LISTENER: [pack(lst.name, lst)],
            CLUSTER: [pack(n, c) for n, c in self.clusters.items()],
            ENDPOINT: [pack(n, e) for n, e in self.endpoints.items()],
            ROUTE: [pack(n, r) for n, r in self.routes.items()],
        }


@dataclass
class InboundSection(Section):
    inbound: Inbound | None = None
    # HTTP inbound routes live inline in the HCM (they change with the listener anyway).
    route: route_pb2.RouteConfiguration | None = None

    def route_configs(self) -> list[route_pb2.RouteConfiguration]:
        """Every route table of the section (a gateway listener has one per filter chain)."""
        return [self.route] if self.route is not None else []

    def finalize(self) -> dict[str, list[Packed]]:
        if self.http is not None and self.route is not None:
            self.http.hcm.route_config.CopyFrom(self.route)
        return super().finalize()


@dataclass
class OutboundSection(Section):
    outbound: Outbound | None = None
    service: str = ""
    protocol: str = "tcp"
    # The caller's tags, one set per inbound: what source selectors match against.
    source_tags: tuple[Mapping[str, str], ...] = ()
    route_name: str = ""  # RDS name when L7

    @property
    def route(self) -> route_pb2.RouteConfiguration | None:
        return self.routes.get(self.route_name)
