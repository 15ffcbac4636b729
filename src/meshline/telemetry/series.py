"""Golden signals over time, without Prometheus: what the dashboard's charts draw.

Each key (a service, a version of a service, an edge) keeps a ring of :data:`BUCKETS`
buckets of :data:`STEP_S` seconds (10 s for the last hour): a request count, failures,
denials and a sparse latency histogram (the buckets of :mod:`.window`, 4 % wide), so a point
gives requests/s, success rate and p50/p95/p99 the same way ``meshline stat`` does.

Bounded like the rest of the intake: at most ``keys`` keys per mesh and ``cells`` buckets
plus histogram cells in all of them (measured: about 150 bytes a cell, so the default 600,000
is about 90 MB per mesh at most; a full hour of one key with one latency bucket per 10 s is
720 cells, so 200 services with 400 edges fit); past either bound the least recently updated
key goes first. An idle key
costs nothing once its buckets age out of the hour. Counted requests only (see
:func:`.record.is_counted`), so a chart's points add up to what ``stat`` counted.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from meshline.telemetry.record import LogRecord
from meshline.telemetry.window import _percentile, bucket_of

STEP_S = 10
BUCKETS = 360  # 10 s x 360 = 1 h
SPANS = {"5m": 300, "15m": 900, "1h": 3600}

# ("service", name) | ("version", service, version) | ("edge", source, destination)
SeriesKey = tuple[str, ...]


@dataclass(frozen=True)
class SeriesLimits:
    keys: int = 2_000
    cells: int = 600_000  # about 90 MB at most (benchmarks/RESULTS.md, dashboard refresh)


@dataclass(slots=True)
class _Bucket:
    start: int  # Unix seconds, a multiple of STEP_S
    count: int = 0
    failures: int = 0
    denied: int = 0
    hist: dict[int, int] = field(default_factory=dict)
    lo: float = math.inf
    hi: float = 0.0
    cached: dict[str, Any] | None = None  # point(), until the next request counted in it
    cached_json: str | None = None  # point() as JSON, likewise

    def point(self) -> dict[str, Any]:
        """The bucket's figures; computed once per change (a page asks for the same hour every 2 s
        and only the newest bucket moves)."""
        if self.cached is None:
            self.cached = self._point()
        return self.cached

    def point_json(self) -> str:
        if self.cached_json is None:
            self.cached_json = _dumps(self.point())
        return self.cached_json

    def _point(self) -> dict[str, Any]:
        ok = self.count - self.failures - self.denied
        return {
            "t": self.start,
            "requests": self.count,
            "failures": self.failures,
            "denied": self.denied,
            "rps": round(self.count / STEP_S, 3),
            "successRate": round(ok / self.count, 5) if self.count else None,
            "p50": _percentile(self.hist, sum(self.hist.values()), 0.50, self.lo, self.hi),
            "p95": _percentile(self.hist, sum(self.hist.values()), 0.95, self.lo, self.hi),
            "p99": _percentile(self.hist, sum(self.hist.values()), 0.99, self.lo, self.hi),
        }


class Series:
    """One key's ring: slot ``(start // STEP_S) % BUCKETS`` holds the bucket starting at ``start``
    (a slot holding an older bucket is reused)."""

    def __init__(self) -> None:
        self.ring: list[_Bucket | None] = [None] * BUCKETS
        self.cells = 0
        self.touched = 0

    def add(self, at: float, failed: bool, denied: bool, latency_ms: float) -> int:
        """Count one request; returns the change in cells."""
        start = int(at) // STEP_S * STEP_S
        slot = (start // STEP_S) % BUCKETS
        b = self.ring[slot]
        before = self.cells
        if b is None or b.start != start:
            if b is not None and b.start > start:
                return 0  # older than the hour this slot now holds: nothing to add it to
            if b is not None:
                self.cells -= 1 + len(b.hist)
            b = self.ring[slot] = _Bucket(start)
            self.cells += 1
        failed = failed and not denied
        b.cached = b.cached_json = None
        b.count += 1
        b.failures += failed
        b.denied += denied
        idx = bucket_of(latency_ms)
        seen = b.hist.get(idx, 0)
        self.cells += not seen
        b.hist[idx] = seen + 1
        b.lo, b.hi = min(b.lo, latency_ms), max(b.hi, latency_ms)
        return self.cells - before

    def add_many(self, at: float, count: int, failures: int, denied: int, hist: dict[int, int],
                 lo: float, hi: float) -> int:
        """Count ``count`` requests at once (a sidecar's counters, see :mod:`.signals`);
        ``failures`` exclude ``denied``. Returns the change in cells."""
        start = int(at) // STEP_S * STEP_S
        slot = (start // STEP_S) % BUCKETS
        b = self.ring[slot]
        before = self.cells
        if b is None or b.start != start:
            if b is not None and b.start > start:
                return 0
            if b is not None:
                self.cells -= 1 + len(b.hist)
            b = self.ring[slot] = _Bucket(start)
            self.cells += 1
        b.cached = b.cached_json = None
        b.count += count
        b.failures += failures
        b.denied += denied
        for idx, n in hist.items():
            seen = b.hist.get(idx, 0)
            self.cells += not seen
            b.hist[idx] = seen + n
        if hist:
            b.lo, b.hi = min(b.lo, lo), max(b.hi, hi)
        return self.cells - before

    def points(self, now: float, seconds: int) -> list[dict[str, Any]]:
        """One point per bucket from ``seconds`` ago up to the bucket holding ``now``, oldest
        first; a bucket without requests is a point with ``requests: 0``."""
        last = int(now) // STEP_S * STEP_S
        out = []
        for start in range(last - (seconds // STEP_S - 1) * STEP_S, last + 1, STEP_S):
            b = self.ring[(start // STEP_S) % BUCKETS]
            out.append(b.point() if b is not None and b.start == start else _Bucket(start).point())
        return out


    def points_json(self, now: float, seconds: int) -> str:
        """``points()`` as JSON text, each bucket encoded once per change."""
        last = int(now) // STEP_S * STEP_S
        out = []
        for start in range(last - (seconds // STEP_S - 1) * STEP_S, last + 1, STEP_S):
            b = self.ring[(start // STEP_S) % BUCKETS]
            out.append(b.point_json() if b is not None and b.start == start else f'{{"t":{start}{_EMPTY_TAIL}')
        return "[" + ",".join(out) + "]"


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # json.dumps(separators=) makes one per call


def _dumps(data: Any) -> str:
    return _COMPACT.encode(data)


_EMPTY_TAIL = _dumps(_Bucket(0).point())[len('{"t":0'):]  # an empty bucket's point after its "t"


class MeshSeries:
    def __init__(self, limits: SeriesLimits) -> None:
        self.limits = limits
        self.keys: OrderedDict[SeriesKey, Series] = OrderedDict()  # least recently updated first
        self.cells = 0
        self.evicted = 0
        self._stamp = itertools.count()

    def count(self, r: LogRecord) -> None:
        failed, denied = r.failed, r.denied
        for key in self._keys(r.destination, r.edge, r.destination_version):
            s = self._take(key)
            self.cells += s.add(r.time, failed, denied, r.duration_ms)
        self._evict()

    def count_many(self, destination: str, edge: tuple[str, str], version: str, at: float, count: int,
                   failures: int, denied: int, hist: dict[int, int], lo: float, hi: float) -> None:
        """Requests a sidecar's counters reported at once (see :mod:`.signals`)."""
        for key in self._keys(destination, edge, version):
            self.cells += self._take(key).add_many(at, count, failures, denied, hist, lo, hi)
        self._evict()

    @staticmethod
    def _keys(destination: str, edge: tuple[str, str], version: str) -> list[SeriesKey]:
        keys: list[SeriesKey] = [("service", destination), ("edge", *edge)]
        if version:
            keys.append(("version", destination, version))
        return keys

    def _take(self, key: SeriesKey) -> Series:
        s = self.keys.pop(key, None) or Series()
        self.keys[key] = s
        s.touched = next(self._stamp)
        return s

    def _evict(self) -> None:
        while self.keys and (len(self.keys) > self.limits.keys or self.cells > self.limits.cells):
            _, old = self.keys.popitem(last=False)
            self.cells -= old.cells
            self.evicted += 1

    def service_json(self, service: str, now: float, seconds: int) -> dict[str, str]:
        """:meth:`service` with each value as its JSON text (``versions`` etc. as objects), for
        a response assembled without encoding an hour of points again every 2 s."""
        def pts(key: SeriesKey) -> str:
            s = self.keys.get(key)
            return s.points_json(now, seconds) if s is not None else "null"

        def obj(items: dict[str, str]) -> str:
            return "{" + ",".join(f"{_dumps(k)}:{v}" for k, v in sorted(items.items())) + "}"

        own = self.keys.get(("service", service)) or Series()
        return {
            "service": own.points_json(now, seconds),
            "versions": obj({k[2]: pts(k) for k in list(self.keys) if k[0] == "version" and k[1] == service}),
            "inbound": obj({k[1]: pts(k) for k in list(self.keys) if k[0] == "edge" and k[2] == service}),
            "outbound": obj({k[2]: pts(k) for k in list(self.keys) if k[0] == "edge" and k[1] == service}),
        }

    def service(self, service: str, now: float, seconds: int) -> dict[str, Any]:
        """A service's points, each version's, and each edge into and out of it."""
        def pts(key: SeriesKey) -> list[dict[str, Any]] | None:
            s = self.keys.get(key)
            return s.points(now, seconds) if s is not None else None

        versions = {k[2]: pts(k) for k in list(self.keys) if k[0] == "version" and k[1] == service}
        inbound = {k[1]: pts(k) for k in list(self.keys) if k[0] == "edge" and k[2] == service}
        outbound = {k[2]: pts(k) for k in list(self.keys) if k[0] == "edge" and k[1] == service}
        return {
            "service": pts(("service", service)) or Series().points(now, seconds),
            "versions": dict(sorted(versions.items())),
            "inbound": dict(sorted(inbound.items())),
            "outbound": dict(sorted(outbound.items())),
        }
