"""CircuitBreaker configurer: thresholds and outlier detection on every cluster of the outbound."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2

from meshline.policies.circuitbreaker.api import KIND, CircuitBreakerSpec, Limits
from meshline.policies.common.outlier import outlier_detection
from meshline.policies.common.sections import clusters, default_thresholds
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.policy_kind import Merge, PolicyKind, Resolved, record
from meshline.render.sections import OutboundSection


def _set_limits(cluster: cluster_pb2.Cluster, limits: Limits) -> None:
    t = default_thresholds(cluster)
    if limits.max_connections is not None:
        t.max_connections.value = limits.max_connections
    if limits.max_pending_requests is not None:
        t.max_pending_requests.value = limits.max_pending_requests
    if limits.max_requests is not None:
        t.max_requests.value = limits.max_requests
    if limits.max_retries is not None:
        t.max_retries.value = limits.max_retries


def configure(section: OutboundSection, resolved: Resolved[CircuitBreakerSpec], mesh: MeshSnapshot) -> None:
    matched = resolved.best
    conf = matched.spec.conf
    detection = outlier_detection(conf.outlier_detection) if conf.outlier_detection else None
    for cluster in clusters(section):
        if conf.limits is not None:
            _set_limits(cluster, conf.limits)
        if detection is not None:
            cluster.outlier_detection.CopyFrom(detection)
    note = ""
    if conf.limits and conf.limits.max_retries is not None and any(
        t.HasField("retry_budget") for c in clusters(section) for t in c.circuit_breakers.thresholds
    ):
        note = "maxRetries has no effect: a Retry budget applies"
    record(section, matched, note)


POLICY = PolicyKind(
    info=KIND,
    spec=CircuitBreakerSpec,
    merge=Merge.MOST_SPECIFIC,
    shapes=frozenset({"cluster"}),
    outbound=configure,
    # After Retry: says when a retry budget makes maxRetries moot.
    after=("Retry",),
    explains=frozenset({"circuit-breaker"}),
)
