"""Configurer helpers over one outbound section: its routes, its clusters, their shared parts.

Routing kinds (HTTPRoute, TCPRoute) add subset clusters with :func:`add_cluster`; the
resilience kinds, declared ``after`` them, configure every route and cluster they find.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timedelta

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from google.protobuf import duration_pb2

from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.outbound import default_route, service_cluster
from meshline.render.sections import OutboundSection
from meshline.xds import names


def proto_duration(value: timedelta) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(value)
    return out


def route_actions(section: OutboundSection) -> Iterator[route_components_pb2.RouteAction]:
    """Every forwarding route of the section (redirects and direct responses have no upstream)."""
    for config in section.routes.values():
        for vhost in config.virtual_hosts:
            for route in vhost.routes:
                if route.HasField("route"):
                    yield route.route


def inherits_default(section: OutboundSection, action: route_components_pb2.RouteAction, field: str) -> bool:
    """True if ``action`` still has the outbound default for ``field``, i.e. no routing rule set it.

    An HTTPRoute rule's own timeout (or retry policy) is more specific than a mesh-wide
    policy, so the policies here replace only what a route inherited from the base generator.
    """
    reference = default_route(action.cluster, section.protocol).route
    return bool(getattr(action, field) == getattr(reference, field))


def clusters(section: OutboundSection) -> Iterator[cluster_pb2.Cluster]:
    """Every cluster of the section: the service's and any subset clusters routing added."""
    yield from section.clusters.values()


def default_thresholds(cluster: cluster_pb2.Cluster) -> circuit_breaker_pb2.CircuitBreakers.Thresholds:
    """The cluster's default-priority thresholds: CircuitBreaker sets the limits there, Retry
    the retry budget, so each edits the one entry in place instead of replacing it."""
    for thresholds in cluster.circuit_breakers.thresholds:
        if thresholds.priority == base_pb2.DEFAULT:
            return thresholds
    return cluster.circuit_breakers.thresholds.add(priority=base_pb2.DEFAULT)


def add_cluster(section: OutboundSection, mesh: MeshSnapshot, service: str, tags: Mapping[str, str]) -> str:
    """Make sure the section has the cluster (and endpoints) of ``service`` or its tag subset."""
    name = names.service_cluster(service, tags)
    if name not in section.clusters:
        explicit = section.section_id.role != "transparent-outbound"
        cluster, cla = service_cluster(mesh, service, dict(tags) or None, explicit)
        section.clusters[name] = cluster
        if cla is not None:  # an ExternalService's cluster holds its own endpoints
            section.endpoints[name] = cla
    return name
