"""Replay a recording against a target and say, per endpoint, what differs from the recording.

An endpoint is a method and a path without its query string, id-like segments as ``{id}``
(:func:`endpoint_path`). For each one:

* **status**: how many replayed answers had another status than the recorded one;
* **headers**: the selected response headers (``content-type`` by default) that differed;
* **body**: exact bytes, or, when both bodies are JSON, the structure and values with ignorable
  fields (timestamps, request and trace ids: :data:`DEFAULT_IGNORED`, any depth) left out; a
  recorded body cut at the recording's cap is compared on its kept bytes only;
* **latency**: p50/p95/p99 of the recording (the sidecar's duration) and of the replay
  (the replayer's own measure, send to last byte) side by side.

Requests go out as recorded, minus what only made sense on the original hop: hop-by-hop and
mesh headers (``x-forwarded-client-cert``, ``x-request-id``, ``x-envoy-*``, ``host``) and the
redacted ones (their value was never recorded; ``-H`` gives replacements).
"""

from __future__ import annotations

import datetime
import json
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from meshline.learn.har import body_bytes

DEFAULT_IGNORED = frozenset({"timestamp", "time", "date", "ts", "now", "requestId", "request_id",
                             "traceId", "trace_id", "spanId", "span_id", "uuid"})
REDACTED = "[redacted]"
DROPPED = frozenset({"host", "connection", "keep-alive", "transfer-encoding", "content-length", "te", "upgrade",
                     "x-forwarded-client-cert", "x-forwarded-proto", "x-forwarded-for", "x-request-id",
                     "x-meshline-source", "traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid",
                     "x-b3-parentspanid", "x-b3-sampled"})


_ID_SEGMENT = re.compile(r"^(?:[0-9]+|[0-9a-fA-F-]{8,})$")


def endpoint_path(path: str) -> str:
    """The path without its query, each segment that looks like an id (digits, a UUID, a long
    hex string) as ``{id}``: ``/items/42?x=1`` is the endpoint ``/items/{id}``."""
    parts = path.split("?", 1)[0].split("/")
    return "/".join("{id}" if p and _ID_SEGMENT.match(p) and any(c.isdigit() for c in p) else p for p in parts)


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    status: int
    response_headers: Mapping[str, str]
    response_body: bytes
    response_cut: bool  # the recording kept only the first bytes of the answer
    latency_ms: float
    started: float  # Unix seconds

    @property
    def endpoint(self) -> str:
        return f"{self.method} {endpoint_path(self.path)}"


def _text(part: Mapping[str, Any]) -> bytes:
    """A HAR body: base64 when ``encoding`` says so (Meshline's), else the text itself (other tools')."""
    text = str(part.get("text", ""))
    return body_bytes(text) if part.get("encoding") == "base64" else text.encode()


def from_har(har: Mapping[str, Any]) -> list[Recorded]:
    """Requests of a HAR file, oldest first (Meshline's own or another tool's)."""
    out = []
    for e in har["log"]["entries"]:
        req, resp = e["request"], e["response"]
        url = httpx.URL(req["url"])
        path = url.raw_path.decode() or "/"
        resp_body = _text(resp.get("content", {}))
        started = e["startedDateTime"].replace("Z", "+00:00")
        out.append(Recorded(
            method=req["method"], path=path,
            headers={h["name"]: h["value"] for h in req.get("headers", [])},
            body=_text(req.get("postData", {})),
            status=int(resp.get("status", 0)),
            response_headers={h["name"].lower(): h["value"] for h in resp.get("headers", [])},
            response_body=resp_body,
            response_cut=len(resp_body) < int(resp.get("content", {}).get("size", 0) or 0),
            latency_ms=float(e.get("time", 0.0)),
            started=datetime.datetime.fromisoformat(started).timestamp(),
        ))  # fmt: skip
    return sorted(out, key=lambda r: r.started)


@dataclass(frozen=True)
class Replayed:
    status: int
    headers: Mapping[str, str]
    body: bytes
    latency_ms: float
    error: str = ""


def outgoing_headers(r: Recorded, extra: Mapping[str, str]) -> dict[str, str]:
    out = {k: v for k, v in r.headers.items()
           if k.lower() not in DROPPED and not k.lower().startswith("x-envoy-") and v != REDACTED}
    out.update(extra)
    return out


def send(client: httpx.Client, base: str, r: Recorded, extra: Mapping[str, str]) -> Replayed:
    start = time.perf_counter()
    try:
        resp = client.request(r.method, base.rstrip("/") + r.path, headers=outgoing_headers(r, extra),
                              content=r.body or None)
    except httpx.HTTPError as err:
        return Replayed(0, {}, b"", (time.perf_counter() - start) * 1000, f"{type(err).__name__}: {err}")
    return Replayed(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content,
                    (time.perf_counter() - start) * 1000)


