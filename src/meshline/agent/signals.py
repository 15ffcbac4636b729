"""The golden signals of this sidecar, from its Envoy's own counters, reported to the control plane.

Envoy counts every HTTP request once, when it ends, in the stats the render step's stats access
logger keeps (:mod:`meshline.xds.stat_names`: ``meshline.requests`` and
``meshline.request_duration``, tagged with the edge, the answering version, the code...; the
same per method and path under ``meshline.paths``).
Every :data:`INTERVAL_S` this service reads them from Envoy's admin endpoint (one call; the
latency histograms with Envoy's detailed bins) and posts to the control plane what changed
since the totals it last had accepted (``POST .../dataplanes/<name>/signals``, with the
dataplane's token; the control plane side is ``meshline.telemetry.signals``).

Exactness: the totals are Envoy's, so every request is in them. A post that fails leaves the
accepted totals as they were, so the next post carries its requests too; a counter lower than
it was means Envoy restarted (counted from zero again). What Envoy counted in its last second
before it stops is sent once more by :meth:`SignalReporter.flush`, which the agent awaits
before stopping Envoy (the control plane takes it from a dataplane just
deregistered too). The cost is per second, not per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from meshline.agent import http
from meshline.agent.config import AgentConfig
from meshline.agent.envoy import ADMIN_URL
from meshline.xds import stat_names as m

if TYPE_CHECKING:
    from meshline.agent.api import AgentApi

log = logging.getLogger("meshline.agent.signals")

# Like the access-log flush (500 ms): a tap line waits until its request is in `stat`.
INTERVAL_S = 0.5
ADMIN_TIMEOUT_S = 3.0
HOLD_S = 2.0  # at most this long a count waits for its latencies (Envoy merges them every second)
# stat name prefix -> (is a counter, the pair added to its labels: which scope)
PREFIXES = {
    f"{m.SCOPE}.{m.REQUESTS}.": (True, ()),
    f"{m.SCOPE}.{m.DURATION}.": (False, ()),
    f"{m.PATHS_SCOPE}.{m.REQUESTS}.": (True, (("scope", "paths"),)),
    f"{m.PATHS_SCOPE}.{m.DURATION}.": (False, (("scope", "paths"),)),
}
QUERY = "/stats?format=json&histogram_buckets=detailed&filter=" + quote(
    f"^{m.SCOPE}\\.(paths\\.)?({m.REQUESTS}|{m.DURATION})\\.", safe="")
# Every tag the stats logger may set (render.metrics), in any order.
KEYS = frozenset({
    m.REPORTER, m.MESH, m.SOURCE_SERVICE, m.SOURCE_VERSION, m.SOURCE_ZONE, m.DESTINATION_SERVICE,
    m.DESTINATION_VERSION, m.DESTINATION_ZONE, m.RESPONSE_CODE, m.MESH_DENIED, m.RESPONSE_FLAGS,
    m.GRPC_STATUS, m.PROTOCOL, m.SOURCE_CLAIMED, m.METHOD, m.PATH,
})

Labels = tuple[tuple[str, str], ...]


def split_tags(rest: str) -> Labels | None:
    """``reporter.source.mesh.default.response_code.200`` -> the (tag, value) pairs.

    Envoy joins a stat's tags into its name with dots, and values may hold dots (a SPIFFE
    trust domain, a version ``1.2``): a value ends where the next ``.<tag>.`` of a tag not
    yet seen begins (each tag appears once). None when ``rest`` is not such a name."""
    out: list[tuple[str, str]] = []
    left = set(KEYS)
    pos = 0
    while pos < len(rest):
        key = next((k for k in left if rest.startswith(k + ".", pos)), None)
        if key is None:
            return None
        left.discard(key)
        start = pos + len(key) + 1
        end = min((i for i in (rest.find(f".{k}.", start) for k in left) if i >= 0), default=len(rest))
        value = rest[start:end]
        out.append((key, "" if value == "-" else value))
        pos = end + 1
    return tuple(sorted(out))


@dataclass
class Totals:
    """Envoy's cumulative counts: requests per label set, and latency bins (upper bound in
    microseconds -> requests) per label set."""

    counts: dict[Labels, int] = field(default_factory=dict)
    bins: dict[Labels, dict[float, int]] = field(default_factory=dict)


def _labels(name: str, counter: bool) -> Labels | None:
    for prefix, (is_counter, extra) in PREFIXES.items():
        if is_counter == counter and name.startswith(prefix):
            tags = split_tags(name[len(prefix):])
            return None if tags is None else tuple(sorted(tags + extra))
    return None


def read(doc: Mapping[str, Any]) -> Totals:
    """Totals from Envoy's ``/stats?format=json&histogram_buckets=detailed``."""
    out = Totals()
    for item in doc.get("stats", ()):
        name = item.get("name")
        labels = _labels(name, counter=True) if isinstance(name, str) else None
        if labels is not None:
            out.counts[labels] = out.counts.get(labels, 0) + int(item.get("value", 0))
        for detail in (item.get("histograms") or {}).get("details", ()):
            labels = _labels(detail.get("name", ""), counter=False)
            if labels is None:
                continue
            bins = out.bins.setdefault(labels, {})
            for b in detail.get("totals", ()):
                upper = round(float(b.get("lower_bound", 0)) + float(b.get("width", 0)), 3)
                bins[upper] = bins.get(upper, 0) + int(b.get("count", 0))
    return out


