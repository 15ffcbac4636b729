"""Locality awareness: endpoint priorities by zone, relative to the caller's zone.

Envoy fills priority 0 first and fails over to the next priority only as far as
priority 0 is unhealthy (scaled by the overprovisioning factor), so giving the
caller's zone priority 0 keeps traffic in the zone and fails over when it cannot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy.config.endpoint.v3 import endpoint_pb2


def caller_zone(source_tags: Sequence[Mapping[str, str]]) -> str | None:
    """The caller's zone; None when it has none or its inbounds disagree."""
    zones = {tags["zone"] for tags in source_tags if tags.get("zone")}
    return zones.pop() if len(zones) == 1 else None


def prioritize(
    cla: endpoint_pb2.ClusterLoadAssignment, zone: str, failover_order: Sequence[str], overprovisioning: int
) -> None:
    """Caller's zone first, then ``failover_order``, then every other zone; priorities stay contiguous."""

    def rank(locality_zone: str) -> int:
        if locality_zone == zone:
            return 0
        if locality_zone in failover_order:
            return 1 + failover_order.index(locality_zone)
        return 1 + len(failover_order)

    ranks = sorted({rank(group.locality.zone) for group in cla.endpoints})
    for group in cla.endpoints:
        group.priority = ranks.index(rank(group.locality.zone))
    cla.policy.overprovisioning_factor.value = overprovisioning