def replay(recorded: Sequence[Recorded], base: str, *, rate: str = "max", extra: Mapping[str, str] | None = None,
           timeout: float = 30.0, client: httpx.Client | None = None) -> list[Replayed]:
    """Send every request in recorded order: ``rate`` x1 keeps the recorded spacing, max sends
    each as soon as the previous answered."""
    own = client is None
    http = client or httpx.Client(timeout=timeout)
    out = []
    try:
        t0, first = time.monotonic(), (recorded[0].started if recorded else 0.0)
        for r in recorded:
            if rate == "x1":
                wait = (r.started - first) - (time.monotonic() - t0)
                if wait > 0:
                    time.sleep(wait)  # the recording's own pacing (x1), not a wait for an event
            out.append(send(http, base, r, extra or {}))
    finally:
        if own:
            http.close()
    return out


# -- differences -------------------------------------------------------------------------


def _strip(value: Any, ignored: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v, ignored) for k, v in value.items() if k not in ignored}
    if isinstance(value, list):
        return [_strip(v, ignored) for v in value]
    return value


def _first_difference(a: Any, b: Any, where: str = "$") -> str:
    if type(a) is not type(b):
        return f"{where}: {type(a).__name__} -> {type(b).__name__}"
    if isinstance(a, dict):
        for k in sorted(a.keys() | b.keys()):
            if k not in b:
                return f"{where}.{k}: missing"
            if k not in a:
                return f"{where}.{k}: new"
            if a[k] != b[k]:
                return _first_difference(a[k], b[k], f"{where}.{k}")
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} items -> {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{where}[{i}]")
    return f"{where}: {json.dumps(a)[:60]} -> {json.dumps(b)[:60]}"


def body_difference(r: Recorded, got: bytes, ignored: frozenset[str], mode: str = "json") -> str:
    """'' when the bodies agree, else a short description of the first difference."""
    if r.response_cut:
        return "" if got[: len(r.response_body)] == r.response_body else "differs within the recorded bytes"
    if mode == "json":
        try:
            a, b = json.loads(r.response_body or b"null"), json.loads(got or b"null")
        except ValueError:
            pass
        else:
            a, b = _strip(a, ignored), _strip(b, ignored)
            return "" if a == b else _first_difference(a, b)
    if r.response_body == got:
        return ""
    return f"{len(r.response_body)} bytes -> {len(got)} bytes, not equal"


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class EndpointReport:
    endpoint: str
    requests: int = 0
    status: dict[str, int] = field(default_factory=dict)  # "200 -> 500": count
    headers: dict[str, int] = field(default_factory=dict)  # "content-type": count
    bodies: int = 0
    body_example: str = ""
    errors: int = 0
    recorded_ms: list[float] = field(default_factory=list)
    replayed_ms: list[float] = field(default_factory=list)

    @property
    def differs(self) -> bool:
        return bool(self.status or self.headers or self.bodies or self.errors)

    def to_json(self) -> dict[str, Any]:
        def lat(values: list[float]) -> dict[str, float | None]:
            return {f"p{int(q * 100)}": percentile(values, q) for q in (0.5, 0.95, 0.99)}

        return {"endpoint": self.endpoint, "requests": self.requests, "differs": self.differs,
                "status": self.status, "headers": self.headers, "bodies": self.bodies,
                "bodyExample": self.body_example, "errors": self.errors,
                "latencyMs": {"recorded": lat(self.recorded_ms), "replayed": lat(self.replayed_ms)}}


def compare(recorded: Sequence[Recorded], replayed: Sequence[Replayed], *,
            headers: Iterable[str] = ("content-type",), ignored: frozenset[str] = DEFAULT_IGNORED,
            body: str = "json") -> list[EndpointReport]:
    """Per endpoint (sorted), what differed between each recorded answer and its replay."""
    wanted = [h.lower() for h in headers]
    out: dict[str, EndpointReport] = {}
    for r, got in zip(recorded, replayed, strict=True):
        rep = out.setdefault(r.endpoint, EndpointReport(r.endpoint))
        rep.requests += 1
        rep.recorded_ms.append(r.latency_ms)
        rep.replayed_ms.append(got.latency_ms)
        if got.error:
            rep.errors += 1
            rep.body_example = rep.body_example or got.error
            continue
        if got.status != r.status:
            key = f"{r.status} -> {got.status}"
            rep.status[key] = rep.status.get(key, 0) + 1
        for h in wanted:
            if r.response_headers.get(h) != got.headers.get(h):
                rep.headers[h] = rep.headers.get(h, 0) + 1
        diff = body_difference(r, got.body, ignored, body) if body != "none" else ""
        if diff:
            rep.bodies += 1
            rep.body_example = rep.body_example or diff
    return [out[k] for k in sorted(out)]
