"""The gateway generator: a MeshGateway's listeners and the routes attached to them, rendered
as a gateway's entry listeners (render/proxies.py ``GatewayListenerSection``).

One Envoy listener per port. HTTP listeners on a port share one plaintext chain (virtual hosts
by Host); each HTTPS listener is a chain picked by SNI that terminates TLS with its
certificates (SDS from the gateway's agent); each TLS passthrough route is a chain picked by
SNI that forwards the encrypted bytes; a TCP listener is one chain. Requests and connections
go to mesh services through the gateway's own outbound sections (``backend``): mTLS with the
gateway's identity, and the timeouts, retries and cluster policies the mesh gives calls from
the gateway's service.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from meshline.core.dataplane import DataplaneSpec
from meshline.core.resource import KindInfo, Resource, spec_as
from meshline.policies.common.sections import add_cluster
from meshline.policies.gateway.api import (
    ATTACHES,
    ClientValidation,
    Cors,
    GatewayCertificateSpec,
    Listener,
    MeshGatewayRouteSpec,
    MeshGatewaySpec,
    certificate_problems,
    effective_hostnames,
    gateway_problems,
    route_problems,
)
from meshline.policies.gateway.checks import GATEWAY_KIND, PARENTS
from meshline.policies.httproute.build import rule_routes
from meshline.render import envoy
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.plugins import BackendSection, Plugin
from meshline.render.proxies import GATEWAY_NO_ROUTE, GatewayChain, GatewayListenerSection, gateway_section
from meshline.render.sections import InboundSection, OutboundSection
from meshline.xds import names

ROUTE_KIND = "MeshGatewayRoute"


def _listeners_column(r: Resource) -> str:
    return ",".join(f"{x.name}:{x.port}/{x.protocol}" for x in spec_as(r, MeshGatewaySpec).listeners)


def _parents_column(r: Resource) -> str:
    return ",".join(p.gateway + (f"/{p.listener}" if p.listener else "") for p in spec_as(r, MeshGatewayRouteSpec).parents)


GATEWAY = KindInfo(
    kind=GATEWAY_KIND,
    plural="meshgateways",
    spec=MeshGatewaySpec,
    summary="An ingress gateway's listeners (HTTP, HTTPS with certificates by SNI, TLS passthrough, TCP)",
    aliases=("mgw",),
    validators=(gateway_problems,),
    columns={"LISTENERS": _listeners_column},
)
ROUTE = KindInfo(
    kind=ROUTE_KIND,
    plural="meshgatewayroutes",
    spec=MeshGatewayRouteSpec,
    summary="Routes on a gateway's listeners: by host and path to mesh services, or by SNI / port for TLS and TCP",
    aliases=("mgwr",),
    validators=(route_problems,),
    columns={"PARENTS": _parents_column, "PROTOCOL": lambda r: spec_as(r, MeshGatewayRouteSpec).protocol},
)
CERTIFICATE = KindInfo(
    kind="GatewayCertificate",
    plural="gatewaycertificates",
    spec=GatewayCertificateSpec,
    summary="A gateway listener's certificate and key, kept sealed by the control plane (admins only read the key)",
    validators=(certificate_problems,),
    columns={"NOT AFTER": lambda r: _not_after(r)},
)
KINDS = (GATEWAY, ROUTE, CERTIFICATE)


def _not_after(r: Resource) -> str:
    from meshline.core.tls_pair import load_certs

    certs = load_certs(spec_as(r, GatewayCertificateSpec).certificate.encode())
    return certs[0].not_valid_after_utc.isoformat() if certs else "?"

MESH_CHECKS = ((ROUTE_KIND, PARENTS),)


class _Backends:
    """The gateway's outbound sections, one per service, rendered once; their clusters are
    copied into the listener that sends there."""

    def __init__(self, backend: BackendSection, mesh: MeshSnapshot) -> None:
        self.backend = backend
        self.mesh = mesh
        self.sections: dict[str, OutboundSection] = {}
        self._noted: set[tuple[int, str]] = set()

    def of(self, service: str) -> OutboundSection:
        if service not in self.sections:
            self.sections[service] = self.backend(service)
        return self.sections[service]

    def cluster(self, into: InboundSection, service: str, tags: Mapping[str, str]) -> str:
        section = self.of(service)
        name = add_cluster(section, self.mesh, service, tags)
        cluster = section.clusters[name]
        namespace, key = names.CLUSTER_SERVICE_META
        cluster.metadata.filter_metadata[namespace].update({key: service})  # the logs' destination
        into.clusters[name] = cluster
        into.endpoints[name] = section.endpoints[name]
        if (id(into), service) not in self._noted:  # inspect: the policies that shaped calls to it
            self._noted.add((id(into), service))
            for a in section.applied:
                into.note(a.kind, a.name, f"{a.reason} (calls from the gateway to {service})")
        return name

    def template(self, service: str) -> rc.RouteAction:
        """The route defaults for calls from the gateway to ``service`` (its outbound's default route)."""
        route = self.of(service).route
        if route is None:
            return rc.RouteAction()
        found = [r for r in route.virtual_hosts[0].routes if r.HasField("route")]
        return found[-1].route if found else rc.RouteAction()


def _attached(route: Resource, gateway: str, lst: Listener) -> bool:
    spec = spec_as(route, MeshGatewayRouteSpec)
    if spec.protocol not in ATTACHES[lst.protocol]:
        return False
    for p in spec.parents:
        if p.gateway == gateway and p.listener in (None, lst.name):
            return not spec.hostnames or not lst.hostname or bool(effective_hostnames(lst.hostname, spec.hostnames))
    return False


def _virtual_hosts(section: InboundSection, listeners: Sequence[Listener], routes: Sequence[Resource],
                   gateway: str, backends: _Backends) -> list[rc.VirtualHost]:  # fmt: skip
    by_host: dict[str, list[rc.Route]] = {}
    for lst in listeners:
        for route in routes:
            if not _attached(route, gateway, lst):
                continue
            spec = spec_as(route, MeshGatewayRouteSpec)
            built: list[rc.Route] = []
            for i, rule in enumerate(spec.rules):
                first = next((b.service for b in rule.backends if b.service), None)
                template = backends.template(first) if first else rc.RouteAction()

                def cluster_for(service: str | None, tags: Mapping[str, str]) -> str:
                    assert service is not None  # route_problems: every backend names its service
                    return backends.cluster(section, service, tags)

                built.extend(rule_routes(route.name, i, rule, cluster_for, template))
            if spec.cors is not None:
                policy = envoy.packed(cors_policy(spec.cors))
                for r in built:
                    r.typed_per_filter_config[CORS_FILTER].CopyFrom(policy)
                if section.http is not None and not any(f.name == CORS_FILTER for _, f in section.http.filters):
                    section.http.add_filter(ORDER_CORS, CORS_FILTER, cors_pb2.Cors())
            section.note(ROUTE_KIND, route.name, f"attached to gateway {gateway} listener {lst.name}")
            for host in effective_hostnames(lst.hostname, spec.hostnames):
                by_host.setdefault(host, []).extend(built)
    if not by_host:
        return [rc.VirtualHost(name="no-route", domains=["*"], routes=[rc.Route(
            name="no-route", match=rc.RouteMatch(prefix="/"),
            direct_response=rc.DirectResponseAction(status=404, body={"inline_string": GATEWAY_NO_ROUTE}))])]  # fmt: skip
    return [rc.VirtualHost(name=host, domains=[host], routes=rs) for host, rs in sorted(by_host.items())]


def _tcp(section: InboundSection, stat: str, spec: MeshGatewayRouteSpec, backends: _Backends) -> tcp_proxy_pb2.TcpProxy:
    targets = [(backends.cluster(section, b.service, b.tags), b.weight) for b in spec.backends if b.service and b.weight]
    if len(targets) == 1:
        return envoy.tcp_proxy(stat, targets[0][0])
    out = tcp_proxy_pb2.TcpProxy(stat_prefix=names.stat_prefix(stat))
    for cluster, weight in targets:
        out.weighted_clusters.clusters.append(tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(name=cluster, weight=weight))
    return out


def terminate_tls(certificates: Sequence[str], client: ClientValidation | None = None) -> base_pb2.TransportSocket:
    """Server side of an HTTPS listener: its certificates from the agent's SDS; a client
    certificate only when the listener validates clients (signed by its CA bundle)."""
    ctx = tls_pb2.DownstreamTlsContext(common_tls_context=tls_pb2.CommonTlsContext(
        tls_params=common_pb2.TlsParameters(tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2),
        tls_certificate_sds_secret_configs=[envoy.sds(names.gateway_certificate_secret(c)) for c in certificates],
        alpn_protocols=["h2", "http/1.1"],
    ))  # fmt: skip
    if client is not None:
        ctx.common_tls_context.validation_context.trusted_ca.inline_string = client.ca
        ctx.require_client_certificate.value = not client.optional
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=envoy.packed(ctx))


