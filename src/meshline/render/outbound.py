"""Base generator for outbound traffic: local port -> every healthy instance of a service."""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2

from meshline.core.dataplane import Outbound
from meshline.render import envoy, external
from meshline.render.defaults import L7_PROTOCOLS, request_timeout
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.sections import HttpChain, OutboundSection, SectionId
from meshline.xds import names

# Pooled mTLS connections keep the certificates of their handshake. Ending them after a
# quarter of the certificate lifetime (at most an hour) makes renewed certificates and a
# rotated CA take effect; Envoy drains the old connection and opens a new one for the
# next request, so nothing fails. (TCP connections are not cut: they last as the app wants.)
MAX_CONNECTION_DURATION_S = 3600.0


def connection_lifetime(mesh: MeshSnapshot) -> float | None:
    if mesh.spec.mtls.mode == "disabled":
        return None
    return min(mesh.spec.mtls.cert_lifetime.total_seconds() / 4, MAX_CONNECTION_DURATION_S)


def service_cluster(
    mesh: MeshSnapshot, service: str, subset: Mapping[str, str] | None = None, explicit: bool = False
) -> tuple[cluster_pb2.Cluster, endpoint_pb2.ClusterLoadAssignment | None]:
    """The cluster (with mTLS to the service's identity) and endpoints for a service or a tag subset.

    Policies that split traffic by tags (HTTPRoute, TCPRoute) call this for each backend.
    An ExternalService's cluster carries its own endpoints (no EDS: None); ``explicit``: for an
    outbound port rather than the capture listener (render/external.py).
    """
    name = names.service_cluster(service, subset)
    spec = external.declared(mesh).get(service)
    if spec is not None:
        return external.external_cluster(mesh, name, spec, explicit)
    protocol = mesh.service_protocol(service)
    transport = None
    if mesh.spec.mtls.mode != "disabled":
        transport = envoy.upstream_mtls(mesh.identity(service), f"{service}.{mesh.name}.mesh", protocol)
    cluster = envoy.eds_cluster(name, protocol, transport, connection_lifetime(mesh))
    eps = [
        e
        for e in mesh.endpoints.get(service, ())
        if not subset or all(e.tags.get(k) == v for k, v in subset.items())
    ]
    return cluster, envoy.load_assignment(name, eps)


# Retried by default because the request never reached the app (safe for any method).
DEFAULT_RETRY_ON = "connect-failure,refused-stream"
DEFAULT_RETRIES = 2


def default_route(cluster: str, protocol: str) -> route_components_pb2.Route:
    action = route_components_pb2.RouteAction(cluster=cluster)
    action.timeout.FromTimedelta(request_timeout(protocol))
    action.retry_policy.retry_on = DEFAULT_RETRY_ON
    action.retry_policy.num_retries.value = DEFAULT_RETRIES
    return route_components_pb2.Route(
        name="default", match=route_components_pb2.RouteMatch(prefix="/"), route=action
    )


def outbound_section(
    source_tags: tuple[Mapping[str, str], ...], outbound: Outbound, mesh: MeshSnapshot, proxy: str = "sidecar",
    explicit: bool = True,
) -> OutboundSection:
    """``proxy``: the proxy kind it is for (a gateway reaches services as a sidecar does);
    ``explicit``: an outbound port (False: a chain of the transparent capture listener)."""
    service = external.resolve(mesh, outbound.service) or outbound.service  # a host: its ExternalService
    protocol = mesh.service_protocol(service)
    name = names.outbound_listener(outbound.port)
    section = OutboundSection(
        target=f"outbound {service} (port {outbound.port})",
        listener=envoy.listener(name, outbound.address, outbound.port),
        id=SectionId(proxy, "outbound", outbound.port),
        outbound=outbound,
        service=service,
        protocol=protocol,
        source_tags=source_tags,
    )
    cluster, cla = service_cluster(mesh, service, explicit=explicit)
    section.clusters[cluster.name] = cluster
    if cla is not None:
        section.endpoints[cluster.name] = cla
    if protocol in L7_PROTOCOLS:
        h = envoy.hcm(name)
        section.route_name = names.outbound_route(outbound.port)
        h.rds.config_source.CopyFrom(envoy.ads())
        h.rds.route_config_name = section.route_name
        section.http = HttpChain(h)
        route = default_route(cluster.name, protocol)
        es = external.declared(mesh).get(service)
        if es is not None and (es.host or es.server_name):  # an app on 127.0.0.1:<port> sends that as Host
            route.route.host_rewrite_literal = es.host or es.server_name
        section.routes[section.route_name] = route_pb2.RouteConfiguration(
            name=section.route_name,
            virtual_hosts=[route_components_pb2.VirtualHost(name=service, domains=["*"], routes=[route])],
        )
    else:
        section.tcp = envoy.tcp_proxy(name, cluster.name)
    return section
