"""HealthCheck configurer: an active check on every cluster of the outbound, and passive ejection.

The check uses the cluster's transport socket, so in an mTLS mesh it reaches the
instance's sidecar with the caller's identity, like real traffic.
"""

from __future__ import annotations

from envoy.config.core.v3 import health_check_pb2
from envoy.type.v3 import http_pb2, range_pb2
from google.protobuf import wrappers_pb2

from meshline.policies.common.outlier import OutlierDetection, outlier_detection
from meshline.policies.common.sections import clusters, proto_duration
from meshline.policies.healthcheck.api import KIND, HealthCheckConf, HealthCheckSpec, Passive
from meshline.render.defaults import H2_PROTOCOLS, L7_PROTOCOLS
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.policy_kind import Merge, PolicyKind, Resolved, record
from meshline.render.sections import OutboundSection

# Without an http block, any answer below 500 proves the app is up: its sidecar answers 503
# when the app is gone, while a 404 for "/" is still a live app.
DEFAULT_HTTP_STATUSES = [(200, 500)]
PASSIVE_MAX_EJECTION_PERCENT = 50  # never eject more than half of a service on passive evidence


def _http(conf: HealthCheckConf, protocol: str) -> health_check_pb2.HealthCheck.HttpHealthCheck:
    ranges = conf.http.ranges() if conf.http else DEFAULT_HTTP_STATUSES
    check = health_check_pb2.HealthCheck.HttpHealthCheck(
        path=conf.http.path if conf.http else "/",
        expected_statuses=[range_pb2.Int64Range(start=lo, end=hi) for lo, hi in ranges],
        codec_client_type=http_pb2.HTTP2 if protocol in H2_PROTOCOLS else http_pb2.HTTP1,
    )
    if conf.http and conf.http.host:
        check.host = conf.http.host
    return check


def _tcp(conf: HealthCheckConf) -> health_check_pb2.HealthCheck.TcpHealthCheck:
    check = health_check_pb2.HealthCheck.TcpHealthCheck()
    if conf.tcp and conf.tcp.send:
        check.send.binary = conf.tcp.send.encode()
        for text in conf.tcp.expect:
            check.receive.add(binary=text.encode())
    return check


def health_check(conf: HealthCheckConf, protocol: str) -> health_check_pb2.HealthCheck | None:
    """The Envoy check for a service speaking ``protocol``; None when gRPC checks cannot apply."""
    hc = health_check_pb2.HealthCheck(
        timeout=proto_duration(conf.timeout),
        interval=proto_duration(conf.interval),
        no_traffic_interval=proto_duration(conf.no_traffic_interval or conf.interval),
        unhealthy_threshold=wrappers_pb2.UInt32Value(value=conf.unhealthy_threshold),
        healthy_threshold=wrappers_pb2.UInt32Value(value=conf.healthy_threshold),
    )
    if conf.initial_jitter is not None:
        hc.initial_jitter.CopyFrom(proto_duration(conf.initial_jitter))
    if conf.interval_jitter is not None:
        hc.interval_jitter.CopyFrom(proto_duration(conf.interval_jitter))
    if conf.grpc is not None:
        if protocol not in H2_PROTOCOLS:
            return None  # Envoy refuses gRPC checks on a cluster without HTTP/2
        hc.grpc_health_check.service_name = conf.grpc.service_name
        if conf.grpc.authority:
            hc.grpc_health_check.authority = conf.grpc.authority
    elif conf.http is not None or (conf.tcp is None and protocol in L7_PROTOCOLS):
        hc.http_health_check.CopyFrom(_http(conf, protocol))
    else:
        hc.tcp_health_check.CopyFrom(_tcp(conf))
    return hc


def passive_detection(passive: Passive) -> OutlierDetection:
    return OutlierDetection(
        interval=passive.penalty_interval,
        base_ejection_time=passive.penalty_interval,
        max_ejection_percent=PASSIVE_MAX_EJECTION_PERCENT,
        consecutive5xx=passive.unhealthy_threshold,
    )


def configure(section: OutboundSection, resolved: Resolved[HealthCheckSpec], mesh: MeshSnapshot) -> None:
    matched = resolved.best
    conf = matched.spec.conf
    check = health_check(conf, section.protocol)
    passive = outlier_detection(passive_detection(conf.passive)) if conf.passive else None
    notes = []
    if check is None:
        notes.append(f"grpc check skipped: the service speaks {section.protocol}, not http2/grpc")
    for cluster in clusters(section):
        if check is not None:
            del cluster.health_checks[:]
            cluster.health_checks.append(check)
        if passive is not None:
            if cluster.HasField("outlier_detection"):
                notes.append(f"passive check of {cluster.name} left to CircuitBreaker outlier detection")
            else:
                cluster.outlier_detection.CopyFrom(passive)
    record(section, matched, "; ".join(notes))


POLICY = PolicyKind(
    info=KIND,
    spec=HealthCheckSpec,
    merge=Merge.MOST_SPECIFIC,
    shapes=frozenset({"cluster"}),
    outbound=configure,
    # After CircuitBreaker: passive checks never override its outlier detection.
    after=("CircuitBreaker",),
    explains=frozenset({"health-check"}),
)
