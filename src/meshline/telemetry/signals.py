"""Golden signals from the sidecars' own counters: what ``stat``, ``top``, ``edges``, the
dashboard and rollout analysis count, exactly, without an access-log entry per request.

Every sidecar's Envoy counts each HTTP request once, when it ends, in the stats of the
render step's stats access logger (:mod:`meshline.render.metrics`: a counter and a latency
histogram per label set). The dataplane agent reads them from Envoy's admin endpoint every
second and posts what changed since its last accepted post (:mod:`meshline.agent.signals`):
one :class:`SignalRow` per label set, with the number of requests and their latencies by
Envoy's histogram bins. A post that fails is folded into the next one (the agent keeps the
totals the control plane acknowledged), so no request is lost while the control plane is
briefly away, and none is counted twice.

Which side counts is the rule of :func:`meshline.telemetry.record.is_counted`: the caller's
sidecar (``reporter=source``), or the callee's when the caller has no sidecar (no certificate,
no ``x-meshline-source``). The callee's rows also feed the per-version "callee" index
(rollouts) and the edges' mTLS column.

A sidecar's streamed access-log entries carry ``meshline.signals: stats`` (:data:`meshline.telemetry.tags.T_SIGNALS`),
so the intake does not count them a second time; entries without it (a sidecar whose agent
does not report) are counted as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshline.core.errors import FieldProblem, ValidationError
from meshline.telemetry.record import EXTERNAL, GRPC_SERVER_ERRORS, MAX_TEXT
from meshline.xds import stat_names as m
from meshline.xds.stat_names import service_of_identity

MAX_ROWS = 5_000  # label sets in one post (a listener's stats scope holds at most 1,000)
MAX_BINS = 400  # latency bins of one row (Envoy's bins have two significant digits)
MAX_COUNT = 10**12


@dataclass(frozen=True, slots=True)
class SignalRow:
    """Requests of one label set a sidecar counted since its last post."""

    reporter: str  # source (the caller's sidecar) | destination (the callee's)
    source: str  # the caller's service: outbound, the sidecar's own; inbound, its certificate's or claim
    source_version: str
    destination: str
    destination_version: str
    code: int  # HTTP status; 0: no response was sent
    grpc_status: int | None
    denied: bool  # refused by the mesh (a TrafficPermission)
    mtls: bool  # inbound: the caller presented a mesh certificate
    count: int
    latency: tuple[tuple[float, int], ...]  # (bin's upper bound in ms, requests)
    # A row of the per-path scope (``meshline top``): method and path, without query string.
    # Counted only there; the requests' own rows count the services, edges and versions.
    method: str = ""
    path: str | None = None

    @property
    def failed(self) -> bool:
        """:func:`meshline.telemetry.record.is_failure`, from the labels."""
        if self.code == 0 or self.code >= 500:
            return True
        return self.grpc_status is not None and self.grpc_status in GRPC_SERVER_ERRORS

    @property
    def counted(self) -> bool:
        """The side that counts its requests (see :func:`meshline.telemetry.record.is_counted`)."""
        return self.reporter == "source" or self.source in ("", EXTERNAL)

    @property
    def edge(self) -> tuple[str, str]:
        return (self.source or EXTERNAL, self.destination)

    @property
    def own_service(self) -> str:
        """The service this row speaks for: the caller's on the source side, else the callee's."""
        return self.source if self.reporter == "source" else self.destination


def _text(labels: Mapping[str, Any], name: str) -> str:
    value = labels.get(name, "")
    if not isinstance(value, str) or value == "-":
        return ""
    return value[:MAX_TEXT]


def _int(value: Any, path: str, high: int = MAX_COUNT) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise ValidationError([FieldProblem(path, f"must be a whole number from 0 to {high}")])
    return value


def row_from_json(item: Any, path: str) -> SignalRow:
    """One row of a post: ``{"labels": {<Envoy's tags>}, "count": N, "latency": [[upper_ms, n], ...]}``
    (labels of the per-path scope add ``"scope": "paths"``)."""
    if not isinstance(item, dict) or not isinstance(item.get("labels"), dict):
        raise ValidationError([FieldProblem(path, "must be an object with labels, count and latency")])
    labels = item["labels"]
    count = _int(item.get("count", 0), f"{path}.count")
    bins = item.get("latency", [])
    if not isinstance(bins, list) or len(bins) > MAX_BINS:
        raise ValidationError([FieldProblem(f"{path}.latency", f"must be a list of at most {MAX_BINS} [ms, n] pairs")])
    latency = []
    for i, pair in enumerate(bins):
        ok = isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], int | float) \
            and not isinstance(pair[0], bool) and 0 <= pair[0] < 1e9
        if not ok:
            raise ValidationError([FieldProblem(f"{path}.latency[{i}]", "must be [upper bound in ms, requests]")])
        latency.append((float(pair[0]), _int(pair[1], f"{path}.latency[{i}][1]")))
    reporter = _text(labels, m.REPORTER)
    if reporter not in ("source", "destination"):
        raise ValidationError([FieldProblem(f"{path}.labels.{m.REPORTER}", "must be source or destination")])
    code_text, grpc_text = _text(labels, m.RESPONSE_CODE), _text(labels, m.GRPC_STATUS)
    peer = service_of_identity(_text(labels, m.SOURCE_SERVICE)) if reporter == "destination" else ""
    source = _text(labels, m.SOURCE_SERVICE) if reporter == "source" else (
        peer or _text(labels, m.SOURCE_CLAIMED) or EXTERNAL)
    return SignalRow(
        reporter=reporter,
        source=source,
        source_version=_text(labels, m.SOURCE_VERSION),
        destination=_text(labels, m.DESTINATION_SERVICE),
        destination_version=_text(labels, m.DESTINATION_VERSION),
        code=int(code_text) if code_text.isdigit() and len(code_text) <= 3 else 0,
        grpc_status=int(grpc_text) if grpc_text.isdigit() and len(grpc_text) <= 2 else None,
        denied=bool(_text(labels, m.MESH_DENIED)),
        mtls=bool(peer),
        count=count,
        latency=tuple(latency),
        method=_text(labels, m.METHOD),
        path=_text(labels, m.PATH) if labels.get("scope") == "paths" else None,
    )


def rows_from_json(body: Any) -> list[SignalRow]:
    """A post's rows; a bad one refuses the whole post (nothing is counted), naming its field."""
    rows = body.get("rows") if isinstance(body, dict) else None
    if not isinstance(rows, list) or len(rows) > MAX_ROWS:
        raise ValidationError([FieldProblem("rows", f"must be a list of at most {MAX_ROWS} rows")])
    return [row_from_json(item, f"rows[{i}]") for i, item in enumerate(rows)]


def foreign(rows: Iterable[SignalRow], services: frozenset[str]) -> int:
    """How many rows speak for a service the posting dataplane does not serve."""
    return sum(1 for r in rows if not set(r.own_service.split(",")) <= services)
