"""Envoy's gRPC access-log entries -> :class:`LogRecord` (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from google.protobuf import json_format, struct_pb2

from meshline.telemetry import tags as t
from meshline.telemetry.explain import FLAGS
from meshline.telemetry.record import EXTERNAL, INBOUND, LogRecord, clip
from meshline.xds import names


def flag_codes(flags: accesslog_pb2.ResponseFlags) -> list[str]:
    out = [f.code for f in FLAGS if f.field != "unauthorized_details" and getattr(flags, f.field, False)]
    if flags.HasField("unauthorized_details"):
        out.append("UAEX")
    return out


def _address(a: address_pb2.Address) -> str:
    if a.HasField("socket_address"):
        sa = a.socket_address
        host = f"[{sa.address}]" if ":" in sa.address else sa.address
        return f"{host}:{sa.port_value}"
    if a.HasField("pipe"):
        return a.pipe.path
    return ""


def trace_id(traceparent: str, b3: str = "") -> str:
    """The trace id of a W3C ``traceparent`` (00-<trace id>-<span id>-<flags>), else of B3."""
    parts = traceparent.split("-")
    if len(parts) >= 4 and len(parts[1]) == 32:
        return parts[1]
    return b3


def _ms(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _spiffe(common: accesslog_pb2.AccessLogCommon) -> str:
    props = common.tls_properties.peer_certificate_properties
    for san in props.subject_alt_name:
        if san.uri:
            return str(san.uri)
    return ""


def _service_of(spiffe: str) -> str:
    # spiffe://<trust domain>/<mesh>/<service>
    return spiffe.rstrip("/").rsplit("/", 1)[-1] if spiffe.startswith("spiffe://") else ""


def _common(
    common: accesslog_pb2.AccessLogCommon, mesh: str, dataplane: str, protocol: str
) -> LogRecord:
    tags: Mapping[str, str] = common.custom_tags
    direction = tags.get(t.T_DIRECTION, "")
    duration = (
        common.duration.ToNanoseconds() / 1e6
        if common.HasField("duration")
        else common.time_to_last_downstream_tx_byte.ToNanoseconds() / 1e6
    )
    # The route names every policy of an HTTP section, its cluster the cluster-level ones (TCP: all).
    named = f"{tags.get(t.T_POLICIES, '')},{tags.get(t.T_ROUTE_POLICIES, '')}".split(",")
    policies = sorted({p for p in named if p})
    r = LogRecord(
        time=common.start_time.ToNanoseconds() / 1e9,
        mesh=mesh,
        dataplane=dataplane,
        direction=direction or "outbound",
        protocol=tags.get(t.T_PROTOCOL, protocol),
        source=tags.get(t.T_SOURCE, ""),
        source_version=tags.get(t.T_SOURCE_VERSION, ""),
        destination=tags.get(t.T_DESTINATION, ""),
        destination_version=tags.get(t.T_DESTINATION_VERSION, ""),
        destination_zone=tags.get(t.T_DESTINATION_ZONE, ""),
        destination_instance=tags.get(t.T_DESTINATION_INSTANCE, ""),
        flags=flag_codes(common.response_flags),
        transport_failure=common.upstream_transport_failure_reason,
        upstream_host=_address(common.upstream_remote_address),
        upstream_cluster=common.upstream_cluster,
        duration_ms=round(duration, 3),
        route=common.route_name,
        policies=policies,
        route_timeout_ms=_ms(tags.get(t.T_TIMEOUT_MS, "")),
        per_try_timeout_ms=_ms(tags.get(t.T_PER_TRY_TIMEOUT_MS, "")),
        attempts=common.upstream_request_attempt_count,
        section=tags.get(t.T_SECTION, ""),
        signals=tags.get(t.T_SIGNALS, "") == "stats",
    )
    if r.section.startswith("gateway/"):  # who outside the mesh made the request
        r.client = _address(common.downstream_remote_address)
    if r.direction == INBOUND:
        r.peer = _spiffe(common)
        r.mtls = bool(r.peer) or bool(common.tls_properties.tls_version)
        # The SPIFFE ID is proof; the header is the caller sidecar's word (used without mTLS).
        r.source = _service_of(r.peer) or tags.get(t.T_SOURCE_HEADER, "") or EXTERNAL
    return r


def from_http(entry: accesslog_pb2.HTTPAccessLogEntry, mesh: str, dataplane: str) -> LogRecord:
    r = _common(entry.common_properties, mesh, dataplane, "http")
    req, resp = entry.request, entry.response
    r.method = _method(req)
    r.path = req.original_path or req.path
    r.authority = req.authority
    r.request_id = req.request_id
    r.status = resp.response_code.value if resp.HasField("response_code") else 0
    r.details = resp.response_code_details
    r.bytes_in = req.request_body_bytes
    r.bytes_out = resp.response_body_bytes
    grpc = resp.response_trailers.get("grpc-status") or resp.response_headers.get("grpc-status")
    r.grpc_status = int(grpc) if grpc and grpc.isdigit() else None
    tags = entry.common_properties.custom_tags
    r.trace_id = trace_id(tags.get(t.T_TRACEPARENT, ""), tags.get(t.T_B3, ""))
    r.denied = bool(resp.response_headers.get(t.DENIED_HEADER)) or r.details.startswith("rbac_access_denied")
    meta = entry.common_properties.metadata.filter_metadata
    if r.direction == INBOUND and t.RBAC_HTTP in meta:
        rbac = meta[t.RBAC_HTTP].fields
        if rbac.get(t.SHADOW_RESULT) is not None and rbac[t.SHADOW_RESULT].string_value == "denied":
            r.shadow_denied_by = rbac[t.SHADOW_POLICY].string_value if t.SHADOW_POLICY in rbac else "?"
    if r.direction == INBOUND and t.CAPTURE_NS in meta:
        r.capture = capture_of(meta[t.CAPTURE_NS])
    return clip(r)


def capture_of(s: struct_pb2.Struct) -> dict[str, Any]:
    """What a TrafficRecording's filter put in the entry (meshline.learn.capture writes it):
    headers already redacted by the sidecar, bodies base64 up to the recording's cap."""
    out: dict[str, Any] = json_format.MessageToDict(s)
    size = 0
    for key in ("reqBody", "respBody"):
        value = out.get(key)
        out[key] = value if isinstance(value, str) else ""
        size += len(out[key])
    for key in ("reqHeaders", "respHeaders"):
        value = out.get(key)
        headers = {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
        out[key] = headers
        size += sum(len(k) + len(v) for k, v in headers.items())
    for key in ("reqBodyBytes", "respBodyBytes"):
        value = out.get(key)
        out[key] = int(value) if isinstance(value, (int, float)) else 0
    out["size"] = size
    return out


def _method(req: accesslog_pb2.HTTPRequestProperties) -> str:
    return base_pb2.RequestMethod.Name(req.request_method) if req.request_method else ""


def from_tcp(entry: accesslog_pb2.TCPAccessLogEntry, mesh: str, dataplane: str) -> LogRecord:
    r = _common(entry.common_properties, mesh, dataplane, "tcp")
    r.protocol = "tcp"
    r.bytes_in = entry.connection_properties.received_bytes
    r.bytes_out = entry.connection_properties.sent_bytes
    r.details = entry.common_properties.connection_termination_details
    if names.blocked_mode(r.section) is not None:
        # where the app was going: the TLS server name it sent, else the original destination
        common = entry.common_properties
        r.authority = common.tls_properties.tls_sni_hostname or _address(common.downstream_local_address)
        r.denied = True  # refused by the mesh itself
    return clip(r)
