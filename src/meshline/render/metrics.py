"""The render step that makes each sidecar count its HTTP traffic with mesh-level labels.

Envoy's own cluster and listener stats are named after Envoy resources, count retried
attempts, and cannot say which version answered. So every HTTP connection manager gets
Envoy's *stats access logger*: once per request, when it ends, it adds 1 to a counter and
records duration and body sizes in histograms, tagged with values Envoy fills in per
request (response code, the version and zone of the endpoint that answered, the caller's
mTLS identity) next to values known here (mesh, this sidecar's service, the destination).

Which side reports what (the ``reporter`` label):

* ``source``: the caller's sidecar, on its outbound listener. It sees every request the
  app made, including those that never reached an instance (no healthy instance,
  connection refused, timeouts), and knows the caller's tags exactly and the answering
  endpoint's version and zone.
* ``destination``: the callee's sidecar, on its inbound listener. It sees every request
  that reached this instance, including callers outside the mesh; it knows its own tags,
  and the caller's service only from its mTLS certificate.

The dataplane agent turns these ``envoy_meshline_*`` stats into the ``meshline_*`` series
it serves (see :mod:`meshline.agent.metrics`). TCP traffic is counted from Envoy's native
tcp_proxy and listener stats, which update while a connection is open.

Not a user policy: :data:`PLUGIN` is added to the reconciler by the control plane.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from google.protobuf import struct_pb2
from xds.type.v3 import typed_struct_pb2

from meshline.core.dataplane import DataplaneSpec
from meshline.core.mesh import MeshSpec
from meshline.core.resource import KindInfo, Resource
from meshline.render import envoy
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.plugins import Plugin
from meshline.render.sections import HttpChain, InboundSection, OutboundSection
from meshline.xds import names
from meshline.xds.stat_names import (  # shared with the agent, which must not load this module
    DESTINATION_SERVICE,
    DESTINATION_VERSION,
    DESTINATION_ZONE,
    DURATION,
    DURATION_FORMAT,
    GRPC_STATUS,
    MESH,
    MESH_DENIED,
    METHOD,
    METHOD_FORMAT,
    PATH,
    PATH_FORMAT,
    PATHS_SCOPE,
    PROTOCOL,
    REPORTER,
    REQUEST_BYTES,
    REQUESTS,
    RESPONSE_BYTES,
    RESPONSE_CODE,
    RESPONSE_FLAGS,
    SCOPE,
    SOURCE_CLAIMED,
    SOURCE_CLAIMED_FORMAT,
    SOURCE_SERVICE,
    SOURCE_VERSION,
    SOURCE_ZONE,
    UPGRADE_DURATION_FORMAT,
)

# A caller outside the mesh (or a plaintext one) cannot make a destination sidecar create
# stats at will: per-request tag values come only from Envoy (codes, endpoint metadata,
# verified certificates), and each listener's stats scope is capped anyway; past the cap new
# label combinations are not counted (traffic is untouched).
MAX_COUNTERS_PER_LISTENER = 1_000
MAX_HISTOGRAMS_PER_LISTENER = 3_000  # three per counter
# Paths come from callers (unbounded): their own scope, as many keys as the control plane keeps.
MAX_PATHS_PER_LISTENER = 500

STATS_LOGGER = "envoy.access_loggers.stats"
CEL_FILTER = "envoy.access_loggers.extension_filters.cel"
UPGRADE, NOT_UPGRADE = "response.code == 101", "response.code != 101"  # which logger counts a request
# Inbound paths count only where the callee's side counts the request: a caller without a
# sidecar (no certificate, no x-meshline-source; telemetry.signals).
FROM_OUTSIDE = f"{NOT_UPGRADE} && !connection.mtls && !('x-meshline-source' in request.headers)"
STATS_LOGGER_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stats.v3.Config"

KIND = KindInfo(
    kind="Metrics",
    plural="metrics",
    spec=MeshSpec,
    summary="Per-request Prometheus stats on every sidecar (not a resource)",
)


def _joined(tag_sets: tuple[Mapping[str, str], ...], name: str) -> str:
    return ",".join(sorted({tags[name] for tags in tag_sets if tags.get(name)}))


def stats_loggers(listener: str, fixed: Mapping[str, str],
                  per_request: Mapping[str, str]) -> tuple[accesslog_pb2.AccessLog, ...]:
    """One counter and three histograms per request, all with the same tags.

    Two loggers, one for ordinary requests and one for WebSocket upgrades (code 101), alike
    but for the duration: a WebSocket's stream never sends a last byte the way a response
    does, so the duration of an ordinary request (to the last byte sent back) has no value for
    it, and Envoy logged ``[error] Stats access logger computed non-number value`` for every
    WebSocket that ended and recorded no latency. An upgrade's latency is the time to its 101
    (the connection's life is not a latency).

    The stats live in a scope shared by name with every later version of ``listener`` (and by
    both loggers): a logger owns its scope, and Envoy frees a scope's stats with it, so
    without a shared scope any change to the listener (a no-op FaultInjection on an inbound) replaced the logger and
    its counters started again from nothing (series gone, then 1). Envoy builds the new
    listener before it drops the old one, so the new logger finds the scope alive: counters
    go on; only an Envoy restart resets them (tests/e2e/test_metrics_prometheus.py).

    The same logger is shared (appending it to an HCM copies it): building one (a Struct) was
    ~15% of the control plane's CPU rendering 5,000 dataplanes."""
    key = (listener, tuple(fixed.items()), tuple(per_request.items()))
    return (_stats_logger(*key, DURATION_FORMAT, NOT_UPGRADE), _stats_logger(*key, UPGRADE_DURATION_FORMAT, UPGRADE))


def _only(expression: str) -> accesslog_pb2.AccessLogFilter:
    """The logger's condition: Envoy's status filter for the upgrade split (a CEL expression
    cost about 5 us of Envoy CPU per request and logger, benchmarks/RESULTS.md), CEL otherwise."""
    if expression in (UPGRADE, NOT_UPGRADE):
        op = accesslog_pb2.ComparisonFilter.EQ if expression == UPGRADE else accesslog_pb2.ComparisonFilter.NE
        return accesslog_pb2.AccessLogFilter(status_code_filter=accesslog_pb2.StatusCodeFilter(
            comparison=accesslog_pb2.ComparisonFilter(op=op, value=base_pb2.RuntimeUInt32(default_value=101))))
    return accesslog_pb2.AccessLogFilter(extension_filter=accesslog_pb2.ExtensionFilter(
        name=CEL_FILTER, typed_config=envoy.packed(cel_pb2.ExpressionFilter(expression=expression))))


@functools.lru_cache(maxsize=4096)
def paths_logger(listener: str, fixed: tuple[tuple[str, str], ...], per_request: tuple[tuple[str, str], ...],
                 only: str) -> accesslog_pb2.AccessLog:
    """Requests and their latency per method and path (``meshline top``), counted on the side
    that counts the request (``only``: a CEL condition), in a scope of their own capped at
    :data:`MAX_PATHS_PER_LISTENER` label sets. WebSocket upgrades are left out (their
    duration has no end, see :func:`stats_loggers`)."""
    tags = [{"name": k, "value_format": v} for k, v in fixed if v]
    tags += [{"name": METHOD, "value_format": METHOD_FORMAT}, {"name": PATH, "value_format": PATH_FORMAT}]
    tags += [{"name": k, "value_format": v} for k, v in per_request]
    value = {
        "counters": [{"stat": {"name": REQUESTS, "tags": tags}, "value_fixed": "1"}],
        "histograms": [{"stat": {"name": DURATION, "tags": tags}, "unit": "Microseconds",
                        "value_format": DURATION_FORMAT}],
        "stats_scope": {"prefix": PATHS_SCOPE, "sharing_name": f"{PATHS_SCOPE}.{listener}",
                        "max_counters": MAX_PATHS_PER_LISTENER, "max_histograms": MAX_PATHS_PER_LISTENER},
    }
    struct = struct_pb2.Struct()
    struct.update(value)
    typed = typed_struct_pb2.TypedStruct(type_url=STATS_LOGGER_TYPE, value=struct)
    return accesslog_pb2.AccessLog(name=STATS_LOGGER, filter=_only(only), typed_config=envoy.packed(typed))


def _path_outcome(protocol: str) -> tuple[tuple[str, str], ...]:
    """What a path's row needs to tell a success from a failure or a denial."""
    out = [(RESPONSE_CODE, "%RESPONSE_CODE%"), (MESH_DENIED, f"%RESP({names.DENIED_HEADER})%")]
    if protocol == "grpc":
        out.append((GRPC_STATUS, "%GRPC_STATUS_NUMBER%"))
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _stats_logger(listener: str, fixed: tuple[tuple[str, str], ...], per_request: tuple[tuple[str, str], ...],
                  duration_format: str, only: str) -> accesslog_pb2.AccessLog:
    tags = [{"name": k, "value_format": v} for k, v in fixed if v] + [
        {"name": k, "value_format": v} for k, v in per_request
    ]

    def histogram(name: str, unit: str, value_format: str) -> dict[str, Any]:
        return {"stat": {"name": name, "tags": tags}, "unit": unit, "value_format": value_format}

    # The JSON form of stats.v3.Config, written directly (building the message and converting
    # it with json_format cost ~3x more). Envoy 1.40 deprecates stat_prefix for stats_scope
    # (prefix and limits), which the xds-protos package does not have yet: the config travels
    # as a TypedStruct, and Envoy decodes it with its own descriptors.
    value = {
        "counters": [{"stat": {"name": REQUESTS, "tags": tags}, "value_fixed": "1"}],
        "histograms": [
            histogram(DURATION, "Microseconds", duration_format),
            histogram(REQUEST_BYTES, "Bytes", "%BYTES_RECEIVED%"),
            histogram(RESPONSE_BYTES, "Bytes", "%BYTES_SENT%"),
        ],
        "stats_scope": {
            "prefix": SCOPE,
            "sharing_name": f"{SCOPE}.{listener}",  # see stats_loggers
            "max_counters": MAX_COUNTERS_PER_LISTENER,
            "max_histograms": MAX_HISTOGRAMS_PER_LISTENER,
        },
    }
    struct = struct_pb2.Struct()
    struct.update(value)
    typed = typed_struct_pb2.TypedStruct(type_url=STATS_LOGGER_TYPE, value=struct)
    return accesslog_pb2.AccessLog(name=STATS_LOGGER, filter=_only(only), typed_config=envoy.packed(typed))


def _per_request(protocol: str) -> dict[str, str]:
    # MESH_DENIED: the policy that denied (the inbound's denial header); the agent turns it
    # into response_code_class="denied", so a denial is neither a success nor an app's 4xx.
    out = {RESPONSE_CODE: "%RESPONSE_CODE%", MESH_DENIED: f"%RESP({names.DENIED_HEADER})%",
           RESPONSE_FLAGS: "%RESPONSE_FLAGS%"}
    if protocol == "grpc":
        out[GRPC_STATUS] = "%GRPC_STATUS_NUMBER%"
    return out


def outbound_logger(listener: str, mesh: str, source_tags: tuple[Mapping[str, str], ...], service: str,
                    protocol: str) -> tuple[accesslog_pb2.AccessLog, ...]:
    fixed = {
        REPORTER: "source",
        MESH: mesh,
        SOURCE_SERVICE: _joined(source_tags, "service"),
        SOURCE_VERSION: _joined(source_tags, "version"),
        SOURCE_ZONE: _joined(source_tags, "zone"),
        DESTINATION_SERVICE: service,
        PROTOCOL: protocol,
    }
    per_request = {
        # the endpoint that answered (tags the base generator puts in endpoint metadata)
        DESTINATION_VERSION: "%UPSTREAM_METADATA(envoy.lb:version)%",
        DESTINATION_ZONE: "%UPSTREAM_METADATA(envoy.lb:zone)%",
        **_per_request(protocol),
    }
    return (*stats_loggers(listener, fixed, per_request),
            paths_logger(listener, ((REPORTER, "source"), (SOURCE_SERVICE, fixed[SOURCE_SERVICE]),
                                    (DESTINATION_SERVICE, service)), _path_outcome(protocol), NOT_UPGRADE))


def inbound_logger(listener: str, mesh: str, tags: Mapping[str, str],
                   protocol: str, strict: bool = False) -> tuple[accesslog_pb2.AccessLog, ...]:
    """``strict``: every caller has a mesh certificate, so none is from outside the mesh and
    the paths logger (FROM_OUTSIDE) would never count: it is left out."""
    fixed = {
        REPORTER: "destination",
        MESH: mesh,
        DESTINATION_SERVICE: tags.get("service", ""),
        DESTINATION_VERSION: tags.get("version", ""),
        DESTINATION_ZONE: tags.get("zone", ""),
        PROTOCOL: protocol,
    }
    # The caller's verified SPIFFE identity (empty without mTLS); the agent keeps its service.
    # The claim tells a meshed plaintext caller from one outside the mesh (telemetry.signals).
    per_request = {SOURCE_SERVICE: "%DOWNSTREAM_PEER_URI_SAN%", **_per_request(protocol),
                   SOURCE_CLAIMED: SOURCE_CLAIMED_FORMAT}
    if strict:
        return stats_loggers(listener, fixed, per_request)
    return (*stats_loggers(listener, fixed, per_request),
            paths_logger(listener, ((REPORTER, "destination"), (DESTINATION_SERVICE, tags.get("service", ""))),
                         _path_outcome(protocol), FROM_OUTSIDE))


def _add(chain: HttpChain | None, loggers: tuple[accesslog_pb2.AccessLog, ...]) -> None:
    if chain is not None:
        chain.hcm.access_log.extend(loggers)


def configure_outbound(section: OutboundSection, mesh: MeshSnapshot) -> None:
    loggers = outbound_logger(section.listener.name, mesh.name, section.source_tags, section.service, section.protocol)
    _add(section.http, loggers)


def configure_inbound(section: InboundSection, dataplane: Resource, mesh: MeshSnapshot) -> None:
    assert isinstance(dataplane.spec, DataplaneSpec)
    if section.section_id.proxy == "gateway" and section.inbound is not None:
        # the gateway reports its calls into the mesh, to the service each route reached
        loggers = outbound_logger(section.listener.name, mesh.name, (section.inbound.tags,),
                                  names.CLUSTER_SERVICE_FORMAT, "http")  # fmt: skip
        _add(section.http, loggers)
        return
    if section.inbound is not None:
        inbound = section.inbound
        _add(section.http, inbound_logger(section.listener.name, mesh.name, inbound.tags, inbound.protocol,
                                          strict=mesh.spec.mtls.mode == "strict"))  # fmt: skip


# on_gateway: a gateway counts what enters through it (reporter destination, service = the gateway)
PLUGIN = Plugin(kind=KIND, outbound=configure_outbound, inbound=configure_inbound, on_gateway=True)
