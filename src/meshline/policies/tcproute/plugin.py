"""Which TCPRoute applies to a TCP outbound (the most specific one), and its weighted tcp_proxy."""

from __future__ import annotations

from meshline.core.selectors import best_policy
from meshline.policies.httproute.plugin import add_cluster
from meshline.policies.tcproute.api import KIND, TCPRouteSpec
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.plugins import Plugin
from meshline.render.sections import Applied, OutboundSection

ORDER = 11  # with HTTPRoute: before policies that tune the clusters it adds


def configure_outbound(section: OutboundSection, mesh: MeshSnapshot) -> None:
    proxy = section.tcp
    if proxy is None:
        return
    match = best_policy(mesh.of_kind(KIND.kind), section.source_tags, {"service": section.service})
    if match is None:
        return
    spec = match.policy.spec
    assert isinstance(spec, TCPRouteSpec)
    backends = [b for b in spec.backends if b.weight > 0]
    clusters = [(add_cluster(section, mesh, b.service or section.service, b.tags), b.weight) for b in backends]
    if len(clusters) == 1:
        proxy.cluster = clusters[0][0]
    else:
        proxy.ClearField("cluster")
        for name, weight in clusters:
            proxy.weighted_clusters.clusters.add(name=name, weight=weight)
    section.applied.append(Applied(KIND.kind, match.policy.name, section.target, match.reason()))


PLUGIN = Plugin(kind=KIND, order=ORDER, outbound=configure_outbound)
