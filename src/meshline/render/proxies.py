"""The proxy kinds besides the sidecar: their own generators, the same policy framework.

* ``gateway``: an entry listener per inbound port (``listener/<port>``) and, like a
  sidecar, an outbound section per outbound, shaped by the policy kinds. The entry
  listener answers 404 until Gateway routes exist (the gateway issue fills it in).
* ``zone-ingress`` and ``zone-egress``: one listener (``sni/<port>``) with a TLS-passthrough
  filter chain per mesh service, picked by the SNI sidecars send (``<service>.<mesh>.mesh``),
  to that service's instances over plain TCP: the mTLS session stays between the two
  sidecars, the zone proxy never decrypts. Until the multi-zone issue brings other zones'
  inventory both send to local instances; the egress is the same shape pointed the other way.

The sidecar's generators are inbound.py and outbound.py (and transparent.py); render.py
picks the generators by ``Dataplane.spec.proxy``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshline.core.dataplane import DataplaneSpec
from meshline.core.resource import Resource
from meshline.render import envoy
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.sections import HttpChain, InboundSection, Section, SectionId
from meshline.xds import names
from meshline.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Packed, pack

P = TypeVar("P")
GATEWAY_NO_ROUTE = "no route on this gateway yet\n"


@dataclass
class GatewayChain:
    """One filter chain of a gateway listener: matched by SNI (or every connection), TLS
    terminated or not, then HTTP (routes inline) or TCP (a tcp_proxy)."""

    name: str
    server_names: tuple[str, ...] = ()
    tls: bool = False  # match only TLS connections (termination or passthrough)
    transport: base_pb2.TransportSocket | None = None  # terminate TLS with this context
    route: route_pb2.RouteConfiguration | None = None  # HTTP
    tcp: tcp_proxy_pb2.TcpProxy | None = None  # TCP / TLS passthrough


@dataclass
class GatewayListenerSection(InboundSection):
    """A gateway entry listener: one port, a chain per Gateway listener (or per SNI name).

    ``http`` is the template of every HTTP chain's connection manager: the filters policies add
    to it (a rate limit) go into each chain, each with its own routes."""

    chains: list[GatewayChain] = field(default_factory=list)

    def route_configs(self) -> list[route_pb2.RouteConfiguration]:
        return [c.route for c in self.chains if c.route is not None]

    def tcp_proxies(self) -> list[tcp_proxy_pb2.TcpProxy]:
        return [c.tcp for c in self.chains if c.tcp is not None]

    def finalize(self) -> dict[str, list[Packed]]:
        lst = listener_pb2.Listener()
        lst.CopyFrom(self.listener)
        del lst.filter_chains[:]
        pre = [f for _, f in sorted(self.network_filters, key=lambda item: item[0])]
        for chain in self.chains:
            out = listener_components_pb2.FilterChain(name=chain.name, filters=list(pre))
            if chain.server_names:
                out.filter_chain_match.server_names.extend(chain.server_names)
            if chain.tls:
                out.filter_chain_match.transport_protocol = "tls"
            if chain.transport is not None:
                out.transport_socket.CopyFrom(chain.transport)
            if chain.route is not None:
                assert self.http is not None, "an HTTP chain needs the section's connection manager"
                h = self.http.build()
                h.route_config.CopyFrom(chain.route)
                out.filters.append(envoy.network_filter("envoy.filters.network.http_connection_manager", h))
            elif chain.tcp is not None:
                out.filters.append(envoy.network_filter("envoy.filters.network.tcp_proxy", chain.tcp))
            lst.filter_chains.append(out)
        if any(c.tls or c.server_names for c in self.chains):
            lst.listener_filters.append(envoy.tls_inspector())
        return {
            LISTENER: [pack(lst.name, lst)],
            CLUSTER: [pack(n, c) for n, c in self.clusters.items()],
            ENDPOINT: [pack(n, e) for n, e in self.endpoints.items()],
            ROUTE: [],
        }


@dataclass
class PassthroughSection(Section):
    """A listener whose filter chains are picked by SNI, each a tcp_proxy to one cluster."""

    chains: dict[str, str] = field(default_factory=dict)  # server name -> cluster

    def finalize(self) -> dict[str, list[Packed]]:
        lst = listener_pb2.Listener()
        lst.CopyFrom(self.listener)
        del lst.filter_chains[:]
        lst.listener_filters.append(envoy.tls_inspector())
        for sni, cluster in sorted(self.chains.items()):
            lst.filter_chains.append(listener_components_pb2.FilterChain(
                name=cluster,
                filter_chain_match=listener_components_pb2.FilterChainMatch(server_names=[sni], transport_protocol="tls"),
                filters=[envoy.network_filter("envoy.filters.network.tcp_proxy", envoy.tcp_proxy(cluster, cluster))],
            ))  # fmt: skip
        return {
            LISTENER: [pack(lst.name, lst)],
            CLUSTER: [pack(n, c) for n, c in self.clusters.items()],
            ENDPOINT: [pack(n, e) for n, e in self.endpoints.items()],
            ROUTE: [],
        }


def gateway_section(dataplane: Resource, port: int) -> GatewayListenerSection:
    """An empty entry listener of the gateway on ``port`` (its generator adds the chains)."""
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec)
    inbound = next((i for i in spec.inbound if i.port == port), spec.inbound[0])
    name = names.gateway_listener(port)
    h = envoy.hcm(name)
    h.strip_any_host_port = True  # Host "web.example.test:8443" is virtual host web.example.test
    h.use_remote_address.value = True  # the caller is outside the mesh: its address is the client's
    return GatewayListenerSection(
        target=f"gateway {inbound.service} listener (port {port})",
        listener=envoy.listener(name, spec.address, port),
        id=SectionId("gateway", "listener", port),
        inbound=inbound,
        http=HttpChain(h),
    )


def gateway_listener(dataplane: Resource, port: int, service: str) -> InboundSection:
    """An entry point of the gateway no Gateway listener uses: every request gets 404."""
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec)
    name = names.gateway_listener(port)
    section = InboundSection(
        target=f"gateway {service} listener (port {port})",
        listener=envoy.listener(name, spec.address, port),
        id=SectionId("gateway", "listener", port),
    )
    section.http = HttpChain(envoy.hcm(name))
    section.route = route_pb2.RouteConfiguration(name=name, virtual_hosts=[route_components_pb2.VirtualHost(
        name=service, domains=["*"], routes=[route_components_pb2.Route(
            name="no-route", match=route_components_pb2.RouteMatch(prefix="/"),
            direct_response=route_components_pb2.DirectResponseAction(
                status=404, body={"inline_string": GATEWAY_NO_ROUTE}),
        )],
    )])  # fmt: skip
    return section


def passthrough(dataplane: Resource, mesh: MeshSnapshot) -> PassthroughSection:
    """The SNI listener of a zone ingress or egress: a chain per service with instances."""
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec)
    port = spec.inbound[0].port
    section = PassthroughSection(
        target=f"{spec.proxy} (port {port})",
        listener=envoy.listener(names.passthrough_listener(spec.proxy, port), spec.address, port),
        id=SectionId(spec.proxy, "sni", port),
    )
    own = set(spec.services())
    for service in mesh.services():
        if service in own:
            continue  # the zone proxy itself
        # only this zone's instances: an ingress never forwards to another zone's ingress
        local = [e for e in mesh.endpoints.get(service, ()) if not e.remote]
        if not local:
            continue
        cluster = names.passthrough_cluster(service)
        section.clusters[cluster] = envoy.eds_cluster(cluster, "tcp", None)
        section.endpoints[cluster] = envoy.load_assignment(cluster, local)
        section.chains[f"{service}.{mesh.name}.mesh"] = cluster
    return section


def parts(
    dataplane: Resource, mesh: MeshSnapshot, finish: Callable[[Section], P], entry: Sequence[InboundSection] = ()
) -> list[P]:
    """The sections of a gateway or zone proxy (its outbounds, for a gateway, come from the
    sidecar's outbound generator in render.py). ``entry``: a gateway's listeners built by the
    gateway generator (policies/gateway); its other ports answer 404."""
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec)
    if spec.proxy == "gateway":
        used = {s.section_id.port for s in entry}
        rest = [gateway_listener(dataplane, i.port, i.service) for i in spec.inbound if i.port not in used]
        return [finish(s) for s in sorted([*entry, *rest], key=lambda s: s.section_id)]
    return [finish(passthrough(dataplane, mesh))]