CORS_FILTER = "envoy.filters.http.cors"
ORDER_CORS = 10  # first: a browser's preflight is answered before a token is asked for


def _origin(origin: str) -> string_pb2.StringMatcher:
    if origin == "*":
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".*"))
    if "*." in origin:
        scheme, rest = origin.split("://", 1)
        pattern = re.escape(scheme + "://") + "[A-Za-z0-9-]+(\\.[A-Za-z0-9-]+)*" + re.escape(rest[1:])
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern))
    return string_pb2.StringMatcher(exact=origin)


def cors_policy(c: Cors) -> cors_pb2.CorsPolicy:
    out = cors_pb2.CorsPolicy(allow_origin_string_match=[_origin(o) for o in c.allow_origins],
                              allow_methods=",".join(c.allow_methods), allow_headers=",".join(c.allow_headers),
                              expose_headers=",".join(c.expose_headers))  # fmt: skip
    out.allow_credentials.value = c.allow_credentials
    if c.max_age is not None:
        out.max_age = str(int(c.max_age.total_seconds()))
    return out


CLIENT_SUBJECT_HEADER = "x-client-subject"


def _route_config(name: str, vhosts: list[rc.VirtualHost], client_subject: bool = False) -> route_pb2.RouteConfiguration:
    out = route_pb2.RouteConfiguration(name=name, virtual_hosts=vhosts)
    # Removed first, then set from the verified certificate: a caller cannot send its own.
    out.request_headers_to_remove.append(CLIENT_SUBJECT_HEADER)
    if client_subject:
        out.request_headers_to_add.append(base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=CLIENT_SUBJECT_HEADER, value="%DOWNSTREAM_PEER_SUBJECT%"),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD))  # fmt: skip
    return out


