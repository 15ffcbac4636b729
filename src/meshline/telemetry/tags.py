"""Names shared by what sidecars are told to log (render) and what the intake reads (convert).

Custom tags are attached by Envoy to every gRPC access-log entry (and to spans); the
metadata keys are what the render step writes into cluster and route metadata under the
``meshline`` filter so logs carry the policies that shaped a request.
"""

from __future__ import annotations

from meshline.xds import names

# Header the caller's sidecar sets on every outbound request: the caller's service.
SOURCE_HEADER = "x-meshline-source"
# set by a caller's sidecar (or gateway) on a request a tap watches: the callee's sidecar
# streams it too, so `explain` has both halves of a watched call whichever end the tap names
WATCH_HEADER = "x-meshline-watch"
DENIED_HEADER = names.DENIED_HEADER  # on the mesh's own denials (see xds.names)
TRACEPARENT = "traceparent"
B3_TRACE_ID = "x-b3-traceid"

# filter_metadata namespace and keys (cluster and route metadata)
META = "meshline"
META_POLICIES = "policies"  # "Timeout/orders-timeouts,Retry/orders-retries"
META_TIMEOUT_MS = "timeoutMs"  # route timeout when the entry was logged ("0": none)
META_PER_TRY_TIMEOUT_MS = "perTryTimeoutMs"
META_SERVICE = "service"  # a gateway's cluster: the mesh service it reaches (its logs' destination)
META_DATAPLANE = "dataplane"  # endpoint metadata the base generator sets

# custom tag names on access-log entries
T_DIRECTION = "meshline.direction"
T_PROTOCOL = "meshline.protocol"
T_SECTION = "meshline.section"
T_SOURCE = "meshline.source"
T_SOURCE_VERSION = "meshline.source_version"
T_SOURCE_HEADER = "meshline.source_header"
T_DESTINATION = "meshline.destination"
T_DESTINATION_VERSION = "meshline.destination_version"
T_DESTINATION_ZONE = "meshline.destination_zone"
T_DESTINATION_INSTANCE = "meshline.destination_instance"
T_TRACEPARENT = "meshline.traceparent"
T_B3 = "meshline.b3"
T_POLICIES = "meshline.policies"
T_ROUTE_POLICIES = "meshline.route_policies"
T_TIMEOUT_MS = "meshline.timeout_ms"
T_PER_TRY_TIMEOUT_MS = "meshline.per_try_timeout_ms"
# "stats": this section's requests are counted from the sidecar's own counters (telemetry.signals)
T_SIGNALS = "meshline.signals"

# span tags (besides Envoy's own: http.status_code, response_flags, upstream_cluster, guid:x-request-id...)
S_SERVICE = "meshline.service"
S_VERSION = "meshline.version"
S_PEER = "meshline.peer"  # outbound: the service called; inbound: the caller's SPIFFE ID (its certificate)
S_SOURCE_CLAIMED = "meshline.source_claimed"  # inbound: x-meshline-source, a claim (plaintext callers)
PEER_IDENTITY = "%DOWNSTREAM_PEER_URI_SAN%"  # Envoy formatter: the verified client certificate's URI SAN
S_DIRECTION = "meshline.direction"
S_POLICIES = "meshline.policies"

# dynamic metadata read from access-log entries
RBAC_HTTP = "envoy.filters.http.rbac"
SHADOW_RESULT = "shadow_engine_result"  # "denied": a dry-run TrafficPermission would have refused it
SHADOW_POLICY = "shadow_effective_policy_id"  # which one (its Envoy RBAC policy name)
CAPTURE_NS = "meshline.record"  # what a TrafficRecording's filter captured (meshline.learn.capture)
CAPTURE_FIRST_KEY = "reqHeaders"  # set in CAPTURE_NS by the capture filter on every request it captures
