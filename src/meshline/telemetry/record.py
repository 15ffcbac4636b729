"""One access-log entry, flattened: what a sidecar saw of one request (or TCP connection).

Both sides of a meshed call log it: the caller's sidecar (``outbound``) and the callee's
(``inbound``). Golden signals count each request once per edge (see :func:`is_counted`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

OUTBOUND = "outbound"
INBOUND = "inbound"
# The source of an inbound request whose caller has no sidecar (no SPIFFE ID, no header).
EXTERNAL = "external"

# gRPC codes that mean the server failed (the rest are the caller's problem or normal).
GRPC_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})  # UNKNOWN DEADLINE UNIMPLEMENTED INTERNAL UNAVAILABLE DATA_LOSS
GRPC_CODES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
    15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}


@dataclass(slots=True)
class LogRecord:
    time: float  # request start, Unix seconds
    mesh: str
    dataplane: str  # the sidecar that logged it
    direction: str  # outbound | inbound
    protocol: str = "http"  # http | tcp
    source: str = ""  # calling service ("external" when unknown on the inbound side)
    source_version: str = ""
    destination: str = ""  # called service
    destination_version: str = ""
    destination_zone: str = ""
    destination_instance: str = ""  # dataplane that answered (outbound: from endpoint metadata)
    method: str = ""
    path: str = ""
    authority: str = ""
    status: int = 0  # HTTP status; 0 when no response was sent (or TCP)
    grpc_status: int | None = None
    flags: list[str] = field(default_factory=list)  # Envoy response flags, short codes (UH, UT...)
    details: str = ""  # Envoy's response code details
    transport_failure: str = ""  # why the upstream connection failed (UF)
    upstream_host: str = ""  # ip:port the sidecar sent to
    upstream_cluster: str = ""
    duration_ms: float = 0.0
    bytes_in: int = 0  # request body bytes received from the caller
    bytes_out: int = 0  # response body bytes sent to the caller
    trace_id: str = ""
    request_id: str = ""
    route: str = ""
    policies: list[str] = field(default_factory=list)  # "Kind/name" that shaped this traffic
    route_timeout_ms: float | None = None  # the route's timeout when the request ran (0: none)
    per_try_timeout_ms: float | None = None
    attempts: int = 0  # upstream attempts (1 + retries)
    mtls: bool | None = None  # inbound: did the caller present a mesh certificate
    peer: str = ""  # inbound: the caller's SPIFFE ID
    section: str = ""  # "outbound orders (port 15001)": which part of the sidecar's config
    explanation: str = ""  # plain-words reason of a failure (see telemetry.explain)
    denied: bool = False  # refused by the mesh itself (a TrafficPermission), not by the app
    # inbound: the dry-run TrafficPermission that would have refused it (Envoy's shadow rules)
    shadow_denied_by: str = ""
    # inbound, while a TrafficRecording is on: headers and bodies (see meshline.learn.capture)
    capture: dict[str, Any] | None = None
    client: str = ""  # a gateway's entry: the outside caller's ip:port (it has no mesh identity)
    # Its sidecar counts its requests itself and reports the counters (telemetry.signals):
    # the entry is for taps and explanations, not counted again.
    signals: bool = False

    @property
    def failed(self) -> bool:
        return is_failure(self)

    @property
    def mirrored(self) -> bool:
        """A mirrored copy (an HTTPRoute's ``mirrors``), as the mirror's own sidecar logged it:
        Envoy sends copies with ``-shadow`` appended to the authority's host
        (``127.0.0.1-shadow:15001``), and the caller's side logs only the original, so this is
        the one entry of the copy."""
        host = re.sub(r":\d+$", "", self.authority)
        return self.direction == INBOUND and host.endswith(MIRROR_SUFFIX)

    @property
    def edge(self) -> tuple[str, str]:
        return (self.source or EXTERNAL, self.destination)

    @property
    def succeeded(self) -> bool:
        """The one definition of success (stat, top, edges, dashboard; the Prometheus query in
        docs/observability.md says the same): an answer was sent, not a failure, not a denial."""
        return not self.failed and not self.denied

    def to_json(self) -> dict[str, Any]:
        out = {_camel(k): v for k, v in asdict(self).items()}
        del out["signals"]
        out["failed"] = self.failed
        out["counted"] = is_counted(self)
        out["mirrored"] = self.mirrored
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogRecord:
        names = set(cls.__dataclass_fields__)
        kwargs = {_snake(k): v for k, v in data.items() if _snake(k) in names}
        return cls(**kwargs)


MIRROR_SUFFIX = "-shadow"  # Envoy's mark on the authority of a mirrored request

# What one entry may make the intake keep: its fields come from a sidecar, which may lie.
MAX_TEXT = 1024  # characters of any text field (paths, names, details)
MAX_POLICIES = 32
_TEXT_FIELDS = tuple(f.name for f in fields(LogRecord) if f.type == "str")
_RECORD_BYTES = 600  # a record's own size (slots, numbers) before its texts


def clip(r: LogRecord) -> LogRecord:
    """Cut ``r``'s texts to :data:`MAX_TEXT` and its policies to :data:`MAX_POLICIES` (in place)."""
    for name in _TEXT_FIELDS:
        value = getattr(r, name)
        if len(value) > MAX_TEXT:
            setattr(r, name, value[:MAX_TEXT])
    r.flags = r.flags[:MAX_POLICIES]
    r.policies = [p[:MAX_TEXT] for p in r.policies[:MAX_POLICIES]]
    return r


def record_bytes(r: LogRecord) -> int:
    """About how much memory ``r`` holds (for the intake's byte bounds)."""
    texts = sum(len(getattr(r, name)) for name in _TEXT_FIELDS)
    if r.capture:
        texts += int(r.capture.get("size", 0)) + 1024
    return _RECORD_BYTES + texts + sum(56 + len(p) for p in (*r.flags, *r.policies))


def is_failure(r: LogRecord) -> bool:
    """Failed from the caller's point of view: a 5xx, no response at all, or a gRPC server error."""
    if r.protocol == "tcp":
        return bool(set(r.flags) & TCP_FAILURE_FLAGS)
    if r.status == 0 or r.status >= 500:
        return True
    return r.grpc_status is not None and r.grpc_status in GRPC_SERVER_ERRORS


# Flags that mean a TCP connection did not get through.
TCP_FAILURE_FLAGS = frozenset({"UH", "UF", "UO", "NR", "UT", "NC", "DF", "OM", "UPE", "URX"})


def is_counted(r: LogRecord) -> bool:
    """Whether this entry is the one that counts its request in the golden signals.

    The caller's side (outbound) counts: it sees what the caller got, including failures
    that never reached the callee (no healthy instance, connection refused, timeouts).
    An inbound entry counts only when its caller has no sidecar (source ``external``),
    because then no outbound entry exists. So each request is counted once per edge.
    """
    return r.direction == OUTBOUND or r.source in ("", EXTERNAL)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)
