"""Names of the per-request stats every sidecar keeps (the ``meshline`` stat scope).

The render step that configures them (:mod:`meshline.render.metrics`) and the agent that
serves them as ``meshline_*`` series (:mod:`meshline.agent.metrics`) both need these names;
they live here, below both, so the agent does not load the renderer. Like resource names,
they end up in users' dashboards: renaming one is a breaking change.
"""

from __future__ import annotations

# Envoy stat scope of the logger: Envoy's own Prometheus output shows envoy_meshline_<stat>.
SCOPE = "meshline"
REQUESTS = "requests"
DURATION = "request_duration"  # microseconds
# First byte received from the downstream to last byte sent back. Microseconds: requests
# inside a mesh often take well under a millisecond (%DURATION% counts whole milliseconds).
# A request the caller abandoned mid-response has no end and is left out of the histogram
# (Envoy logs that it could not compute the value); it is still counted in requests.
DURATION_FORMAT = "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)%"
# A WebSocket upgrade (101): to the first byte sent back, its answer (render.metrics.stats_loggers).
UPGRADE_DURATION_FORMAT = "%COMMON_DURATION(DS_RX_BEG:DS_TX_BEG:us)%"
REQUEST_BYTES = "request_bytes"
RESPONSE_BYTES = "response_bytes"
HISTOGRAMS = (DURATION, REQUEST_BYTES, RESPONSE_BYTES)
# The same counter and latency per method and path (query string left out), for `meshline top`,
# in a scope of their own (a flood of paths cannot crowd the requests' stats out of theirs).
# Not exported to Prometheus (paths are unbounded label values); the agent reports them to the
# control plane like the requests' (agent.signals).
PATHS_SCOPE = f"{SCOPE}.paths"
METHOD = "method"
PATH = "path"
METHOD_FORMAT = "%REQ(:METHOD):16%"
PATH_FORMAT = "%PATH(NQ:ORIG_OR_PATH):256%"

# Labels, in the order Envoy tags the stats (the agent adds response_code_class).
REPORTER = "reporter"
MESH = "mesh"
SOURCE_SERVICE = "source_service"
SOURCE_VERSION = "source_version"
SOURCE_ZONE = "source_zone"
DESTINATION_SERVICE = "destination_service"
DESTINATION_VERSION = "destination_version"
DESTINATION_ZONE = "destination_zone"
RESPONSE_CODE = "response_code"
MESH_DENIED = "mesh_denied"  # the policy that denied (the inbound's denial header)
# Envoy's response flags ("UH", "UF,URX"...; "" for none): UH, UF, UO, UT, NC or NR mean the
# caller's sidecar answered itself, no instance did (the "no instance answered" query); a
# version is no such sign: instances without a version tag answer with destination_version="".
RESPONSE_FLAGS = "response_flags"
GRPC_STATUS = "grpc_status"
PROTOCOL = "protocol"
# Inbound only, not a Prometheus label: the caller's x-meshline-source (its sidecar's word,
# cut to 128 characters; "" when the caller has no sidecar). The control plane's golden
# signals need it to tell a meshed plaintext caller (its own sidecar counts the request)
# from one outside the mesh (the callee's sidecar counts it), and name the edge's mTLS.
SOURCE_CLAIMED = "source_claimed"
SOURCE_CLAIMED_FORMAT = "%REQ(X-MESHLINE-SOURCE):128%"


def service_of_identity(value: str) -> str:
    """``spiffe://<trust domain>/<mesh>/<service>`` -> ``<service>`` (several SANs: each)."""
    services = {uri.rstrip("/").rsplit("/", 1)[-1] for uri in value.split(",") if uri.startswith("spiffe://")}
    return ",".join(sorted(services))
