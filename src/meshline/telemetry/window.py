"""Rolling golden signals: requests, failures and latency percentiles over the last N seconds.

Each key (a service, an edge, a path) keeps one bucket per second for the longest window
(5 minutes): a count, a failure count and a sparse log-scale latency histogram. Memory is
bounded by the number of distinct latencies buckets per second, not by the request rate;
``cells`` counts them (seconds plus histogram cells, about 100 bytes each) so the intake can
hold all keys of a mesh within one budget.
Percentiles are the upper bound of the histogram bucket holding the rank (buckets grow by
4 %, so a reported p99 is at most 4 % above the true one, never below it), clipped to the
largest latency seen.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

LONGEST_WINDOW_S = 300
WINDOWS = {"1m": 60, "5m": 300}
_GROWTH = 1.04
_BASE_MS = 0.01  # bucket 0 holds everything up to 10 µs


def bucket_of(latency_ms: float) -> int:
    if latency_ms <= _BASE_MS:
        return 0
    return max(0, math.ceil(math.log(latency_ms / _BASE_MS, _GROWTH) - 1e-9))


def bucket_upper(index: int) -> float:
    return _BASE_MS * _GROWTH**index


@dataclass
class _Second:
    second: int
    count: int = 0
    failures: int = 0
    denied: int = 0
    hist: dict[int, int] = field(default_factory=dict)
    max_ms: float = 0.0
    min_ms: float = math.inf


@dataclass(frozen=True)
class Summary:
    requests: int
    failures: int
    seconds: int
    p50: float | None
    p95: float | None
    p99: float | None
    denied: int = 0  # refused by the mesh (TrafficPermission): neither a success nor a failure of the app

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def success_rate(self) -> float | None:
        return (self.requests - self.failures - self.denied) / self.requests if self.requests else None

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failures": self.failures,
            "denied": self.denied,
            "rps": round(self.rps, 3),
            "successRate": None if self.success_rate is None else round(self.success_rate, 5),
            "latencyMs": {"p50": self.p50, "p95": self.p95, "p99": self.p99},
        }


class RollingStats:
    """Per-second buckets for the last :data:`LONGEST_WINDOW_S` seconds, plus totals since start."""

    def __init__(self) -> None:
        self._seconds: deque[_Second] = deque()
        self.total = 0
        self.total_failures = 0
        self.total_denied = 0
        self.last_seen = 0.0
        self.cells = 0  # seconds kept + histogram cells in them
        self.touched = 0  # its owner's stamp of the last update (for least-recently-updated eviction)
        self.changes = 0  # adds so far: a memoised summary is stale once this moves
        # window seconds -> (changes, since, until, summary): the summary holds for every
        # ``since`` in [since, until) (no second enters or leaves the window), so a page asking
        # every 2 s for an idle key's minute costs a lookup
        self._memo: dict[int, tuple[int, int, float, Summary]] = {}
        # window seconds -> (summary, changes, what the row adds, the row): a stats row is built
        # and encoded once while its summary and totals stay (see TelemetryIntake.stats)
        self.rows: dict[int, tuple[Summary, int, tuple[Any, ...], Any]] = {}

    def add(self, at: float, failed: bool, latency_ms: float, denied: bool = False) -> None:
        """One request: ``failed`` (see record.is_failure) or ``denied`` by the mesh, or a success."""
        failed = failed and not denied
        second = int(at)
        self.changes += 1
        self.total += 1
        self.total_failures += failed
        self.total_denied += denied
        self.last_seen = max(self.last_seen, at)
        bucket = self._bucket(second)
        bucket.count += 1
        bucket.failures += failed
        bucket.denied += denied
        idx = bucket_of(latency_ms)
        seen = bucket.hist.get(idx, 0)
        self.cells += not seen
        bucket.hist[idx] = seen + 1
        bucket.max_ms = max(bucket.max_ms, latency_ms)
        bucket.min_ms = min(bucket.min_ms, latency_ms)
        self._prune(max(second, self._seconds[-1].second) - LONGEST_WINDOW_S)

    def add_many(self, at: float, count: int, failures: int, denied: int, hist: dict[int, int],
                 lo: float, hi: float) -> None:
        """``count`` requests of one second at once, as a sidecar's counters report them
        (:mod:`.signals`): ``hist`` maps latency buckets (:func:`bucket_of`) to requests, and
        ``lo``/``hi`` bound the latencies. ``failures`` exclude ``denied`` ones."""
        if count <= 0 and not hist:  # (Envoy merges histograms a flush after it counts)
            return
        second = int(at)
        self.changes += 1
        self.total += count
        self.total_failures += failures
        self.total_denied += denied
        self.last_seen = max(self.last_seen, at)
        bucket = self._bucket(second)
        bucket.count += count
        bucket.failures += failures
        bucket.denied += denied
        for idx, n in hist.items():
            seen = bucket.hist.get(idx, 0)
            self.cells += not seen
            bucket.hist[idx] = seen + n
        if hist:
            bucket.max_ms = max(bucket.max_ms, hi)
            bucket.min_ms = min(bucket.min_ms, lo)
        self._prune(max(second, self._seconds[-1].second) - LONGEST_WINDOW_S)

    def _bucket(self, second: int) -> _Second:
        if not self._seconds or self._seconds[-1].second < second:
            self._seconds.append(_Second(second))
            self.cells += 1
            return self._seconds[-1]
        # Entries arrive in batches, slightly out of order: find the second (usually the last few).
        for b in reversed(self._seconds):
            if b.second == second:
                return b
            if b.second < second:
                break
        new = _Second(second)
        self.cells += 1
        items = sorted([*self._seconds, new], key=lambda b: b.second)
        self._seconds = deque(items)
        return new

    def _prune(self, before: int) -> None:
        while self._seconds and self._seconds[0].second <= before:
            self.cells -= 1 + len(self._seconds.popleft().hist)

    def summary(self, now: float, seconds: int) -> Summary:
        since = int(now) - seconds
        memo = self._memo.get(seconds)
        if memo is not None and memo[0] == self.changes and memo[1] <= since < memo[2]:
            return memo[3]
        out, until = self._summary(since, seconds)
        self._memo[seconds] = (self.changes, since, until, out)
        return out

    def _summary(self, since: int, seconds: int) -> tuple[Summary, float]:
        """The window's summary, and the ``since`` at which its oldest second leaves it."""
        count = failures = denied = 0
        hist: dict[int, int] = {}
        hi, lo = 0.0, math.inf
        until = math.inf
        for b in reversed(self._seconds):  # oldest first in the deque: the window is its tail
            if b.second <= since:
                break
            until = b.second
            count += b.count
            failures += b.failures
            denied += b.denied
            hi, lo = max(hi, b.max_ms), min(lo, b.min_ms)
            for k, v in b.hist.items():
                hist[k] = hist.get(k, 0) + v
        return Summary(
            requests=count,
            failures=failures,
            denied=denied,
            seconds=seconds,
            # ranks among the latencies: a sidecar's counters may report a request's latency a
            # second after the request itself (telemetry.signals)
            p50=_percentile(hist, sum(hist.values()), 0.50, lo, hi),
            p95=_percentile(hist, sum(hist.values()), 0.95, lo, hi),
            p99=_percentile(hist, sum(hist.values()), 0.99, lo, hi),
        ), until


def _percentile(hist: dict[int, int], count: int, q: float, lo: float, hi: float) -> float | None:
    if not count:
        return None
    rank = max(1, math.ceil(q * count))
    seen = 0
    for idx in sorted(hist):
        seen += hist[idx]
        if seen >= rank:
            return round(min(max(bucket_upper(idx), lo), hi), 3)
    return round(hi, 3)
