"""The dataplane's Prometheus endpoint: mesh-level ``meshline_*`` series, Envoy's raw stats
and, optionally, the app's own metrics, in one scrape.

Each scrape asks Envoy's admin ``/stats/prometheus`` and translates (pure functions,
:func:`translate`):

* HTTP: the ``envoy_meshline_*`` stats the render step's stats access logger keeps
  (:mod:`meshline.render.metrics`, names in :mod:`meshline.xds.stat_names`) become ``meshline_requests_total``,
  ``meshline_request_duration_seconds`` (from microseconds), ``meshline_request_bytes`` and
  ``meshline_response_bytes``, every series with the same full label set, plus
  ``response_code_class``; on the destination side the caller's SPIFFE identity becomes its
  service name.
* TCP: Envoy's tcp_proxy and listener stats of this sidecar's TCP listeners become
  ``meshline_tcp_connections_opened_total``/``..._closed_total`` and
  ``meshline_tcp_received_bytes_total``/``..._sent_bytes_total``, labelled from what the agent
  knows about its listeners (they update while connections are open).
* Everything else Envoy says passes through unchanged under its ``envoy_`` names.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from envoy.config.metrics.v3 import stats_pb2
from envoy.type.matcher.v3 import string_pb2

from meshline.agent import http
from meshline.agent.config import AgentConfig
from meshline.agent.envoy import ADMIN_URL
from meshline.core.dataplane import DataplaneMetrics
from meshline.core.errors import MeshlineError
from meshline.xds import names
from meshline.xds import stat_names as m
from meshline.xds.stat_names import service_of_identity

log = logging.getLogger("meshline.agent.metrics")

PATH = DataplaneMetrics.model_fields["path"].default
SCRAPE_TIMEOUT_S = 3.0
# Histograms are merged from Envoy's worker threads on each stats flush (default every 5 s):
# flush every second so a scrape sees requests that ended a second ago.
STATS_FLUSH_INTERVAL_S = 1
# Bucket bounds in the unit Envoy records (microseconds, bytes), as users see them (le):
# 250 us to 5 min. Envoy's histograms keep two significant digits (a 204 ms request sits in
# the 200-210 ms bin), so Envoy is given each bound minus one unit and the agent reports the
# bound: a bucket le="0.2" then counts the requests that took less than 200 ms, and requests
# slowed by a 200 ms delay land above it, as they should.
DURATION_BUCKETS_US = tuple(int(ms * 1000) for ms in (
    0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 60000, 300000))
SIZE_BUCKETS_BYTES = (10, 100, 1000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000)
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"

HTTP_LABELS = (
    m.REPORTER, m.MESH, m.SOURCE_SERVICE, m.SOURCE_VERSION, m.SOURCE_ZONE, m.DESTINATION_SERVICE,
    m.DESTINATION_VERSION, m.DESTINATION_ZONE, m.RESPONSE_CODE, "response_code_class", m.GRPC_STATUS, m.PROTOCOL,
    m.RESPONSE_FLAGS,
)
TCP_LABELS = (
    m.REPORTER, m.MESH, m.SOURCE_SERVICE, m.SOURCE_VERSION, m.SOURCE_ZONE, m.DESTINATION_SERVICE,
    m.DESTINATION_VERSION, m.DESTINATION_ZONE, m.PROTOCOL,
)

ENVOY_PREFIX = f"envoy_{m.SCOPE}_"
# envoy_meshline_<stat> -> (meshline name, type, divide values and bucket bounds by)
HTTP_SERIES: dict[str, tuple[str, str, float]] = {
    f"{ENVOY_PREFIX}{m.REQUESTS}": ("meshline_requests_total", "counter", 1.0),
    f"{ENVOY_PREFIX}{m.DURATION}": ("meshline_request_duration_seconds", "histogram", 1_000_000.0),
    f"{ENVOY_PREFIX}{m.REQUEST_BYTES}": ("meshline_request_bytes", "histogram", 1.0),
    f"{ENVOY_PREFIX}{m.RESPONSE_BYTES}": ("meshline_response_bytes", "histogram", 1.0),
}
# Envoy's tcp_proxy stats (by stat prefix = listener name) -> meshline counter
TCP_SERIES = {
    "envoy_tcp_downstream_cx_total": "meshline_tcp_connections_opened_total",
    "envoy_tcp_downstream_cx_rx_bytes_total": "meshline_tcp_received_bytes_total",
    "envoy_tcp_downstream_cx_tx_bytes_total": "meshline_tcp_sent_bytes_total",
}
LISTENER_CLOSED = "envoy_listener_downstream_cx_destroy"  # by listener address <ip>_<port>
TCP_CLOSED = "meshline_tcp_connections_closed_total"

HELP = {
    "meshline_requests_total": "Requests, counted once each when they end (retries inside the mesh are not requests)",
    "meshline_request_duration_seconds": "Request duration, first byte in to last byte out, as this sidecar saw it",
    "meshline_request_bytes": "Request body bytes",
    "meshline_response_bytes": "Response body bytes",
    "meshline_tcp_connections_opened_total": "TCP connections accepted by this sidecar's TCP listeners",
    "meshline_tcp_connections_closed_total": "TCP connections closed on this sidecar's TCP listeners",
    "meshline_tcp_received_bytes_total": "TCP bytes from the caller toward the service (live)",
    "meshline_tcp_sent_bytes_total": "TCP bytes from the service back to the caller (live)",
    "meshline_dataplane_envoy_up": "1 when Envoy's admin endpoint answered this scrape",
    "meshline_dataplane_app_metrics_up": "1 when the app's metrics (--app-metrics-url) were merged into this scrape",
}
RESERVED_PREFIXES = ("meshline_", "envoy_")  # app metrics with these names are left out


def stats_config() -> stats_pb2.StatsConfig:
    """Bootstrap stats settings: histogram buckets for the meshline_* histograms."""

    def bucket(stat: str, bounds: Iterable[float]) -> stats_pb2.HistogramBucketSettings:
        return stats_pb2.HistogramBucketSettings(
            match=string_pb2.StringMatcher(prefix=f"{m.SCOPE}.{stat}"), buckets=[b - 1 for b in bounds]
        )

    return stats_pb2.StatsConfig(
        histogram_bucket_settings=[
            bucket(m.DURATION, DURATION_BUCKETS_US),
            bucket(m.REQUEST_BYTES, SIZE_BUCKETS_BYTES),
            bucket(m.RESPONSE_BYTES, SIZE_BUCKETS_BYTES),
        ]
    )


# -- Prometheus text format ------------------------------------------------------------

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(?:\s+\S+)?\s*$")
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Family:
    name: str
    type: str = "untyped"
    help: str = ""
    samples: list[Sample] = field(default_factory=list)


def _labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    body = text[1:-1]
    pos = 0
    while pos < len(body):
        match = _LABEL_RE.match(body, pos)
        if match is None:
            raise ValueError(f"cannot parse labels {text!r}")
        out[match.group(1)] = re.sub(r"\\.", lambda e: _UNESCAPE.get(e.group(0), e.group(0)), match.group(2))
        pos = match.end()
    return out


def _suffixed(name: str, family: Family) -> bool:
    if name == family.name:
        return True
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}.get(family.type, ())
    return any(name == family.name + s for s in suffixes)


def parse(text: str) -> dict[str, Family]:
    """Families of Prometheus text exposition (0.0.4), in order; lines it cannot read are skipped."""
    families: dict[str, Family] = {}
    current: Family | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("TYPE", "HELP"):
                current = families.setdefault(parts[2], Family(parts[2]))
                if parts[1] == "TYPE" and len(parts) == 4:
                    current.type = parts[3].strip()
                elif parts[1] == "HELP":
                    current.help = parts[3] if len(parts) == 4 else ""
            continue
        match = _SAMPLE_RE.match(line)
        if match is None:
            continue
        name, labels, value = match.group(1), match.group(2), match.group(3)
        try:
            sample = Sample(name, _labels(labels) if labels else {}, float(value))
        except ValueError:
            continue
        if current is None or not _suffixed(name, current):
            current = families.setdefault(name, Family(name))
        current.samples.append(sample)
    return families


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return format(value, ".12g")


def render(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for fam in families:
        if not fam.samples:
            continue
        if fam.help:
            lines.append(f"# HELP {fam.name} {fam.help}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        for s in fam.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels.items())
            lines.append(f"{s.name}{{{labels}}} {number(s.value)}" if labels else f"{s.name} {number(s.value)}")
    return "\n".join(lines) + "\n" if lines else ""


# -- translation -------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What the agent knows about its sidecar's listeners (for TCP labels)."""

    mesh: str
    service: str
    tags: Mapping[str, str]
    inbound_port: int
    upstreams: Mapping[int, str]  # outbound port -> service

    @classmethod
    def of(cls, config: AgentConfig) -> Workload:
        return cls(config.mesh, config.service, dict(config.tags), config.inbound_port,
                   {u.port: u.service for u in config.upstreams})

    def tcp_labels(self) -> dict[str, dict[str, str]]:
        """tcp_proxy stat prefix (the listener's name) -> labels of its series."""
        own = {"version": self.tags.get("version", ""), "zone": self.tags.get("zone", "")}
        out = {
            names.stat_prefix(names.inbound_listener(self.inbound_port)): {
                m.REPORTER: "destination", m.MESH: self.mesh, m.DESTINATION_SERVICE: self.service,
                m.DESTINATION_VERSION: own["version"], m.DESTINATION_ZONE: own["zone"],
            }
        }
        for port, service in self.upstreams.items():
            out[names.stat_prefix(names.outbound_listener(port))] = {
                m.REPORTER: "source", m.MESH: self.mesh, m.SOURCE_SERVICE: self.service,
                m.SOURCE_VERSION: own["version"], m.SOURCE_ZONE: own["zone"], m.DESTINATION_SERVICE: service,
            }
        return {prefix: {k: labels.get(k, "") for k in TCP_LABELS} | {m.PROTOCOL: "tcp"}
                for prefix, labels in out.items()}


