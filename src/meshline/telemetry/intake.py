"""The telemetry intake: access-log records in; golden signals, live taps and explanations out.

Per mesh it keeps, in memory and bounded (see :class:`TelemetryLimits`, docs/observability.md):

* the last records of both sides (by count and by bytes), indexed by request id (for
  ``explain``): the oldest go first;
* rolling stats per destination service, per edge (source -> destination) and per path, each
  index bounded by its number of keys, all three together by their histogram cells: the
  least recently updated key goes first;
* the mTLS seen on each edge (from the callee's side: did the caller present a certificate).

Which side counts: see :func:`meshline.telemetry.record.is_counted` (the caller's side, or
the callee's when the caller has no sidecar), so each request is counted once per edge.

A failed request whose caller only saw an error status come back is held back from taps
for up to ``join_window`` seconds waiting for the callee's half, which knows why (a denial,
a refused connection to the app); both halves share the x-request-id. At most
``TelemetryLimits.pending`` wait: past that the oldest goes out without its other half.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

from meshline.core.errors import FieldProblem, Unavailable, ValidationError
from meshline.core.slices import Slices
from meshline.render.mesh_snapshot import WATCH_ALL
from meshline.telemetry.denials import DenialLimits, Denials, denial_of
from meshline.telemetry.edge_paths import EdgePathLimits, EdgePaths
from meshline.telemetry.explain import EMPTY, ExplainContext, explain, explain_pair, explain_request
from meshline.telemetry.record import MAX_TEXT, OUTBOUND, LogRecord, is_counted, record_bytes
from meshline.telemetry.series import MeshSeries, SeriesLimits
from meshline.telemetry.signals import SignalRow
from meshline.telemetry.window import LONGEST_WINDOW_S, WINDOWS, RollingStats, Summary, bucket_of

ContextFor = Callable[[LogRecord], ExplainContext]
# A counted entry whose sidecar reports its counters (telemetry.signals) goes to the taps once
# those counters include it, so whoever saw it in a tap finds it in `stat` too; at most this long.
SIGNALS_WAIT_S = 2.0
SIGNALS_MARGIN_S = 0.005  # Envoy counts a request just after its last byte
MAX_SIGNAL_SOURCES = 100_000  # dataplanes whose last report is remembered
VIEW_LEASE_S = 30.0  # a dashboard page asks every few seconds; a closed one ends within this
TLS_SAMPLE = 100  # inbound entries per edge remembered for the mTLS column

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class TelemetryLimits:
    """What the intake keeps per mesh at most (taps: in all); docs/observability.md explains each."""

    records: int = 10_000  # recent entries (explain, tap replay)
    record_bytes: int = 32 * 2**20  # their approximate size
    services: int = 1_000  # golden-signal keys per index...
    edges: int = 2_000
    paths: int = 500
    cells: int = 200_000  # ...and their histogram cells together (about 100 bytes each)
    pending: int = 10_000  # failed requests waiting for their other half
    taps: int = 64  # live taps, all meshes together
    tap_queue: int = 1_000  # records waiting for a slow tap reader
    views: int = 256  # services someone looks at (every success streamed), all meshes together
    series: SeriesLimits = SeriesLimits()  # the last hour in 10 s buckets (telemetry.series)
    edge_paths: EdgePathLimits = EdgePathLimits()  # methods and paths per edge (telemetry.edge_paths)
    denials: DenialLimits = DenialLimits()  # refused and would-be refused requests (telemetry.denials)


def parse_status(text: str) -> Callable[[int], bool]:
    """``5xx``, ``4xx``, ``404``, ``failed`` (5xx or none), comma-separated: any of them matches."""
    tests: list[Callable[[int], bool]] = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        if len(part) == 3 and part[0] in "12345" and part[1:] == "xx":
            lo = int(part[0]) * 100
            tests.append(lambda s, lo=lo: lo <= s < lo + 100)  # type: ignore[misc]
        elif part.isdigit() and 100 <= int(part) <= 599:
            tests.append(lambda s, code=int(part): s == code)  # type: ignore[misc]
        elif part in ("failed", "error", "errors"):
            tests.append(lambda s: s == 0 or s >= 500)
        elif part in ("0", "none"):
            tests.append(lambda s: s == 0)
        else:
            raise ValidationError(
                [FieldProblem("status", f"'{part}' is not a status filter; use e.g. 5xx, 4xx, 404, failed")]
            )
    return lambda s: any(test(s) for test in tests) if tests else True


@dataclass
class TapFilter:
    service: str = ""  # source or destination
    path: str = ""  # path prefix
    status: str = ""
    # A recording (meshline.learn): only the callee's entries carrying a capture, of one version
    captures: bool = False
    version: str = ""

    def __post_init__(self) -> None:
        self._status = parse_status(self.status)

    def matches(self, r: LogRecord) -> bool:
        if self.captures:
            return (r.capture is not None and r.destination == self.service
                    and (not self.version or r.destination_version == self.version))
        if self.service and self.service not in (r.source, r.destination):
            return False
        if self.path and not r.path.startswith(self.path):
            return False
        return not self.status or (self._status(r.status) if r.protocol == "http" else r.failed)


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # json.dumps(separators=) makes one per call


class EncodedRow(dict[str, Any]):
    """A stats row that remembers its JSON (the API encodes it once per change, not every 2 s
    for each of a mesh's hundreds of keys); shared between answers, so never changed."""

    @property
    def json(self) -> str:
        text: str | None = self.__dict__.get("_json")
        if text is None:
            text = self.__dict__["_json"] = _COMPACT.encode(self)
        return text


FAILURES = TapFilter(status="failed,4xx")  # "recent failures": 5xx, 4xx, no response


@dataclass
class Subscription:
    mesh: str
    filter: TapFilter
    # None: the intake is stopping, end the tap
    queue: asyncio.Queue[LogRecord | None] = field(
        default_factory=lambda: asyncio.Queue(TelemetryLimits.tap_queue)
    )
    dropped: int = 0  # records a slow reader missed

    def offer(self, r: LogRecord) -> None:
        try:
            self.queue.put_nowait(r)
        except asyncio.QueueFull:
            self.dropped += 1

    def close(self) -> None:
        while True:
            try:
                self.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()


@dataclass
class _Pending:
    record: LogRecord
    deadline: float


class MeshTelemetry:
    def __init__(self, limits: TelemetryLimits) -> None:
        self.limits = limits
        self.recent: deque[tuple[LogRecord, int]] = deque()  # (record, its bytes), oldest first
        # the failures among them (what a service page's "recent failures" lists), oldest first,
        # so listing the last 20 of a service does not scan every record
        self.recent_failures: deque[LogRecord] = deque()
        self.record_bytes = 0
        self.by_request: dict[str, list[LogRecord]] = {}
        # least recently updated first
        self.services: OrderedDict[str, RollingStats] = OrderedDict()
        self.edges: OrderedDict[tuple[str, str], RollingStats] = OrderedDict()
        self.paths: OrderedDict[tuple[str, str, str], RollingStats] = OrderedDict()
        # (service, version, side): "caller" counts as services do; "callee" is the version's own
        # inbound side, which also sees mirrored requests (rollout analysis reads both)
        self.versions: OrderedDict[tuple[str, str, str], RollingStats] = OrderedDict()
        self.cells = 0  # of all four
        self._stamp = itertools.count()
        self.edge_tls: OrderedDict[tuple[str, str], deque[bool]] = OrderedDict()
        self.edge_protocol: dict[tuple[str, str], str] = {}  # keys: those of edges
        self.pending: dict[tuple[str, str, str], _Pending] = {}  # (request id, source, destination)
        self.awaiting: deque[_Pending] = deque()  # counted entries waiting for their sidecar's counters
        self.received = 0
        self.received_signals = 0  # requests counted from sidecars' counters (telemetry.signals)
        self.evicted = 0  # golden-signal keys dropped to stay within the limits
        self.dropped: dict[str, int] = {}  # entries refused at the door, by reason
        self.series = MeshSeries(limits.series)
        self.edge_paths = EdgePaths(limits.edge_paths)
        self.denials = Denials(limits.denials)

    def remember(self, r: LogRecord) -> None:
        self.received += 1
        size = record_bytes(r)
        self.recent.append((r, size))
        self.record_bytes += size
        if FAILURES.matches(r) and (is_counted(r) or r.mirrored):
            self.recent_failures.append(r)
        if r.request_id:
            self.by_request.setdefault(r.request_id, []).append(r)
        while len(self.recent) > self.limits.records or self.record_bytes > self.limits.record_bytes:
            old, old_size = self.recent.popleft()
            self.record_bytes -= old_size
            if self.recent_failures and self.recent_failures[0] is old:
                self.recent_failures.popleft()
            halves = self.by_request.get(old.request_id)
            if halves is not None:
                if old in halves:
                    halves.remove(old)
                if not halves:
                    del self.by_request[old.request_id]

    def count(self, r: LogRecord) -> None:
        failed = r.failed
        self._add(self.services, self.limits.services, r.destination, r, failed)
        self._add(self.edges, self.limits.edges, r.edge, r, failed)
        self.edge_protocol[r.edge] = r.protocol
        self.series.count(r)
        if r.protocol == "http":
            key = (r.destination, r.method, r.path.split("?", 1)[0])
            self._add(self.paths, self.limits.paths, key, r, failed)
        if r.destination_version:
            self._add(self.versions, self.limits.services, (r.destination, r.destination_version, "caller"), r, failed)
        self._evict_over_budget()

    def count_callee(self, r: LogRecord) -> None:
        """An inbound entry whose caller's side counts the request: only the per-version index
        takes it (the callee side of a version, mirrored copies included)."""
        if r.destination_version:
            key = (r.destination, r.destination_version, "callee")
            self._add(self.versions, self.limits.services, key, r, r.failed)
            self._evict_over_budget()

    def count_signal(self, row: SignalRow, at: float) -> None:
        """A sidecar's counted requests of one label set (telemetry.signals), into the same
        indexes as :meth:`count` / :meth:`count_callee` put single entries."""
        hist: dict[int, int] = {}
        for upper_ms, n in row.latency:
            if n:
                idx = bucket_of(upper_ms)
                hist[idx] = hist.get(idx, 0) + n
        uppers = [ms for ms, n in row.latency if n]
        lo, hi = (min(uppers), max(uppers)) if uppers else (0.0, 0.0)
        denied = row.count if row.denied else 0
        failures = row.count if row.failed and not row.denied else 0
        parts = (at, row.count, failures, denied, hist, lo, hi)
        if row.path is not None:  # the per-path scope: `top`'s index and `permissions suggest --l7`'s
            if row.counted:
                self._add_many(self.paths, self.limits.paths, (row.destination, row.method, row.path), parts)
                if not row.denied and row.count > 0:
                    self.edge_paths.add_many(row.edge, row.method, row.path, row.count, at)
                self._evict_over_budget()
            return
        self.received_signals += row.count
        if row.reporter != "source":
            self.observe_tls_many(row.edge, row.mtls, row.count)
            if row.destination_version:
                key = (row.destination, row.destination_version, "callee")
                self._add_many(self.versions, self.limits.services, key, parts)
        if row.counted:
            self._add_many(self.services, self.limits.services, row.destination, parts)
            self._add_many(self.edges, self.limits.edges, row.edge, parts)
            self.edge_protocol[row.edge] = "http"
            self.series.count_many(row.destination, row.edge, row.destination_version, *parts)
            if row.destination_version:
                key = (row.destination, row.destination_version, "caller")
                self._add_many(self.versions, self.limits.services, key, parts)
        self._evict_over_budget()

    def _add_many(self, index: OrderedDict[K, RollingStats], limit: int, key: K,
                  parts: tuple[float, int, int, int, dict[int, int], float, float]) -> None:
        stats = index.pop(key, None) or RollingStats()
        index[key] = stats
        before = stats.cells
        stats.add_many(*parts)
        self.cells += stats.cells - before
        stats.touched = next(self._stamp)
        while len(index) > limit:
            self._evict(index)

    def _evict_over_budget(self) -> None:
        indexes: tuple[OrderedDict[Any, RollingStats], ...] = (self.services, self.edges, self.paths, self.versions)
        while self.cells > self.limits.cells:  # the least recently updated key of any index goes
            self._evict(min((i for i in indexes if i), key=lambda i: next(iter(i.values())).touched))

    def _add(self, index: OrderedDict[K, RollingStats], limit: int, key: K, r: LogRecord, failed: bool) -> None:
        stats = index.pop(key, None) or RollingStats()
        index[key] = stats
        before = stats.cells
        stats.add(r.time, failed, r.duration_ms, r.denied)
        self.cells += stats.cells - before
        stats.touched = next(self._stamp)
        while len(index) > limit:
            self._evict(index)

    def _evict(self, index: OrderedDict[K, RollingStats]) -> None:
        key, stats = index.popitem(last=False)
        self.cells -= stats.cells
        self.evicted += 1
        if index is self.edges:
            self.edge_protocol.pop(cast(tuple[str, str], key), None)

    def observe_tls(self, r: LogRecord) -> None:
        if r.mtls is not None:
            seen = self.edge_tls.pop(r.edge, None) or deque(maxlen=TLS_SAMPLE)
            self.edge_tls[r.edge] = seen
            seen.append(r.mtls)
            while len(self.edge_tls) > self.limits.edges:
                self.edge_tls.popitem(last=False)

    def observe_tls_many(self, edge: tuple[str, str], mtls: bool, n: int) -> None:
        if n <= 0:
            return
        seen = self.edge_tls.pop(edge, None) or deque(maxlen=TLS_SAMPLE)
        self.edge_tls[edge] = seen
        seen.extend([mtls] * min(n, TLS_SAMPLE))
        while len(self.edge_tls) > self.limits.edges:
            self.edge_tls.popitem(last=False)

    def mtls(self, edge: tuple[str, str]) -> str:
        seen = self.edge_tls.get(edge)
        if not seen:
            return "unknown"
        if all(seen):
            return "yes"
        return "no" if not any(seen) else "mixed"

    def halves(self, request_id: str) -> list[LogRecord]:
        return list(self.by_request.get(request_id, ()))

    def hold(self, key: tuple[str, str, str], pending: _Pending) -> _Pending | None:
        """Hold a record for its other half; returns the oldest one pushed out, if any."""
        self.pending[key] = pending
        if len(self.pending) <= self.limits.pending:
            return None
        oldest = next(iter(self.pending))
        return self.pending.pop(oldest)


def same_hop(a: LogRecord, b: LogRecord) -> bool:
    """Two entries of one call between the same two services (its two halves, or the same half)."""
    return a.destination == b.destination and a.source == b.source


def _needs_other_half(r: LogRecord) -> bool:
    """The caller saw an error come back from the callee's sidecar; the callee knows why."""
    return (
        r.direction == OUTBOUND
        and bool(r.request_id)
        and r.protocol == "http"
        and (r.status >= 400 or r.failed)
        and not r.flags
        and r.details in ("via_upstream", "")
    )


class TelemetryIntake:
    def __init__(
        self,
        context_for: ContextFor | None = None,
        limits: TelemetryLimits | None = None,
        join_window: float = 1.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.context_for = context_for or (lambda r: EMPTY)
        self.limits = limits or TelemetryLimits()
        self.join_window = join_window
        self.clock = clock
        self.meshes: dict[str, MeshTelemetry] = {}
        # (mesh, dataplane) -> when its sidecar last read the counters it reported (telemetry.signals)
        self.signals_through: OrderedDict[tuple[str, str], float] = OrderedDict()
        # (mesh, dataplane) -> the end of its latest counted entry (telemetry.signals): counters
        # that do not reach it yet are behind what the entries show (see settled)
        self.entries_through: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.subscriptions: list[Subscription] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        # Tells the sidecars which services taps watch (they stream all their entries) and
        # returns once they run that config (the control plane's reconciler; None: nobody).
        self.on_watch: Callable[[str, frozenset[str]], Awaitable[None]] | None = None
        self._rewatch: set[asyncio.Task[None]] = set()
        # (mesh, service) -> until when someone looks at its recent requests (see view)
        self._views: dict[tuple[str, str], float] = {}
        self._view_sweeper: asyncio.Task[None] | None = None

    def mesh(self, name: str) -> MeshTelemetry:
        """A mesh's telemetry, made on its first entry (the access-log service lets in only
        entries of registered dataplanes, so meshes are bounded by the store's)."""
        m = self.meshes.get(name)
        if m is None:
            m = self.meshes[name] = MeshTelemetry(self.limits)
        return m

    def _view(self, name: str) -> MeshTelemetry:
        """For reading: an empty view of a mesh without entries (reading never adds a mesh)."""
        return self.meshes.get(name) or MeshTelemetry(self.limits)

    def note_dropped(self, mesh: str, reason: str, n: int) -> None:
        """Entries refused at the door (see telemetry.als), counted in their mesh's stats."""
        m = self.mesh(mesh)
        m.dropped[reason] = m.dropped.get(reason, 0) + n

    # -- in ------------------------------------------------------------------------
    def ingest(self, records: Iterable[LogRecord]) -> None:
        for r in records:
            self._ingest(r)
        if any(m.pending or m.awaiting for m in self.meshes.values()) and self._wake is not None:
            self._wake.set()

    def _ingest(self, r: LogRecord) -> None:
        m = self.mesh(r.mesh)
        if r.failed or r.flags or r.status >= 400 or (r.grpc_status or 0) != 0:
            try:
                r.explanation = explain(r, self.context_for(r))
            except Exception as err:  # an explanation must never lose the record
                r.explanation = f"(no explanation: {type(err).__name__}: {err})"
        # Apps that pass x-request-id on share it across hops: pair halves of the same hop.
        others = [o for o in m.halves(r.request_id) if same_hop(o, r)] if r.request_id else []
        m.remember(r)
        key = (r.request_id, r.source, r.destination)
        m.observe_tls(r)  # every inbound entry, counted ones too (a caller without a sidecar)
        if is_counted(r) and r.protocol == "http" and not r.denied and not r.signals:
            m.edge_paths.add(r)  # what `permissions suggest --l7` reads (else: count_signal's path rows)
        denial = denial_of(r)
        if denial is not None:
            m.denials.add(denial, r.time)  # what `permissions report` reads
        if is_counted(r):
            if r.signals:
                self._note_entry(r)
            else:
                m.count(r)
                if r.direction != OUTBOUND:
                    m.count_callee(r)
            inbound = next((o for o in others if o.direction != OUTBOUND), None)
            if r.direction == OUTBOUND and inbound is not None:
                r.explanation = explain_pair(r, inbound)
            elif _needs_other_half(r):
                pushed_out = m.hold(key, _Pending(r, self.clock() + self.join_window))
                if pushed_out is not None:
                    self._publish(pushed_out.record)
                return
            self._publish_counted(m, r)
            return
        if not r.signals:
            m.count_callee(r)
        if r.capture is not None:  # the callee's own half, with what a TrafficRecording captured
            self._publish(r, captures_only=True)
        if r.mirrored:  # no caller's half will come: the copy's only entry goes to the taps
            self._publish(r)
            return
        for o in others:  # the caller's half arrived first: complete it
            if o.direction == OUTBOUND:
                o.explanation = explain_pair(o, r)
        waiting = m.pending.pop(key, None) if r.request_id else None
        if waiting is not None:
            self._publish_counted(m, waiting.record)

    async def settled(self, mesh: str, timeout: float = SIGNALS_WAIT_S) -> None:
        """Wait (bounded) until every sidecar's counters include the requests its streamed
        entries showed: a view built from both (`permissions suggest`, `stat` after a tap)
        then agrees with what was seen."""
        deadline = self.clock() + timeout
        while self.clock() < deadline:
            behind = [k for k, end in self.entries_through.items()
                      if k[0] == mesh and self.signals_through.get(k, 0.0) < end]
            if not behind:
                return
            await asyncio.sleep(0.02)

    def _note_entry(self, r: LogRecord) -> None:
        key = (r.mesh, r.dataplane)
        end = r.time + r.duration_ms / 1000 + SIGNALS_MARGIN_S
        self.entries_through.pop(key, None)
        self.entries_through[key] = max(end, self.entries_through.get(key, 0.0))
        while len(self.entries_through) > MAX_SIGNAL_SOURCES:
            self.entries_through.popitem(last=False)

    def _covered(self, r: LogRecord) -> bool:
        """Whether ``r``'s sidecar has reported counters read after ``r`` ended (same host clock)."""
        through = self.signals_through.get((r.mesh, r.dataplane))
        return through is not None and through >= r.time + r.duration_ms / 1000 + SIGNALS_MARGIN_S

    def _publish_counted(self, m: MeshTelemetry, r: LogRecord) -> None:
        if not r.signals or self._covered(r):
            self._publish(r)
            return
        m.awaiting.append(_Pending(r, self.clock() + SIGNALS_WAIT_S))
        if len(m.awaiting) > self.limits.pending:
            self._publish(m.awaiting.popleft().record)
        if self._wake is not None:
            self._wake.set()

    def flush_due(self, now: float | None = None) -> int:
        """Publish held-back records whose other half did not come in time."""
        now = self.clock() if now is None else now
        n = 0
        for m in self.meshes.values():
            for key, p in list(m.pending.items()):
                if p.deadline <= now:
                    del m.pending[key]
                    self._publish(p.record)
                    n += 1
            while m.awaiting and m.awaiting[0].deadline <= now:  # the counters did not come in time
                self._publish(m.awaiting.popleft().record)
                n += 1
        return n

    def _publish(self, r: LogRecord, captures_only: bool = False) -> None:
        if r.request_id and (r.failed or r.status >= 400):
            # Deeper hops of the same request (apps passing x-request-id on) that already
            # came in may say where the failure started.
            chain = sorted(
                (o for o in self._view(r.mesh).halves(r.request_id) if o.time >= r.time),
                key=lambda o: (o.time, o.direction != OUTBOUND),
            )
            if any(not same_hop(o, r) for o in chain):
                # A copy for the taps: the stored entry keeps its own hop's explanation.
                r = replace(r, explanation=explain_request(chain) or r.explanation)
        for sub in self.subscriptions:
            if sub.mesh == r.mesh and (sub.filter.captures or not captures_only) and sub.filter.matches(r):
                sub.offer(r)

    def ingest_signals(self, mesh: str, rows: Iterable[SignalRow], at: float | None = None,
                       dataplane: str = "", through: float | None = None) -> None:
        """Requests counted by a sidecar since its last post (see :mod:`.signals`), at ``at``
        (default: now). ``through``: when the sidecar read them (its host's clock, the one its
        access-log entries use): its entries that ended before are in them, and go to the taps."""
        when = self.clock() if at is None else at
        m = self.mesh(mesh)
        for row in rows:
            if row.count > 0 or row.latency:
                m.count_signal(row, when)
        if not dataplane or through is None:
            return
        key = (mesh, dataplane)
        self.signals_through.pop(key, None)
        self.signals_through[key] = through
        while len(self.signals_through) > MAX_SIGNAL_SOURCES:
            self.signals_through.popitem(last=False)
        if m.awaiting:
            keep: deque[_Pending] = deque()
            for p in m.awaiting:
                if self._covered(p.record):
                    self._publish(p.record)
                else:
                    keep.append(p)
            m.awaiting = keep

    # -- taps ----------------------------------------------------------------------
    def subscribe(self, mesh: str, flt: TapFilter) -> Subscription:
        if len(self.subscriptions) >= self.limits.taps:
            raise Unavailable(
                f"{len(self.subscriptions)} taps are open, the most this control plane serves at once;"
                " stop one (end another `meshline tap`) and retry"
            )
        sub = Subscription(mesh, flt, asyncio.Queue(self.limits.tap_queue))
        self.subscriptions.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self.subscriptions:
            self.subscriptions.remove(sub)

    def watched(self, mesh: str) -> frozenset[str]:
        """The services the mesh's live taps watch (WATCH_ALL: a tap without a service), and
        those someone looks at (:meth:`view`). A recording's subscription is not a tap: its
        captured entries are always streamed."""
        now = time.monotonic()
        viewed = {service for (m, service), until in self._views.items() if m == mesh and until > now}
        return frozenset(viewed).union(sub.filter.service or WATCH_ALL for sub in self.subscriptions
                                       if sub.mesh == mesh and not sub.filter.captures)

    def view(self, mesh: str, services: Iterable[str]) -> None:
        """Someone looks at these services' recent requests (the dashboard's dataplane page,
        which asks every few seconds): their sidecars stream successes too, not a sample,
        until VIEW_LEASE_S after the last look."""
        now = time.monotonic()
        added = False
        for service in services:
            key = (mesh, service)
            if key not in self._views:
                if len(self._views) >= self.limits.views:
                    continue  # bounded: the sampled successes still show
                added = True
            self._views[key] = now + VIEW_LEASE_S
        if added:
            self.rewatch_later(mesh)
            if self._view_sweeper is None or self._view_sweeper.done():
                self._view_sweeper = asyncio.ensure_future(self._sweep_views())

    async def _sweep_views(self) -> None:
        """Ends the looks nobody renewed (the sidecars go back to sampling successes)."""
        while self._views:
            await asyncio.sleep(VIEW_LEASE_S / 3)
            now = time.monotonic()
            gone = [key for key, until in self._views.items() if until <= now]
            for key in gone:
                del self._views[key]
            for mesh in {m for m, _ in gone}:
                self.rewatch_later(mesh)

    async def watch_taps(self, mesh: str) -> None:
        """Have the sidecars stream every entry of what the mesh's taps watch, and wait until
        they do (bounded by the hook; a tap then never misses a request sent after it started)."""
        if self.on_watch is not None:
            await self.on_watch(mesh, self.watched(mesh))

    def rewatch_later(self, mesh: str) -> None:
        """:meth:`watch_taps` without waiting (a tap that ended)."""
        if self.on_watch is None:
            return
        task = asyncio.ensure_future(self.watch_taps(mesh))
        self._rewatch.add(task)
        task.add_done_callback(self._rewatch.discard)

    # -- out -----------------------------------------------------------------------
    async def stats(self, mesh: str, window: str = "1m", service: str = "", paths: int = 0) -> dict[str, Any]:
        """Golden signals of a mesh. Computed a key at a time, giving the loop back every few
        milliseconds (the indexes are bounded, but summing up to their cell budget takes longer
        than a handler may hold the loop); keys evicted meanwhile are left out."""
        if window not in WINDOWS:
            raise ValidationError([FieldProblem("window", f"'{window}' is not a window; use {', '.join(WINDOWS)}")])
        seconds = WINDOWS[window]
        now = self.clock()
        m = self._view(mesh)
        slices = Slices()

        def row(stats: RollingStats, head: dict[str, Any]) -> dict[str, Any]:
            summary = stats.summary(now, seconds)
            held = stats.rows.get(seconds)
            values = tuple(head.values())
            if held is not None and held[0] is summary and held[1] == stats.changes and held[2] == values:
                return held[3]
            out = EncodedRow({**head, **summary.to_json(), "total": stats.total,
                              "totalFailures": stats.total_failures, "totalDenied": stats.total_denied})
            stats.rows[seconds] = (summary, stats.changes, values, out)
            return out

        services = []
        for name in sorted(m.services):
            s = m.services.get(name)
            if s is not None and (not service or name == service):
                services.append(row(s, {"service": name}))
                await slices.tick()
        edges = []
        for src, dst in sorted(m.edges):
            s = m.edges.get((src, dst))
            if s is not None and (not service or service in (src, dst)):
                edges.append(row(s, {"source": src, "destination": dst, "protocol": m.edge_protocol.get((src, dst), ""),
                                     "mtls": m.mtls((src, dst))}))
                await slices.tick()
        out: dict[str, Any] = {"mesh": mesh, "window": window, "at": now, "services": services, "edges": edges,
                               "received": m.received, "evicted": m.evicted, "dropped": dict(m.dropped)}
        if paths:
            rows = []
            for svc, method, path in list(m.paths):
                s = m.paths.get((svc, method, path))
                if s is not None and (not service or svc == service):
                    rows.append(row(s, {"service": svc, "method": method, "path": path}))
                    await slices.tick()
            rows.sort(key=lambda x: (-x["requests"], x["service"], x["path"]))
            out["paths"] = rows[:paths]
        return out

    def version_summary(self, mesh: str, service: str, version: str, seconds: int, side: str = "caller") -> Summary:
        """One version's golden signals over the last ``seconds`` (rollout analysis): ``caller``
        as ``stat`` counts them, ``callee`` from the version's own sidecars (mirrored copies too)."""
        stats = self._view(mesh).versions.get((service, version, side))
        if stats is None:
            return Summary(requests=0, failures=0, seconds=seconds, p50=None, p95=None, p99=None)
        return stats.summary(self.clock(), seconds)

    def observed_edges(self, mesh: str, seconds: int) -> list[dict[str, Any]]:
        """Every edge with requests in the last ``seconds`` (at most the hour the series keep):
        requests, denied, last seen, protocol (what `permissions suggest` reads)."""
        m = self._view(mesh)
        now = self.clock()
        out = []
        for edge, stats in list(m.edges.items()):
            if seconds <= LONGEST_WINDOW_S:
                s = stats.summary(now, seconds)
                requests, denied = s.requests, s.denied
            else:
                series = m.series.keys.get(("edge", *edge))
                points = series.points(now, seconds) if series is not None else []
                requests = sum(p["requests"] for p in points)
                denied = sum(p["denied"] for p in points)
            if requests:
                out.append({"source": edge[0], "destination": edge[1], "requests": requests, "denied": denied,
                            "lastSeen": stats.last_seen, "protocol": m.edge_protocol.get(edge, "")})
        return sorted(out, key=lambda e: (e["destination"], e["source"]))

    def observed_paths(self, mesh: str, edge: tuple[str, str], seconds: int) -> list[dict[str, Any]]:
        """The methods and paths (or collapsed prefixes) an edge used (telemetry.edge_paths)."""
        seen = self._view(mesh).edge_paths.of(edge, self.clock(), seconds)
        return [{"method": k.method, "path": k.path, "prefix": k.prefix, "requests": s.count, "lastSeen": s.last_seen}
                for k, s in sorted(seen.items(), key=lambda kv: (kv[0].path, kv[0].method))]

    def denied(self, mesh: str, seconds: int) -> list[dict[str, Any]]:
        """Requests refused (enforced) or that a dry-run permission would have refused, per
        (policy, caller, callee, method, path), busiest first (telemetry.denials)."""
        rows = self._view(mesh).denials.since(self.clock(), seconds)
        out = [{"policy": k.policy, "mode": k.mode, "source": k.source, "destination": k.destination,
                "method": k.method, "path": k.path, "requests": c.count, "firstSeen": c.first_seen,
                "lastSeen": c.last_seen} for k, c in rows]
        return sorted(out, key=lambda d: (d["mode"], d["policy"], -d["requests"], d["source"], d["path"]))

    def sizes(self, mesh: str) -> dict[str, int]:
        """How much of each bound a mesh uses (for tests and the docs' figures)."""
        m = self._view(mesh)
        return {"records": len(m.recent), "recordBytes": m.record_bytes, "requestIds": len(m.by_request),
                "services": len(m.services), "edges": len(m.edges), "paths": len(m.paths), "cells": m.cells,
                "edgeTls": len(m.edge_tls), "edgeProtocols": len(m.edge_protocol), "pending": len(m.pending),
                "taps": len(self.subscriptions), "signals": m.received_signals, "seriesKeys": len(m.series.keys),
                "seriesCells": m.series.cells, "edgePaths": m.edge_paths.size(), "denials": len(m.denials.rows)}

    def request(self, mesh: str, request_id: str) -> list[LogRecord]:
        """Every entry of one request, by x-request-id (or of a trace id), in call order:
        both halves of each hop; more hops when the apps pass the id or the trace on."""
        m = self._view(mesh)
        halves = m.halves(request_id[:MAX_TEXT])
        if not halves:
            halves = [r for r, _ in m.recent if r.trace_id and r.trace_id == request_id]
        return sorted(halves, key=lambda r: (r.time, r.direction != OUTBOUND))

    def recent(self, mesh: str, flt: TapFilter, limit: int) -> list[LogRecord]:
        if limit <= 0:
            return []
        m = self._view(mesh)
        if flt.status == FAILURES.status and not flt.path:  # the failures alone, already picked
            newest = (r for r in reversed(m.recent_failures) if flt.matches(r))
        else:
            newest = (r for r, _ in reversed(m.recent) if (is_counted(r) or r.mirrored) and flt.matches(r))
        return list(reversed(list(itertools.islice(newest, limit))))  # stops at the limit: no full scan

    # -- lifecycle (on the control plane's loop) --------------------------------------
    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._flusher(), name="telemetry-join")

    async def stop(self) -> None:
        for sub in self.subscriptions:
            sub.close()
        if self._view_sweeper is not None:
            self._view_sweeper.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _flusher(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while any(m.pending or m.awaiting for m in self.meshes.values()):
                await asyncio.sleep(min(0.25, self.join_window))
                self.flush_due()
