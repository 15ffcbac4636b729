"""CircuitBreaker configurer: thresholds and outlier detection on every cluster of the outbound."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from google.protobuf import wrappers_pb2

from meshline.policies.circuitbreaker.api import (
    DEFAULT_CONSECUTIVE_5XX,
    KIND,
    CircuitBreakerSpec,
    Limits,
    OutlierDetection,
)
from meshline.policies.circuitbreaker.thresholds import default_thresholds
from meshline.policies.timeout.common import ORDER_CIRCUIT_BREAKER, clusters, proto_duration, record, select
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.plugins import Plugin
from meshline.render.sections import OutboundSection

ENFORCED, OFF = 100, 0


def _u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


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


def outlier_detection(od: OutlierDetection) -> outlier_detection_pb2.OutlierDetection:
    """Only the listed detectors enforce: Envoy's own defaults would also enforce success rate."""
    consecutive_5xx = od.consecutive_5xx
    if not od.has_detector():
        consecutive_5xx = DEFAULT_CONSECUTIVE_5XX
    split = od.split_external_local_origin_errors
    out = outlier_detection_pb2.OutlierDetection(
        interval=proto_duration(od.interval),
        base_ejection_time=proto_duration(od.base_ejection_time),
        max_ejection_percent=_u32(round(od.max_ejection_percent)),
        split_external_local_origin_errors=split,
        consecutive_5xx=_u32(consecutive_5xx or DEFAULT_CONSECUTIVE_5XX),
        enforcing_consecutive_5xx=_u32(ENFORCED if consecutive_5xx else OFF),
        consecutive_gateway_failure=_u32(od.consecutive_gateway_failures or DEFAULT_CONSECUTIVE_5XX),
        enforcing_consecutive_gateway_failure=_u32(ENFORCED if od.consecutive_gateway_failures else OFF),
        enforcing_consecutive_local_origin_failure=_u32(
            ENFORCED if od.consecutive_local_origin_failures else OFF
        ),
        enforcing_success_rate=_u32(ENFORCED if od.success_rate else OFF),
        enforcing_local_origin_success_rate=_u32(ENFORCED if od.success_rate and split else OFF),
        enforcing_failure_percentage=_u32(ENFORCED if od.failure_percentage else OFF),
        enforcing_failure_percentage_local_origin=_u32(ENFORCED if od.failure_percentage and split else OFF),
    )
    if od.max_ejection_time is not None:
        out.max_ejection_time.CopyFrom(proto_duration(od.max_ejection_time))
    if od.consecutive_local_origin_failures:
        out.consecutive_local_origin_failure.value = od.consecutive_local_origin_failures
    if od.success_rate:
        out.success_rate_minimum_hosts.value = od.success_rate.minimum_hosts
        out.success_rate_request_volume.value = od.success_rate.request_volume
        out.success_rate_stdev_factor.value = round(od.success_rate.standard_deviation_factor * 1000)
    if od.failure_percentage:
        out.failure_percentage_threshold.value = round(od.failure_percentage.threshold)
        out.failure_percentage_minimum_hosts.value = od.failure_percentage.minimum_hosts
        out.failure_percentage_request_volume.value = od.failure_percentage.request_volume
    return out


def configure(section: OutboundSection, mesh: MeshSnapshot) -> None:
    match = select(KIND, section, mesh)
    if match is None:
        return
    spec = match.policy.spec
    assert isinstance(spec, CircuitBreakerSpec)
    conf = spec.conf
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
    record(section, match, note)


PLUGIN = Plugin(kind=KIND, order=ORDER_CIRCUIT_BREAKER, outbound=configure)
