"""Typed Envoy protos for access logs and tracing (pure builders, used by the render step)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    base_pb2,
    config_source_pb2,
    extension_pb2,
    grpc_service_pb2,
    substitution_format_string_pb2,
)
from envoy.config.route.v3 import route_components_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.tracers.opentelemetry.samplers.v3 import (
    parent_based_sampler_pb2,
    trace_id_ratio_based_sampler_pb2,
)
from envoy.type.matcher.v3 import metadata_pb2 as metadata_matcher_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.matcher.v3.value_pb2 import ValueMatcher as value_matcher
from envoy.type.metadata.v3 import metadata_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from meshline.core.mesh import MeshTracing
from meshline.render import envoy
from meshline.telemetry import tags as t
from meshline.xds import names

# Entries are sent in batches: at most this long after the request ends (what `tap` waits).
FLUSH_INTERVAL_MS = 500
# Exporting spans must never hold traffic: the collector gets a short connect and call budget.
COLLECTOR_CONNECT_TIMEOUT_MS = 1000
COLLECTOR_CALL_TIMEOUT_MS = 1000
ZIPKIN_PATH = "/api/v2/spans"


@dataclass(frozen=True)
class SectionInfo:
    """What one listener's logs and spans say about it (values known at render time)."""

    listener: str
    direction: str  # outbound | inbound
    protocol: str  # http | tcp (how it is proxied)
    section: str  # str(SectionId), e.g. "sidecar/outbound/15001": the join key to the section's policies
    mesh: str
    service: str  # the sidecar's own service for this section (file name, span service)
    version: str  # the sidecar's own version tag
    source: str = ""  # outbound: the caller (the sidecar's service)
    destination: str = ""
    destination_version: str = ""  # inbound only (outbound: from the endpoint that answered)
    destination_zone: str = ""
    destination_instance: str = ""  # inbound only: this dataplane


def literal(tag: str, value: str) -> custom_tag_pb2.CustomTag:
    return custom_tag_pb2.CustomTag(tag=tag, literal=custom_tag_pb2.CustomTag.Literal(value=value))


def header(tag: str, name: str) -> custom_tag_pb2.CustomTag:
    return custom_tag_pb2.CustomTag(tag=tag, request_header=custom_tag_pb2.CustomTag.Header(name=name))


def metadata(tag: str, kind: str, namespace: str, key: str) -> custom_tag_pb2.CustomTag:
    mk = metadata_pb2.MetadataKind()
    getattr(mk, kind).SetInParent()  # request | route | cluster | host
    return custom_tag_pb2.CustomTag(
        tag=tag,
        metadata=custom_tag_pb2.CustomTag.Metadata(
            kind=mk,
            metadata_key=metadata_pb2.MetadataKey(
                key=namespace, path=[metadata_pb2.MetadataKey.PathSegment(key=key)]
            ),
        ),
    )


def _log_tags(info: SectionInfo) -> list[custom_tag_pb2.CustomTag]:
    out = [
        literal(t.T_DIRECTION, info.direction),
        literal(t.T_PROTOCOL, info.protocol),
        literal(t.T_SECTION, info.section),
        literal(t.T_DESTINATION, info.destination),
        metadata(t.T_POLICIES, "cluster", t.META, t.META_POLICIES),
    ]
    if info.direction == "outbound":
        out += [
            literal(t.T_SOURCE, info.source),
            literal(t.T_SOURCE_VERSION, info.version),
            metadata(t.T_DESTINATION_VERSION, "host", "envoy.lb", "version"),
            metadata(t.T_DESTINATION_ZONE, "host", "envoy.lb", "zone"),
            metadata(t.T_DESTINATION_INSTANCE, "host", t.META, t.META_DATAPLANE),
        ]
        if not info.destination:  # a gateway: each route reaches its own service, named by its cluster
            out.append(metadata(t.T_DESTINATION, "cluster", t.META, t.META_SERVICE))
    else:
        out += [
            literal(t.T_DESTINATION_VERSION, info.destination_version),
            literal(t.T_DESTINATION_ZONE, info.destination_zone),
            literal(t.T_DESTINATION_INSTANCE, info.destination_instance),
        ]
    if info.protocol == "http":
        out += [
            literal(t.T_SIGNALS, "stats"),  # counted from the sidecar's counters (telemetry.signals)
            header(t.T_TRACEPARENT, t.TRACEPARENT),
            header(t.T_B3, t.B3_TRACE_ID),
            metadata(t.T_ROUTE_POLICIES, "route", t.META, t.META_POLICIES),
            metadata(t.T_TIMEOUT_MS, "route", t.META, t.META_TIMEOUT_MS),
            metadata(t.T_PER_TRY_TIMEOUT_MS, "route", t.META, t.META_PER_TRY_TIMEOUT_MS),
        ]
        if info.direction == "inbound":
            out.append(header(t.T_SOURCE_HEADER, t.SOURCE_HEADER))
    return [tag for tag in out if tag.WhichOneof("type") != "literal" or tag.literal.value]


