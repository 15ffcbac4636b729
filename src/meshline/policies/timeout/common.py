"""What the five resilience policies share: field types, destination rules, matching, route walking.

Timeout, Retry, CircuitBreaker, HealthCheck and LoadBalancer all configure the clusters
and routes of one outbound section. They live in separate packages (one per kind) and
import these helpers from here, the first of them in render order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Annotated, Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2
from google.protobuf import duration_pb2
from pydantic import AfterValidator

from meshline.core.errors import FieldProblem
from meshline.core.resource import KindInfo, Resource
from meshline.core.schema import Duration
from meshline.core.selectors import Match, SelectorSpec, best_policy
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.outbound import default_route
from meshline.render.sections import Applied, OutboundSection

# Render order of the resilience plugins: after routing (which may add subset clusters and
# routes these policies must also configure), before observability.
ORDER_TIMEOUT = 300
ORDER_RETRY = 310  # after Timeout: compares per-try timeouts with the request timeout
ORDER_CIRCUIT_BREAKER = 320
ORDER_HEALTH_CHECK = 330  # after CircuitBreaker: passive checks never override its outlier detection
ORDER_LOAD_BALANCER = 340


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0 (e.g. '250ms', '5s')")
    return value


def _at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError("must be 1 or more")
    return value


def _percent(value: float) -> float:
    if not 0 <= value <= 100:
        raise ValueError("must be a percentage from 0 to 100")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
PositiveInt = Annotated[int, AfterValidator(_at_least_one)]
Percent = Annotated[float, AfterValidator(_percent)]


def sets_something(values: Mapping[str, Any]) -> bool:
    """True if a dumped (exclude_none) conf has any leaf value: ``{"http": {}}`` sets nothing."""
    return any(not isinstance(v, Mapping) or sets_something(v) for v in values.values())


def proto_duration(value: timedelta) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(value)
    return out


def service_only_destinations(res: Resource) -> list[FieldProblem]:
    """Resilience policies configure a whole service's clusters, so destinations name services only."""
    spec = res.spec
    assert isinstance(spec, SelectorSpec)
    problems = []
    for i, selector in enumerate(spec.destinations):
        for tag in sorted(set(selector.match) - {"service"}):
            problems.append(
                FieldProblem(
                    f"spec.destinations[{i}].match.{tag}",
                    f"{res.kind} selects destinations by service only; remove '{tag}'"
                    " (to treat one version differently, route it to its own service or subset with"
                    " HTTPRoute and select that service)",
                )
            )
    return problems


def select(kind: KindInfo, section: OutboundSection, mesh: MeshSnapshot) -> Match | None:
    """The most specific policy of ``kind`` for this caller (section.source_tags) and service."""
    return best_policy(mesh.of_kind(kind.kind), section.source_tags, {"service": section.service})


def record(section: OutboundSection, match: Match, note: str = "") -> None:
    reason = match.reason() + (f"; {note}" if note else "")
    section.applied.append(Applied(match.policy.kind, match.policy.name, section.target, reason))


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
