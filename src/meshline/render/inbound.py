"""Base generator for inbound traffic: mesh (mTLS) listener -> the local app."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from meshline.core.dataplane import DataplaneSpec, Inbound
from meshline.core.resource import Resource
from meshline.render import envoy
from meshline.render.defaults import L7_PROTOCOLS
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.sections import HttpChain, InboundSection, SectionId
from meshline.xds import names


def server_transports(mesh: MeshSnapshot) -> tuple[base_pb2.TransportSocket | None, ...]:
    mode = mesh.spec.mtls.mode
    if mode == "disabled":
        return (None,)
    tls = envoy.downstream_mtls(mesh.identity_prefix())
    return (tls,) if mode == "strict" else (tls, None)


def inbound_section(dataplane: Resource, inbound: Inbound, mesh: MeshSnapshot) -> InboundSection:
    spec = dataplane.spec
    assert isinstance(spec, DataplaneSpec)
    name = names.inbound_listener(inbound.port)
    cluster_name = names.inbound_cluster(inbound.port)
    protocol = inbound.protocol
    section = InboundSection(
        target=f"inbound {inbound.port} ({inbound.service})",
        listener=envoy.listener(name, spec.address, inbound.port),
        id=SectionId("sidecar", "inbound", inbound.port),
        transports=server_transports(mesh),
        inbound=inbound,
    )
    section.clusters[cluster_name] = envoy.static_cluster(
        cluster_name, inbound.service_address, inbound.app_port, protocol
    )
    if protocol in L7_PROTOCOLS:
        h = envoy.hcm(name)
        # The app sees who called it: the caller's SPIFFE ID in x-forwarded-client-cert.
        h.forward_client_cert_details = hcm_pb2.HttpConnectionManager.SANITIZE_SET
        h.set_current_client_cert_details.uri = True
        section.http = HttpChain(h)
        action = route_components_pb2.RouteAction(cluster=cluster_name)
        action.timeout.FromSeconds(0)  # the caller's sidecar enforces timeouts
        section.route = route_pb2.RouteConfiguration(
            name=names.inbound_route(inbound.port),
            virtual_hosts=[
                route_components_pb2.VirtualHost(
                    name=inbound.service,
                    domains=["*"],
                    routes=[
                        route_components_pb2.Route(
                            name="default",
                            match=route_components_pb2.RouteMatch(prefix="/"),
                            route=action,
                        )
                    ],
                )
            ],
        )
    else:
        section.tcp = envoy.tcp_proxy(name, cluster_name)
    return section