SUCCESSES_RUNTIME_KEY = "meshline.access_log.successes"  # an operator may override the percent in Envoy's runtime


def _cmp_status(op: int, value: int) -> accesslog_pb2.AccessLogFilter:
    return accesslog_pb2.AccessLogFilter(status_code_filter=accesslog_pb2.StatusCodeFilter(
        comparison=accesslog_pb2.ComparisonFilter(op=op, value=base_pb2.RuntimeUInt32(default_value=value))))


def _header(name: str, **match: str) -> accesslog_pb2.AccessLogFilter:
    """The request header ``name`` matches (exact=, prefix= or suffix=)."""
    return accesslog_pb2.AccessLogFilter(header_filter=accesslog_pb2.HeaderFilter(
        header=route_components_pb2.HeaderMatcher(name=name, string_match=string_pb2.StringMatcher(**match))))


def _dynamic_metadata(namespace: str, key: str, value: value_matcher) -> accesslog_pb2.AccessLogFilter:
    """The request's dynamic metadata ``namespace.key`` matches ``value`` (absent: no match;
    Envoy's default for an absent key is a match)."""
    return accesslog_pb2.AccessLogFilter(metadata_filter=accesslog_pb2.MetadataFilter(
        matcher=metadata_matcher_pb2.MetadataMatcher(
            filter=namespace, path=[metadata_matcher_pb2.MetadataMatcher.PathSegment(key=key)], value=value),
        match_if_key_not_found=wrappers_pb2.BoolValue(value=False)))


def _all(*filters: accesslog_pb2.AccessLogFilter) -> accesslog_pb2.AccessLogFilter:
    return accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(filters=list(filters)))


def stream_filter(successes: float, traced: bool = False) -> accesslog_pb2.AccessLogFilter | None:
    """Which HTTP entries a sidecar streams when no tap watches the section (None: all of them).

    Always: every request with a status of 400 or more, none at all (0), an Envoy response
    flag or a gRPC status other than OK (what `tap` and `explain` explain), a request a dry-run
    TrafficPermission would have refused, one a TrafficRecording captured, with ``traced``
    (the mesh traces) every sampled trace's request (`explain <trace id>` from a tracing UI
    finds it), and every request the caller's sidecar marked watched (``x-meshline-watch: 1``:
    a tap watches the caller or the callee; the caller's routes, on RDS, add it, so a tap never
    replaces a listener). Of the rest, ``successes`` percent, chosen by x-request-id, so both
    sidecars of a call pick the same requests and `explain` shows both halves. The golden
    signals never depend on it (telemetry.signals).

    Envoy's own filters only: a CEL expression here cost about 10 us of Envoy CPU per request,
    as much again as the rest of the request (benchmarks/RESULTS.md)."""
    if successes >= 100:
        return None
    ac = accesslog_pb2
    grpc = ac.GrpcStatusFilter
    filters = [
        _cmp_status(ac.ComparisonFilter.GE, 400),
        _cmp_status(ac.ComparisonFilter.EQ, 0),
        ac.AccessLogFilter(response_flag_filter=ac.ResponseFlagFilter()),  # any flag
        _header(t.WATCH_HEADER, exact="1"),
        # a gRPC status other than OK, of a gRPC request (Envoy's filter alone also takes a plain
        # HTTP 200 without a grpc-status for a failure)
        _all(_header("content-type", prefix="application/grpc"),
             ac.AccessLogFilter(grpc_status_filter=grpc(statuses=[grpc.OK], exclude=True))),
        _dynamic_metadata(t.RBAC_HTTP, t.SHADOW_RESULT, value_matcher(string_match=string_pb2.StringMatcher(exact="denied"))),
        _dynamic_metadata(t.CAPTURE_NS, t.CAPTURE_FIRST_KEY, value_matcher(present_match=True)),
    ]
    if traced:
        filters += [_header("traceparent", suffix="-01"), _header("x-b3-sampled", exact="1")]
    if successes > 0:
        filters.append(ac.AccessLogFilter(runtime_filter=ac.RuntimeFilter(
            runtime_key=SUCCESSES_RUNTIME_KEY,
            percent_sampled=percent_pb2.FractionalPercent(
                numerator=round(successes * 10_000), denominator=percent_pb2.FractionalPercent.MILLION))))
    return ac.AccessLogFilter(or_filter=ac.OrFilter(filters=filters))