def code_class(code: str) -> str:
    return f"{code[0]}xx" if len(code) == 3 and code.isdigit() and code[0] != "0" else ""


def http_labels(envoy_labels: Mapping[str, str]) -> dict[str, str]:
    """The full meshline label set from the tags Envoy recorded (absent or '-' -> "")."""
    raw = {k: ("" if v == "-" else v) for k, v in envoy_labels.items()}
    if raw.get(m.REPORTER) == "destination":
        raw[m.SOURCE_SERVICE] = service_of_identity(raw.get(m.SOURCE_SERVICE, ""))
    # One definition of success with `meshline stat`: a mesh denial is its own class, and
    # no response at all (code 0) has none, so `response_code_class=~"[1-4]xx"` is success.
    raw["response_code_class"] = "denied" if raw.get(m.MESH_DENIED) else code_class(raw.get(m.RESPONSE_CODE, ""))
    return {k: raw.get(k, "") for k in HTTP_LABELS}


class _Builder:
    """Collects meshline samples; samples that end up with equal labels are added up."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}
        self._index: dict[tuple[str, tuple[tuple[str, str], ...]], Sample] = {}

    def add(self, family: str, kind: str, sample: str, labels: dict[str, str], value: float) -> None:
        fam = self.families.setdefault(family, Family(family, kind, HELP.get(family, "")))
        key = (sample, tuple(labels.items()))
        prior = self._index.get(key)
        if prior is not None:
            prior.value += value
            return
        s = Sample(sample, labels, value)
        self._index[key] = s
        fam.samples.append(s)


def _le(value: str, scale: float) -> str:
    """Envoy's bound (one unit below ours, see DURATION_BUCKETS_US) -> the bound users see."""
    return value if value in ("+Inf", "Inf") else number((float(value) + 1) / scale)


