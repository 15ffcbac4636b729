"""Which HTTPRoutes apply to an outbound, and how they shape its RouteConfiguration.

Every HTTPRoute whose sources match the caller and whose destinations match the called
service contributes its rules. Rules are tried by Envoy in order: first the rules of the
most specific route (core.selectors precedence), each route's rules in the order written,
and last the default route to the whole service. The first rule that fits a request wins.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.route.v3 import route_components_pb2 as rc

from meshline.core.selectors import matching
from meshline.policies.httproute.api import KIND, HTTPRouteSpec
from meshline.policies.httproute.build import rule_routes
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.outbound import service_cluster
from meshline.render.plugins import Plugin
from meshline.render.sections import Applied, OutboundSection
from meshline.xds import names

ORDER = 10  # routing first: later policies (retries, timeouts, circuit breakers) see every route and cluster


def add_cluster(section: OutboundSection, mesh: MeshSnapshot, service: str, tags: Mapping[str, str]) -> str:
    """Make sure the section has the cluster (and endpoints) of ``service`` or its tag subset."""
    name = names.service_cluster(service, tags)
    if name not in section.clusters:
        cluster, cla = service_cluster(mesh, service, dict(tags) or None)
        section.clusters[name] = cluster
        section.endpoints[name] = cla
    return name


def _copy(route: rc.Route) -> rc.Route:
    out = rc.Route()
    out.CopyFrom(route)
    return out


def configure_outbound(section: OutboundSection, mesh: MeshSnapshot) -> None:
    table = section.route
    if section.http is None or table is None:
        return
    found = matching(mesh.of_kind(KIND.kind), section.source_tags, {"service": section.service})
    if not found:
        return

    def cluster_for(service: str | None, tags: Mapping[str, str]) -> str:
        return add_cluster(section, mesh, service or section.service, tags)

    vhost = table.virtual_hosts[0]
    fallback = [_copy(r) for r in vhost.routes]  # the default route: requests no rule matched
    template = next((r.route for r in fallback if r.HasField("route")), rc.RouteAction())
    routes = []
    for rank, match in enumerate(found, start=1):
        spec = match.policy.spec
        assert isinstance(spec, HTTPRouteSpec)
        for i, rule in enumerate(spec.rules):
            routes.extend(rule_routes(match.policy.name, i, rule, cluster_for, template))
        order = f"; rules tried {rank} of {len(found)}" if len(found) > 1 else ""
        section.applied.append(Applied(KIND.kind, match.policy.name, section.target, match.reason() + order))
    del vhost.routes[:]
    vhost.routes.extend(routes + fallback)


PLUGIN = Plugin(kind=KIND, order=ORDER, outbound=configure_outbound)