def grpc_access_log(info: SectionInfo, successes: float = 100.0, traced: bool = False) -> accesslog_pb2.AccessLog:
    """Stream entries to the control plane's AccessLogService over the bootstrap's xDS cluster;
    HTTP: through :func:`stream_filter` (``successes``: percent of successes)."""
    common = als_pb2.CommonGrpcAccessLogConfig(
        log_name=names.access_log_name(info.listener),
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=names.XDS_CLUSTER)
        ),
        transport_api_version=config_source_pb2.V3,
        custom_tags=_log_tags(info),
    )
    common.buffer_flush_interval.FromMilliseconds(FLUSH_INTERVAL_MS)
    if info.protocol == "tcp":
        return accesslog_pb2.AccessLog(
            name="envoy.access_loggers.tcp_grpc",
            typed_config=envoy.packed(als_pb2.TcpGrpcAccessLogConfig(common_config=common)),
        )
    http = als_pb2.HttpGrpcAccessLogConfig(
        common_config=common,
        additional_response_headers_to_log=["grpc-status", t.DENIED_HEADER],
        additional_response_trailers_to_log=["grpc-status"],
    )
    out = accesslog_pb2.AccessLog(name="envoy.access_loggers.http_grpc", typed_config=envoy.packed(http))
    only = stream_filter(successes, traced)
    if only is not None:
        out.filter.CopyFrom(only)
    return out


def _json_fields(info: SectionInfo) -> dict[str, str]:
    """JSON-lines format; keys match the API's records (LogRecord.to_json) where they overlap."""
    f = {
        "time": "%START_TIME(%Y-%m-%dT%H:%M:%E3SZ)%",
        "mesh": info.mesh,
        "direction": info.direction,
        "protocol": info.protocol,
        "section": info.section,
        "destination": info.destination,
        "upstreamHost": "%UPSTREAM_HOST%",
        "upstreamCluster": "%UPSTREAM_CLUSTER%",
        "flags": "%RESPONSE_FLAGS%",
        "transportFailure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
        "durationMs": "%DURATION%",
        "bytesIn": "%BYTES_RECEIVED%",
        "bytesOut": "%BYTES_SENT%",
        "policies": "%CLUSTER_METADATA(meshline:policies)%",
        "peer": "%DOWNSTREAM_PEER_URI_SAN%",
        "tls": "%DOWNSTREAM_TLS_VERSION%",
    }
    if info.direction == "outbound":
        f.update(
            source=info.source,
            sourceVersion=info.version,
            destinationVersion="%UPSTREAM_METADATA(envoy.lb:version)%",
            destinationZone="%UPSTREAM_METADATA(envoy.lb:zone)%",
            destinationInstance="%UPSTREAM_METADATA(meshline:dataplane)%",
        )
    else:
        f.update(
            destinationVersion=info.destination_version,
            destinationZone=info.destination_zone,
            destinationInstance=info.destination_instance,
            dataplane=info.destination_instance,
        )
    if info.protocol == "http":
        f.update(
            method="%REQ(:METHOD)%",
            path="%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
            authority="%REQ(:AUTHORITY)%",
            status="%RESPONSE_CODE%",
            grpcStatus="%GRPC_STATUS_NUMBER%",
            details="%RESPONSE_CODE_DETAILS%",
            traceId="%TRACE_ID%",
            requestId="%REQ(X-REQUEST-ID)%",
            route="%ROUTE_NAME%",
            routePolicies="%METADATA(ROUTE:meshline:policies)%",
            routeTimeoutMs="%METADATA(ROUTE:meshline:timeoutMs)%",
            attempts="%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
        )
        if info.direction == "inbound":
            f["source"] = "%REQ(X-MESHLINE-SOURCE)%"
    else:
        f["details"] = "%CONNECTION_TERMINATION_DETAILS%"
    return {k: v for k, v in f.items() if v != ""}


def log_path(template: str, mesh: str, service: str) -> str:
    return template.replace("{mesh}", mesh).replace("{service}", service or "unknown")


def file_access_log(template: str, info: SectionInfo) -> accesslog_pb2.AccessLog:
    fmt = struct_pb2.Struct()
    fmt.update(_json_fields(info))
    cfg = file_pb2.FileAccessLog(
        path=log_path(template, info.mesh, info.service),
        log_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=fmt),
    )
    return accesslog_pb2.AccessLog(name="envoy.access_loggers.file", typed_config=envoy.packed(cfg))