def translate(envoy: Mapping[str, Family], workload: Workload) -> list[Family]:
    """meshline_* families from Envoy's parsed Prometheus output, then Envoy's own families."""
    out = _Builder()
    for envoy_name, (name, kind, scale) in HTTP_SERIES.items():
        fam = envoy.get(envoy_name)
        for s in fam.samples if fam else ():
            labels = http_labels({k: v for k, v in s.labels.items() if k != "le"})
            suffix = s.name[len(envoy_name):]
            if suffix == "_bucket":
                labels["le"] = _le(s.labels.get("le", "+Inf"), scale)
            value = s.value / scale if suffix == "_sum" else s.value
            out.add(name, kind, name + suffix if kind == "histogram" else name, labels, value)

    tcp = workload.tcp_labels()
    tcp_ports: set[str] = set()
    for envoy_name, name in TCP_SERIES.items():
        fam = envoy.get(envoy_name)
        for s in fam.samples if fam else ():
            prefix = s.labels.get("envoy_tcp_prefix", "")
            if prefix in tcp:
                tcp_ports.add(prefix.rsplit("_", 1)[-1])
                out.add(name, "counter", name, dict(tcp[prefix]), s.value)
    closed = envoy.get(LISTENER_CLOSED)
    by_port = {prefix.rsplit("_", 1)[-1]: labels for prefix, labels in tcp.items()}
    for s in closed.samples if closed else ():
        port = s.labels.get("envoy_listener_address", "").rsplit("_", 1)[-1]
        if port in tcp_ports:
            out.add(TCP_CLOSED, "counter", TCP_CLOSED, dict(by_port[port]), s.value)

    raw = [f for name, f in envoy.items() if not name.startswith(ENVOY_PREFIX)]
    return [*out.families.values(), *raw]


