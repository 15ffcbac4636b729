"""The telemetry intake: access-log records in; golden signals, live taps and explanations out.

Per mesh it keeps (all in memory, bounded):

* the last ``keep`` records of both sides, indexed by request id (for ``explain``);
* rolling stats per destination service, per edge (source -> destination) and per path;
* the mTLS seen on each edge (from the callee's side: did the caller present a certificate).

Which side counts: see :func:`meshline.telemetry.record.is_counted` (the caller's side, or
the callee's when the caller has no sidecar), so each request is counted once per edge.

A failed request whose caller only saw an error status come back is held back from taps
for up to ``join_window`` seconds waiting for the callee's half, which knows why (a denial,
a refused connection to the app); both halves share the x-request-id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from meshline.core.errors import FieldProblem, ValidationError
from meshline.telemetry.explain import EMPTY, ExplainContext, explain, explain_pair, explain_request
from meshline.telemetry.record import OUTBOUND, LogRecord, is_counted
from meshline.telemetry.window import WINDOWS, RollingStats

ContextFor = Callable[[LogRecord], ExplainContext]
DEFAULT_KEEP = 10_000
MAX_PATHS = 500  # distinct (service, method, path) keys per mesh; least recently seen dropped
TLS_SAMPLE = 100  # inbound entries per edge remembered for the mTLS column
TAP_QUEUE = 10_000


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

    def __post_init__(self) -> None:
        self._status = parse_status(self.status)

    def matches(self, r: LogRecord) -> bool:
        if self.service and self.service not in (r.source, r.destination):
            return False
        if self.path and not r.path.startswith(self.path):
            return False
        return not self.status or (self._status(r.status) if r.protocol == "http" else r.failed)


@dataclass
class Subscription:
    mesh: str
    filter: TapFilter
    # None: the intake is stopping, end the tap
    queue: asyncio.Queue[LogRecord | None] = field(default_factory=lambda: asyncio.Queue(TAP_QUEUE))
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
    def __init__(self, keep: int) -> None:
        self.recent: deque[LogRecord] = deque()
        self.keep = keep
        self.by_request: dict[str, list[LogRecord]] = {}
        self.services: dict[str, RollingStats] = {}
        self.edges: dict[tuple[str, str], RollingStats] = {}
        self.paths: OrderedDict[tuple[str, str, str], RollingStats] = OrderedDict()
        self.edge_tls: dict[tuple[str, str], deque[bool]] = {}
        self.edge_protocol: dict[tuple[str, str], str] = {}
        self.pending: dict[tuple[str, str, str], _Pending] = {}  # (request id, source, destination)
        self.received = 0

    def remember(self, r: LogRecord) -> None:
        self.received += 1
        self.recent.append(r)
        if r.request_id:
            self.by_request.setdefault(r.request_id, []).append(r)
        while len(self.recent) > self.keep:
            old = self.recent.popleft()
            halves = self.by_request.get(old.request_id)
            if halves is not None:
                if old in halves:
                    halves.remove(old)
                if not halves:
                    del self.by_request[old.request_id]

    def count(self, r: LogRecord) -> None:
        failed = r.failed
        self.services.setdefault(r.destination, RollingStats()).add(r.time, failed, r.duration_ms)
        self.edges.setdefault(r.edge, RollingStats()).add(r.time, failed, r.duration_ms)
        self.edge_protocol[r.edge] = r.protocol
        if r.protocol == "http":
            key = (r.destination, r.method, r.path.split("?", 1)[0])
            stats = self.paths.pop(key, None) or RollingStats()
            self.paths[key] = stats
            stats.add(r.time, failed, r.duration_ms)
            while len(self.paths) > MAX_PATHS:
                self.paths.popitem(last=False)

    def observe_tls(self, r: LogRecord) -> None:
        if r.mtls is not None:
            self.edge_tls.setdefault(r.edge, deque(maxlen=TLS_SAMPLE)).append(r.mtls)

    def mtls(self, edge: tuple[str, str]) -> str:
        seen = self.edge_tls.get(edge)
        if not seen:
            return "unknown"
        if all(seen):
            return "yes"
        return "no" if not any(seen) else "mixed"

    def halves(self, request_id: str) -> list[LogRecord]:
        return list(self.by_request.get(request_id, ()))


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
        keep: int = DEFAULT_KEEP,
        join_window: float = 1.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.context_for = context_for or (lambda r: EMPTY)
        self.keep = keep
        self.join_window = join_window
        self.clock = clock
        self.meshes: dict[str, MeshTelemetry] = {}
        self.subscriptions: list[Subscription] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def mesh(self, name: str) -> MeshTelemetry:
        m = self.meshes.get(name)
        if m is None:
            m = self.meshes[name] = MeshTelemetry(self.keep)
        return m

    # -- in ------------------------------------------------------------------------
    def ingest(self, records: Iterable[LogRecord]) -> None:
        for r in records:
            self._ingest(r)
        if any(m.pending for m in self.meshes.values()) and self._wake is not None:
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
        if is_counted(r):
            m.count(r)
            inbound = next((o for o in others if o.direction != OUTBOUND), None)
            if r.direction == OUTBOUND and inbound is not None:
                r.explanation = explain_pair(r, inbound)
            elif _needs_other_half(r):
                m.pending[key] = _Pending(r, self.clock() + self.join_window)
                return
            self._publish(r)
            return
        m.observe_tls(r)
        for o in others:  # the caller's half arrived first: complete it
            if o.direction == OUTBOUND:
                o.explanation = explain_pair(o, r)
        waiting = m.pending.pop(key, None) if r.request_id else None
        if waiting is not None:
            self._publish(waiting.record)

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
        return n

    def _publish(self, r: LogRecord) -> None:
        if r.request_id and (r.failed or r.status >= 400):
            # Deeper hops of the same request (apps passing x-request-id on) that already
            # came in may say where the failure started.
            chain = sorted(
                (o for o in self.mesh(r.mesh).halves(r.request_id) if o.time >= r.time),
                key=lambda o: (o.time, o.direction != OUTBOUND),
            )
            if any(not same_hop(o, r) for o in chain):
                # A copy for the taps: the stored entry keeps its own hop's explanation.
                r = replace(r, explanation=explain_request(chain) or r.explanation)
        for sub in self.subscriptions:
            if sub.mesh == r.mesh and sub.filter.matches(r):
                sub.offer(r)

    # -- taps ----------------------------------------------------------------------
    def subscribe(self, mesh: str, flt: TapFilter) -> Subscription:
        sub = Subscription(mesh, flt)
        self.subscriptions.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self.subscriptions:
            self.subscriptions.remove(sub)

    # -- out -----------------------------------------------------------------------
    def stats(self, mesh: str, window: str = "1m", service: str = "", paths: int = 0) -> dict[str, Any]:
        if window not in WINDOWS:
            raise ValidationError([FieldProblem("window", f"'{window}' is not a window; use {', '.join(WINDOWS)}")])
        seconds = WINDOWS[window]
        now = self.clock()
        m = self.mesh(mesh)

        def row(stats: RollingStats) -> dict[str, Any]:
            return {**stats.summary(now, seconds).to_json(), "total": stats.total, "totalFailures": stats.total_failures}

        services = [
            {"service": name, **row(s)}
            for name, s in sorted(m.services.items())
            if not service or name == service
        ]
        edges = [
            {"source": src, "destination": dst, "protocol": m.edge_protocol.get((src, dst), ""),
             "mtls": m.mtls((src, dst)), **row(s)}
            for (src, dst), s in sorted(m.edges.items())
            if not service or service in (src, dst)
        ]
        out: dict[str, Any] = {"mesh": mesh, "window": window, "at": now, "services": services, "edges": edges,
                               "received": m.received}
        if paths:
            rows = [
                {"service": svc, "method": method, "path": path, **row(s)}
                for (svc, method, path), s in m.paths.items()
                if not service or svc == service
            ]
            rows.sort(key=lambda x: (-x["requests"], x["service"], x["path"]))
            out["paths"] = rows[:paths]
        return out

    def request(self, mesh: str, request_id: str) -> list[LogRecord]:
        """Every entry of one request, by x-request-id (or of a trace id), in call order:
        both halves of each hop; more hops when the apps pass the id or the trace on."""
        m = self.mesh(mesh)
        halves = m.halves(request_id)
        if not halves:
            halves = [r for r in m.recent if r.trace_id and r.trace_id == request_id]
        return sorted(halves, key=lambda r: (r.time, r.direction != OUTBOUND))

    def recent(self, mesh: str, flt: TapFilter, limit: int) -> list[LogRecord]:
        if limit <= 0:
            return []
        out = [r for r in reversed(self.mesh(mesh).recent) if is_counted(r) and flt.matches(r)]
        return list(reversed(out[:limit]))

    # -- lifecycle (on the control plane's loop) --------------------------------------
    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._flusher(), name="telemetry-join")

    async def stop(self) -> None:
        for sub in self.subscriptions:
            sub.close()
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
            while any(m.pending for m in self.meshes.values()):
                await asyncio.sleep(min(0.25, self.join_window))
                self.flush_due()