def delta(now: Totals, before: Totals) -> list[dict[str, Any]]:
    """The rows to post: what ``now`` counted beyond ``before`` (a lower total: Envoy restarted)."""
    rows = []
    for labels in now.counts.keys() | now.bins.keys():
        count = now.counts.get(labels, 0)
        prior = before.counts.get(labels, 0)
        n = count - prior if count >= prior else count
        latency = []
        old = before.bins.get(labels, {})
        new = now.bins.get(labels, {})
        restarted = any(v < old.get(k, 0) for k, v in new.items())
        for upper, c in sorted(new.items()):
            d = c if restarted else c - old.get(upper, 0)
            if d > 0:
                latency.append([round(upper / 1000, 6), d])  # ms
        if n > 0 or latency:
            rows.append({"labels": dict(labels), "count": n, "latency": latency})
    return rows


class SignalReporter:
    """A LocalService of the agent: reads Envoy's request counters every second and reports
    what changed (see the module docstring)."""

    name = "signals"

    def __init__(self, interval: float = INTERVAL_S) -> None:
        self.interval = interval
        self.acked = Totals()
        self.posted = 0  # requests the control plane accepted (both sides' rows)
        self._api: AgentApi | None = None
        self._path = ""
        self._admin_socket: Path | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._last_error = 0.0
        self._through = 0.0  # the last accepted post's "through"
        self._scraped = 0.0  # when Envoy was last read
        self._held: dict[Labels, tuple[float, float]] = {}  # counts waiting for latencies: since, scrape before
        self._untimed: dict[Labels, int] = {}  # requests counted that never got a latency (abandoned)

    async def start(self, config: AgentConfig) -> None:
        from meshline.agent.api import AgentApi
        from meshline.api.common import resource_path

        verify: bool | str = str(config.ca_file) if config.ca_file else True
        self._api = AgentApi(config.api_url, token=config.token, timeout=5.0, verify=verify)
        self._path = resource_path("Dataplane", config.mesh, config.name) + "/signals"
        self._admin_socket = config.admin_socket
        self._task = asyncio.create_task(self._run(), name="signals")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def before_envoy_stops(self) -> None:
        """The agent's call just before it stops Envoy: what Envoy counted since the last post."""
        if self._task is not None:
            await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> bool:
        """Read Envoy's totals and post what changed; False when either failed (the next
        flush sends it)."""
        async with self._lock:
            scraped = time.time()  # the clock of Envoy's access-log entries (same host)
            now = await self._read()
            if now is None:
                return False
            ready, through = self._with_latencies(now, scraped)
            rows = delta(ready, self.acked)
            if not rows and through <= self._through:
                self.acked = ready
                return True
            assert self._api is not None
            try:
                await self._api.request("POST", self._path, json={"rows": rows, "through": through})
            except Exception as err:
                if time.monotonic() - self._last_error > 10:
                    self._last_error = time.monotonic()
                    log.warning("reporting request counters failed (retrying every %.0fs): %s", self.interval, err)
                return False
            self.acked, self._through = ready, through
            self.posted += sum(r["count"] for r in rows)
            return True

    def _with_latencies(self, now: Totals, scraped: float) -> tuple[Totals, float]:
        """``now`` with each count held back to what its latency histogram already holds.

        Envoy counts a request when it ends but merges histograms on its next stats flush
        (within a second): posting the count first would show requests without latencies
        (a p50 of nothing). A count waits for its latencies at most :data:`HOLD_S` (a request
        the caller abandoned has none). Returns the totals to post and the time up to which
        they hold every request that ended (the last scrape before the oldest wait)."""
        counts = dict(now.counts)
        through = scraped
        for labels, count in now.counts.items():
            # requests that will never have a latency (given up on before) do not hold others
            timed = sum(now.bins.get(labels, {}).values()) + self._untimed.get(labels, 0)
            if count <= timed:
                self._held.pop(labels, None)
                continue
            since, before = self._held.setdefault(labels, (scraped, self._scraped))
            if scraped - since >= HOLD_S:
                self._untimed[labels] = count - timed + self._untimed.get(labels, 0)
                self._held.pop(labels, None)
                continue
            prior = self.acked.counts.get(labels, 0)
            counts[labels] = min(count, max(timed, prior)) if count >= prior else min(count, timed)
            through = min(through, before)
        self._scraped = scraped
        return Totals(counts=counts, bins=now.bins), through

    async def _read(self) -> Totals | None:
        try:
            resp = await http.request("GET", ADMIN_URL + QUERY, timeout=ADMIN_TIMEOUT_S, uds=self._admin_socket)
        except http.HttpError as err:
            log.debug("reading Envoy's stats failed: %s", err)
            return None
        if resp.status != 200:
            return None
        try:
            return read(json.loads(resp.body))
        except (ValueError, TypeError, AttributeError) as err:
            log.debug("Envoy's stats were not what was expected: %s", err)
            return None
