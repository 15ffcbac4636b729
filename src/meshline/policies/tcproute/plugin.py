"""Which TCPRoute applies to a TCP outbound (the most specific one), and its weighted tcp_proxy."""

from __future__ import annotations

from meshline.policies.common.references import ROUTE_REFERENCES
from meshline.policies.common.sections import add_cluster
from meshline.policies.tcproute.api import KIND, TCPRouteSpec
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.policy_kind import Merge, PolicyKind, Resolved, record
from meshline.render.sections import OutboundSection


def configure_outbound(section: OutboundSection, resolved: Resolved[TCPRouteSpec], mesh: MeshSnapshot) -> None:
    proxy = section.tcp
    if proxy is None:
        return
    match = resolved.best
    spec = match.spec
    backends = [b for b in spec.backends if b.weight > 0]
    clusters = [(add_cluster(section, mesh, b.service or section.service, b.tags), b.weight) for b in backends]
    if len(clusters) == 1:
        proxy.cluster = clusters[0][0]
    else:
        proxy.ClearField("cluster")
        for name, weight in clusters:
            proxy.weighted_clusters.clusters.add(name=name, weight=weight)
    record(section, match)


POLICY = PolicyKind(
    info=KIND,
    spec=TCPRouteSpec,
    merge=Merge.MOST_SPECIFIC,
    shapes=frozenset({"listener", "cluster", "endpoints"}),
    outbound=configure_outbound,
    mesh_checks=(ROUTE_REFERENCES,),
    explains=frozenset({"route"}),
)