def _port_chains(section: GatewayListenerSection, listeners: Sequence[Listener], routes: Sequence[Resource],
                 gateway: str, backends: _Backends) -> list[GatewayChain]:  # fmt: skip
    chains: list[GatewayChain] = []
    http = [x for x in listeners if x.protocol == "HTTP"]
    if http:
        name = names.gateway_chain(http[0].name) if len(http) == 1 else names.gateway_listener(http[0].port)
        chains.append(GatewayChain(name, route=_route_config(name, _virtual_hosts(section, http, routes, gateway, backends))))
    for lst in listeners:
        if lst.protocol == "HTTPS":
            assert lst.tls is not None
            name = names.gateway_chain(lst.name)
            chains.append(GatewayChain(
                name, server_names=(lst.hostname,) if lst.hostname else (), tls=True,
                transport=terminate_tls(lst.tls.certificates, lst.tls.client_validation),
                route=_route_config(name, _virtual_hosts(section, [lst], routes, gateway, backends),
                                    client_subject=lst.tls.client_validation is not None),
            ))  # fmt: skip
        elif lst.protocol == "TLS":
            for route in routes:
                if _attached(route, gateway, lst):
                    spec = spec_as(route, MeshGatewayRouteSpec)
                    hosts = effective_hostnames(lst.hostname, spec.hostnames)
                    name = names.gateway_chain(lst.name, route.name)
                    chains.append(GatewayChain(name, server_names=tuple(hosts), tls=True,
                                               tcp=_tcp(section, name, spec, backends)))
                    section.note(ROUTE_KIND, route.name, f"attached to gateway {gateway} listener {lst.name} (SNI {', '.join(hosts)})")
        elif lst.protocol == "TCP":
            tcp_route = next((r for r in routes if _attached(r, gateway, lst)), None)
            if tcp_route is not None:  # one per listener: a TCP connection carries nothing to choose by
                name = names.gateway_chain(lst.name)
                chains.append(GatewayChain(name, tcp=_tcp(section, name, spec_as(tcp_route, MeshGatewayRouteSpec), backends)))
                section.note(ROUTE_KIND, tcp_route.name, f"attached to gateway {gateway} listener {lst.name}")
    return chains


def generate(dataplane: Resource, mesh: MeshSnapshot, backend: BackendSection) -> list[InboundSection]:
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec)
    name = spec.inbound[0].service
    gateway = next((g for g in mesh.of_kind(GATEWAY_KIND) if g.name == name), None)
    if gateway is None:
        return []
    gw = spec_as(gateway, MeshGatewaySpec)
    routes = [r for r in mesh.of_kind(ROUTE_KIND)
              if any(p.gateway == name for p in spec_as(r, MeshGatewayRouteSpec).parents)]  # fmt: skip
    backends = _Backends(backend, mesh)
    by_port: dict[int, list[Listener]] = {}
    for lst in gw.listeners:
        by_port.setdefault(lst.port, []).append(lst)
    sections: list[InboundSection] = []
    for port, listeners in sorted(by_port.items()):
        section = gateway_section(dataplane, port)
        section.note(GATEWAY_KIND, gateway.name, "listeners " + ", ".join(f"{x.name} ({x.protocol})" for x in listeners))
        section.chains = _port_chains(section, listeners, routes, name, backends)
        if section.chains:
            sections.append(section)
    return sections


PLUGIN = Plugin(kind=GATEWAY, gateway=generate)