def _provider(info: SectionInfo, settings: MeshTracing) -> http_tracer_pb2.Tracing.Http:
    if settings.zipkin:
        # B3 in (W3C as fallback), both out; client and server spans each get their own id.
        zipkin = zipkin_pb2.ZipkinConfig(
            collector_cluster=names.TRACING_CLUSTER,
            collector_endpoint=ZIPKIN_PATH,
            collector_endpoint_version=zipkin_pb2.ZipkinConfig.HTTP_JSON,
            collector_hostname=settings.zipkin.rpartition(":")[0].strip("[]"),
            trace_id_128bit=True,
            shared_span_context=wrappers_pb2.BoolValue(value=False),
            trace_context_option=zipkin_pb2.ZipkinConfig.USE_B3_WITH_W3C_PROPAGATION,
        )
        return http_tracer_pb2.Tracing.Http(name="envoy.tracers.zipkin", typed_config=envoy.packed(zipkin))
    # OTLP/gRPC; Envoy 1.40's OpenTelemetry tracer reads and writes W3C traceparent only.
    grpc = grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=names.TRACING_CLUSTER)
    )
    grpc.timeout.FromMilliseconds(COLLECTOR_CALL_TIMEOUT_MS)
    otel = opentelemetry_pb2.OpenTelemetryConfig(grpc_service=grpc, service_name=info.service,
                                                 sampler=otel_sampler(settings.sampling))
    return http_tracer_pb2.Tracing.Http(name="envoy.tracers.opentelemetry", typed_config=envoy.packed(otel))


def otel_sampler(sampling: float) -> extension_pb2.TypedExtensionConfig:
    """Parent-based: a request with a trace context keeps its caller's decision (sampled or
    not); one without gets a new trace at ``sampling`` percent (by trace id, so every sidecar
    it passes agrees).

    Without a sampler, Envoy 1.40's OpenTelemetry tracer applies the connection manager's own
    random decision to every request, sampled contexts included: at ``sampling: 10`` it
    dropped 9 in 10 incoming ``-01`` traces and rewrote their flag to ``-00``. So the
    connection manager samples everything (:func:`tracing`) and this sampler decides. The
    Zipkin tracer reads the caller's decision itself (B3 or W3C), so it needs no sampler."""
    ratio = trace_id_ratio_based_sampler_pb2.TraceIdRatioBasedSamplerConfig(
        sampling_percentage=percent_pb2.FractionalPercent(
            numerator=round(sampling * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
        )
    )
    parent = parent_based_sampler_pb2.ParentBasedSamplerConfig(
        wrapped_sampler=extension_pb2.TypedExtensionConfig(
            name="envoy.tracers.opentelemetry.samplers.trace_id_ratio_based", typed_config=envoy.packed(ratio)
        )
    )
    return extension_pb2.TypedExtensionConfig(
        name="envoy.tracers.opentelemetry.samplers.parent_based", typed_config=envoy.packed(parent)
    )


def tracing(info: SectionInfo, settings: MeshTracing) -> hcm_pb2.HttpConnectionManager.Tracing:
    """Spans for every request through this listener, tagged with who and what.

    Inbound, who called comes from the caller's verified certificate, never from a header a
    caller can write; the header is kept apart as ``meshline.source_claimed``."""
    peer = (
        [literal(t.S_PEER, info.destination)]
        if info.direction == "outbound"
        else [custom_tag_pb2.CustomTag(tag=t.S_PEER, value=t.PEER_IDENTITY),
              header(t.S_SOURCE_CLAIMED, t.SOURCE_HEADER)]
    )
    tags = [
        literal(t.S_SERVICE, info.service),
        literal(t.S_VERSION, info.version),
        literal(t.S_DIRECTION, info.direction),
        *peer,
        metadata(t.S_POLICIES, "cluster", t.META, t.META_POLICIES),
    ]
    return hcm_pb2.HttpConnectionManager.Tracing(
        provider=_provider(info, settings),
        # OTLP: the sampler decides (see otel_sampler); Zipkin: new traces at this rate
        random_sampling=percent_pb2.Percent(value=settings.sampling if settings.zipkin else 100.0),
        custom_tags=[tag for tag in tags if tag.WhichOneof("type") != "literal" or tag.literal.value],
    )


def tracing_cluster(settings: MeshTracing) -> cluster_pb2.Cluster:
    """The collector (gRPC for OTLP, HTTP/1.1 for Zipkin), by DNS unless an IP, short connect timeout."""
    host, _, port = settings.collector.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        is_ip = False
    c = envoy.static_cluster(names.TRACING_CLUSTER, host, int(port), "http" if settings.zipkin else "grpc")
    if not is_ip:
        c.type = cluster_pb2.Cluster.STRICT_DNS
        c.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    c.connect_timeout.FromMilliseconds(COLLECTOR_CONNECT_TIMEOUT_MS)
    return c