def app_metrics(text: str) -> str:
    """The app's exposition as it is, less families named like ours (they would clash)."""
    kept: list[str] = []
    family = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            parts = stripped.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("TYPE", "HELP", "UNIT"):
                family = parts[2]
            elif parts[:2] == ["#", "EOF"]:
                continue
            if family.startswith(RESERVED_PREFIXES):
                continue
        elif stripped and (family.startswith(RESERVED_PREFIXES) or stripped.startswith(RESERVED_PREFIXES)):
            continue
        kept.append(line)
    return "\n".join(kept).strip("\n") + "\n" if any(x.strip() for x in kept) else ""


def check_app_metrics_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MeshlineError(
            f"--app-metrics-url '{url}' must be an http(s) URL, e.g. http://127.0.0.1:8080/metrics"
        )
    return url


def _gauge(name: str, value: float) -> Family:
    return Family(name, "gauge", HELP[name], [Sample(name, {}, value)])


# -- the endpoint ---------------------------------------------------------------------------


class MetricsService:
    """Serves GET <address>:<port>/metrics; a LocalService of the agent (started before Envoy:
    until Envoy answers, a scrape says so with meshline_dataplane_envoy_up 0)."""

    name = "metrics"

    def __init__(self, port: int, app_url: str | None = None) -> None:
        self.port = port
        self.app_url = app_url
        self._server: asyncio.Server | None = None
        self._workload: Workload | None = None
        self._admin_socket: Path | None = None

    async def start(self, config: AgentConfig) -> None:
        self._workload = Workload.of(config)
        self._admin_socket = config.admin_socket
        try:
            self._server = await http.serve(config.address, self.port, self._handle)
        except OSError as err:
            raise MeshlineError(
                f"cannot serve metrics on {config.address}:{self.port} ({err.strerror});"
                " pick another --metrics-port or 0 for none"
            ) from None

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _get(self, url: str, uds: Path | None = None) -> str | None:
        try:
            resp = await http.request("GET", url, headers={"Accept": "text/plain;version=0.0.4"},
                                      timeout=SCRAPE_TIMEOUT_S, uds=uds)  # fmt: skip
        except http.HttpError as err:
            log.debug("scraping %s failed: %s", url, err)
            return None
        return resp.text if resp.status == 200 else None

    async def scrape(self) -> str:
        assert self._workload is not None
        envoy_text = await self._get(f"{ADMIN_URL}/stats/prometheus", self._admin_socket)
        families = translate(parse(envoy_text or ""), self._workload)
        families.append(_gauge("meshline_dataplane_envoy_up", 1.0 if envoy_text is not None else 0.0))
        app_text = ""
        if self.app_url:
            fetched = await self._get(self.app_url)
            app_text = app_metrics(fetched) if fetched is not None else ""
            families.append(_gauge("meshline_dataplane_app_metrics_up", 1.0 if fetched is not None else 0.0))
        return render(families) + app_text

    async def _handle(self, method: str, path: str) -> tuple[int, str, bytes]:
        if path != PATH:
            return 404, "text/plain", b"not found: the agent serves " + PATH.encode() + b"\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"GET only\n"
        return 200, TEXT_FORMAT, (await self.scrape()).encode()


def service_for(config: AgentConfig) -> list[MetricsService]:
    """The agent's metrics endpoint, if it has a port (the CLI's --metrics-port)."""
    if not config.metrics_port:
        return []
    return [MetricsService(config.metrics_port, config.app_metrics_url)]
