"""Which HTTPRoutes apply to an outbound, and how they shape its RouteConfiguration.

Every HTTPRoute whose sources match the caller and whose destinations match the called
service contributes its rules. Rules are tried by Envoy in order: first the rules of the
most specific route (core.selectors precedence), each route's rules in the order written,
and last the default route to the whole service. The first rule that fits a request wins.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.route.v3 import route_components_pb2 as rc

from meshline.core.resource import KindInfo
from meshline.policies.common.references import ROUTE_REFERENCES
from meshline.policies.common.sections import add_cluster
from meshline.policies.httproute.api import HTTPRouteSpec, destinations_column, rules_column
from meshline.policies.httproute.build import rule_routes
from meshline.policies.httproute.checks import route_problems
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.policy_kind import Merge, PolicyKind, Resolved
from meshline.render.sections import OutboundSection


def _copy(route: rc.Route) -> rc.Route:
    out = rc.Route()
    out.CopyFrom(route)
    return out


# Here rather than in api.py: its checks (checks.py) read the schema's types from api.py.
KIND = KindInfo(
    kind="HTTPRoute",
    plural="httproutes",
    spec=HTTPRouteSpec,
    summary="L7 routing to a service: matches, weighted versions, mirroring, rewrites, redirects",
    is_policy=True,
    validators=(route_problems,),
    columns={"DESTINATIONS": destinations_column, "RULES": rules_column},
)


def configure_outbound(section: OutboundSection, resolved: Resolved[HTTPRouteSpec], mesh: MeshSnapshot) -> None:
    table = section.route
    if section.http is None or table is None:
        return
    found = resolved.matches

    def cluster_for(service: str | None, tags: Mapping[str, str]) -> str:
        return add_cluster(section, mesh, service or section.service, tags)

    vhost = table.virtual_hosts[0]
    fallback = [_copy(r) for r in vhost.routes]  # the default route: requests no rule matched
    template = next((r.route for r in fallback if r.HasField("route")), rc.RouteAction())
    routes = []
    for rank, match in enumerate(found, start=1):
        for i, rule in enumerate(match.spec.rules):
            routes.extend(rule_routes(match.policy.name, i, rule, cluster_for, template))
        order = f"; rules tried {rank} of {len(found)}" if len(found) > 1 else ""
        section.note(KIND.kind, match.policy.name, match.reason() + order)
    del vhost.routes[:]
    vhost.routes.extend(routes + fallback)


POLICY = PolicyKind(
    info=KIND,
    spec=HTTPRouteSpec,
    merge=Merge.ALL_BY_PRECEDENCE,
    shapes=frozenset({"route", "cluster", "endpoints"}),
    outbound=configure_outbound,
    mesh_checks=(ROUTE_REFERENCES,),
    explains=frozenset({"route"}),
)
