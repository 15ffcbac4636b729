"""What the control plane knows about a logged request, for its explanation.

Reads the control plane's render results (the mesh snapshot and the last render of the
sidecar that logged the entry); no store access, cheap enough to run per failed request.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from meshline.controlplane.results import RenderResults
from meshline.controlplane.unknown_services import service_refs
from meshline.core.external_service import ExternalServiceSpec
from meshline.core.schema import did_you_mean
from meshline.policies.trafficpermission.decision import DENY, connection_decision
from meshline.render.mesh_snapshot import MeshSnapshot
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
    external, gateway, refused = "", "", ""
    if snap is not None and r.direction == OUTBOUND:
        es = next((x.spec for x in snap.of_kind("ExternalService") if x.name == r.destination), None)
        if isinstance(es, ExternalServiceSpec):
            external = es.server_name or es.target
            if snap.spec.egress.gateway and not es.is_cidr and r.dataplane and not r.section.startswith("egress-gateway/"):
                gateway = snap.spec.egress.gateway
                refused = _refused_at_gateway(snap, r)
    return ExplainContext(endpoints=endpoints, policies=policies, outlier_detection=outlier,
                          missing_backends=_missing_backends(results, r, policies), external=external,
                          egress_gateway=gateway, egress_refused_by=refused)


def _refused_at_gateway(snap: MeshSnapshot, r: LogRecord) -> str:
    """The TrafficPermission (or the mesh default, as "") the egress gateway refuses this
    caller's connections to the ExternalService with; "" when it lets them through."""
    if not r.failed or not r.source:
        return ""
    spec = snap.spec
    action, policy = connection_decision(snap.of_kind("TrafficPermission"), {"service": r.destination},
                                         spec.effective_default_permission(), spec.mtls.mode != "strict", r.source)  # fmt: skip
    if action != DENY:
        return ""
    return f"TrafficPermission {policy}" if policy else f"the default permission of mesh {snap.name} (deny)"


ROUTE_KINDS = ("HTTPRoute", "TCPRoute")


def _missing_backends(results: RenderResults, r: LogRecord, policies: tuple[str, ...]) -> tuple[str, ...]:
    """Services the routes on the logging section send to that have no instance (a typo in a
    backend takes its traffic down with nothing else to say), each with its route."""
    snap = results.snapshot(r.mesh)
    if snap is None or r.direction != OUTBOUND:
        return ()
    known = snap.services()
    out = []
    for p in policies:
        kind, _, name = p.partition("/")
        res = next((x for x in snap.of_kind(kind) if x.name == name), None) if kind in ROUTE_KINDS else None
        if res is None:
            continue
        for path, service in service_refs(res.spec.to_json()):
            if ".backends[" in path and not snap.endpoints.get(service):
                guess = did_you_mean(service, known)
                hint = f"; did you mean '{guess}'?" if guess else ""
                line = f"backend {service} has no instances ({kind} {name}{hint})"
                if line not in out:
                    out.append(line)
    return tuple(out)
