"""What the control plane knows about a logged request, for its explanation.

Reads the control plane's render results (the mesh snapshot and the last render of the
sidecar that logged the entry); no store access, cheap enough to run per failed request.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from meshline.controlplane.results import RenderResults
from meshline.telemetry.explain import EndpointCounts, ExplainContext
from meshline.telemetry.record import OUTBOUND, LogRecord
from meshline.xds import names
from meshline.xds.snapshot import CLUSTER, ENDPOINT


def context_from(results: RenderResults, r: LogRecord) -> ExplainContext:
    node = names.node_id(r.mesh, r.dataplane)
    result = results.get(node)
    policies: tuple[str, ...] = ()
    outlier = False
    in_cluster: int | None = None
    if result is not None:
        policies = tuple(sorted({f"{a.kind}/{a.name}" for a in result.applied if str(a.section) == r.section}))
        cluster = result.snapshot.slot(CLUSTER).resources.get(r.upstream_cluster)
        if cluster is not None:
            c = cluster_pb2.Cluster()
            cluster.any.Unpack(c)
            outlier = c.HasField("outlier_detection")
        cla = result.snapshot.slot(ENDPOINT).resources.get(r.upstream_cluster)
        if cla is not None:
            e = endpoint_pb2.ClusterLoadAssignment()
            cla.any.Unpack(e)
            in_cluster = sum(len(loc.lb_endpoints) for loc in e.endpoints)
    endpoints = None
    snap = results.snapshot(r.mesh)
    if snap is not None and r.direction == OUTBOUND and r.destination:
        eps = snap.endpoints.get(r.destination, ())
        endpoints = EndpointCounts(
            registered=len(eps), offline=sum(1 for e in eps if not e.healthy), in_cluster=in_cluster
        )
    return ExplainContext(endpoints=endpoints, policies=policies, outlier_detection=outlier)
