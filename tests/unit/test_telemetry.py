"""The telemetry intake without Envoy: settings validation, entry conversion, rolling stats,
counting once per edge, joining the two halves of a request, tap filters."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2

from meshline.core.errors import ValidationError
from meshline.kinds import default_kinds
from meshline.telemetry import tags as t
from meshline.telemetry.convert import flag_codes, from_http, from_tcp, trace_id
from meshline.telemetry.intake import (
    EncodedRow,
    Subscription,
    TapFilter,
    TelemetryIntake,
    TelemetryLimits,
    parse_status,
)
from meshline.telemetry.record import LogRecord, is_counted
from meshline.telemetry.window import RollingStats, bucket_of, bucket_upper

KINDS = default_kinds()


def mesh_problems(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        KINDS.decode({"kind": "Mesh", "name": "m", "spec": spec})
    return [str(p) for p in info.value.problems]


# -- settings -------------------------------------------------------------------------
def test_logging_and_tracing_settings_decode() -> None:
    spec = KINDS.decode({"kind": "Mesh", "name": "m", "spec": {
        "logging": {"file": "/var/log/meshline/{mesh}/{service}.log", "stream": False},
        "tracing": {"otlp": "otel-collector.observability:4317", "sampling": 12.5}}}).spec
    assert spec.to_json()["logging"] == {"file": "/var/log/meshline/{mesh}/{service}.log", "stream": False}
    assert spec.to_json()["tracing"] == {"otlp": "otel-collector.observability:4317", "sampling": 12.5}
    zipkin = KINDS.decode({"kind": "Mesh", "name": "m", "spec": {"tracing": {"zipkin": "[::1]:9411"}}}).spec
    assert zipkin.to_json()["tracing"] == {"zipkin": "[::1]:9411", "sampling": 100.0}
    default = KINDS.decode({"kind": "Mesh", "name": "m"}).spec
    assert default.to_json()["logging"] == {"stream": True} and "tracing" not in default.to_json()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"tracing": {"otlp": "c:4317", "sampling": 101}}, "spec.tracing.sampling: 101 is not a percentage"),
        ({"tracing": {"otlp": "c:4317", "sampling": -1}}, "spec.tracing.sampling: -1 is not a percentage"),
        ({"tracing": {"otlp": "c:4317", "sampling": "all"}}, "spec.tracing.sampling: must be a number"),
        ({"tracing": {"otlp": "c:4317", "sampling": True}}, "spec.tracing.sampling: must be a number from 0 to 100"),
        ({"tracing": {"otlp": "collector"}}, "spec.tracing.otlp: 'collector' must be HOST:PORT"),
        ({"tracing": {"otlp": "c:99999"}}, "spec.tracing.otlp: 'c:99999' must be HOST:PORT"),
        ({"tracing": {"otlp": "bad host:4317"}}, "spec.tracing.otlp: 'bad host:4317': 'bad host' is not an IP"),
        ({"tracing": {"otlp": "[zz]:4317"}}, "spec.tracing.otlp: '[zz]:4317': 'zz' is not an IPv6 address"),
        ({"tracing": {"sampling": 5}}, "spec.tracing: set exactly one collector"),
        ({"tracing": {"otlp": "a:4317", "zipkin": "b:9411"}}, "spec.tracing: set exactly one collector"),
        ({"tracing": {"zipkin": "zipkin"}}, "spec.tracing.zipkin: 'zipkin' must be HOST:PORT"),
        ({"logging": {"file": "logs/x.log"}}, "spec.logging.file: 'logs/x.log' must be an absolute path"),
        ({"logging": {"file": "/var/log/{dataplane}.log"}}, "spec.logging.file: unknown placeholder '{dataplane}'"),
        ({"logging": {"file": "/var/../etc/x"}}, "spec.logging.file: '/var/../etc/x' must name a file"),
        ({"logging": {"file": "/var/log/%x"}}, "spec.logging.file: '/var/log/%x' must not contain '%'"),
        ({"logging": {"stream": "sometimes"}}, "spec.logging.stream: must be true or false"),
        ({"logging": {"files": "/x"}}, "spec.logging.files: is not a known field"),
    ],
)
def test_bad_settings_name_the_field(spec: dict[str, Any], expected: str) -> None:
    found = mesh_problems(spec)
    assert any(p.startswith(expected) for p in found), found


# -- conversion -----------------------------------------------------------------------
def _http_entry(direction: str = "outbound", **tags: str) -> accesslog_pb2.HTTPAccessLogEntry:
    e = accesslog_pb2.HTTPAccessLogEntry()
    c = e.common_properties
    c.start_time.FromSeconds(1_700_000_000)
    c.duration.FromMilliseconds(250)
    c.upstream_remote_address.CopyFrom(
        address_pb2.Address(socket_address=address_pb2.SocketAddress(address="10.0.0.2", port_value=18080))
    )
    c.upstream_cluster = "orders"
    c.route_name = "default"
    c.upstream_request_attempt_count = 2
    c.response_flags.upstream_retry_limit_exceeded = True
    c.response_flags.no_healthy_upstream = True
    c.custom_tags.update({t.T_DIRECTION: direction, t.T_SECTION: "outbound orders (port 15001)",
                          t.T_DESTINATION: "orders", t.T_TRACEPARENT: "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
                          t.T_POLICIES: "Retry/r,Timeout/t", t.T_TIMEOUT_MS: "2000", **tags})
    e.request.request_method = base_pb2.GET
    e.request.path = "/orders/1?x=1"
    e.request.authority = "orders"
    e.request.request_id = "rid-1"
    e.response.response_code.value = 503
    e.response.response_code_details = "no_healthy_upstream"
    e.response.response_trailers["grpc-status"] = "14"
    return e


def test_an_outbound_entry_becomes_a_record() -> None:
    r = from_http(_http_entry(**{t.T_SOURCE: "web", t.T_DESTINATION_INSTANCE: "orders-1"}), "default", "web-1")
    assert (r.direction, r.source, r.destination, r.destination_instance) == ("outbound", "web", "orders", "orders-1")
    assert (r.method, r.path, r.status, r.grpc_status) == ("GET", "/orders/1?x=1", 503, 14)
    assert r.flags == ["UH", "URX"] and r.details == "no_healthy_upstream"
    assert (r.upstream_host, r.duration_ms, r.attempts) == ("10.0.0.2:18080", 250.0, 2)
    assert r.trace_id == "ab" * 16 and r.request_id == "rid-1"
    assert r.policies == ["Retry/r", "Timeout/t"] and r.route_timeout_ms == 2000
    assert r.time == 1_700_000_000 and is_counted(r)


def test_an_inbound_entry_names_its_caller_by_certificate_then_header() -> None:
    e = _http_entry("inbound", **{t.T_SOURCE_HEADER: "web"})
    plain = from_http(e, "default", "orders-1")
    assert (plain.source, plain.mtls, is_counted(plain)) == ("web", False, False)
    san = e.common_properties.tls_properties.peer_certificate_properties.subject_alt_name.add()
    san.uri = "spiffe://meshline.local/default/billing"
    e.common_properties.tls_properties.tls_version = accesslog_pb2.TLSProperties.TLSv1_3
    secure = from_http(e, "default", "orders-1")
    assert (secure.source, secure.mtls, secure.peer) == ("billing", True, "spiffe://meshline.local/default/billing")
    anonymous = from_http(_http_entry("inbound"), "default", "orders-1")
    assert anonymous.source == "external" and is_counted(anonymous)


def test_a_tcp_entry_becomes_a_record() -> None:
    e = accesslog_pb2.TCPAccessLogEntry()
    e.common_properties.custom_tags.update({t.T_DIRECTION: "outbound", t.T_PROTOCOL: "tcp", t.T_SOURCE: "web",
                                            t.T_DESTINATION: "payments"})
    e.common_properties.response_flags.upstream_connection_failure = True
    e.connection_properties.received_bytes = 10
    r = from_tcp(e, "default", "web-1")
    assert (r.protocol, r.flags, r.bytes_in, r.failed) == ("tcp", ["UF"], 10, True)


def test_flag_codes_and_trace_ids() -> None:
    flags = accesslog_pb2.ResponseFlags(upstream_request_timeout=True, delay_injected=True)
    flags.unauthorized_details.reason = accesslog_pb2.ResponseFlags.Unauthorized.EXTERNAL_SERVICE
    assert flag_codes(flags) == ["UT", "DI", "UAEX"]
    assert trace_id("00-" + "1" * 32 + "-" + "2" * 16 + "-01") == "1" * 32
    assert trace_id("", "463ac35c9f6413ad") == "463ac35c9f6413ad"
    assert trace_id("garbage") == ""


# -- rolling stats --------------------------------------------------------------------
def test_buckets_never_report_below_the_true_latency() -> None:
    for ms in (0.005, 0.3, 1.0, 199.9, 200.0, 200.1, 1234.5, 60_000.0):
        assert bucket_upper(bucket_of(ms)) >= ms
        assert bucket_upper(bucket_of(ms)) <= ms * 1.04 + 0.01


def test_percentiles_rates_and_windows() -> None:
    s = RollingStats()
    now = 10_000.0
    for i in range(100):  # 1..100 ms over the last 50 s, 10 failures
        s.add(now - 50 + i * 0.5, failed=i % 10 == 0, latency_ms=float(i + 1))
    s.add(now - 200, failed=True, latency_ms=5000)  # only in the 5 minute window
    one = s.summary(now, 60)
    assert (one.requests, one.failures) == (100, 10)
    assert one.success_rate == 0.9 and one.rps == pytest.approx(100 / 60)
    assert one.p50 is not None and 50 <= one.p50 <= 52
    assert one.p99 is not None and 99 <= one.p99 <= 100  # clipped to the largest seen
    five = s.summary(now, 300)
    assert (five.requests, five.failures) == (101, 11)
    assert five.p99 is not None and five.p99 >= 99
    assert s.summary(now + 400, 300).requests == 0 and (s.total, s.total_failures) == (101, 11)


def test_late_entries_land_in_their_second() -> None:
    s = RollingStats()
    s.add(100.5, False, 1)
    s.add(102.5, False, 1)
    s.add(101.2, True, 1)  # a batch from a slower sidecar
    assert s.summary(103, 60).failures == 1 and s.summary(103, 60).requests == 3


def test_a_remembered_summary_follows_the_window_and_new_requests() -> None:
    s = RollingStats()
    s.add(100.5, False, 1.0)
    s.add(130.5, True, 9.0)
    first = s.summary(150, 60)
    assert s.summary(150.9, 60) is first  # nothing entered or left: the same answer, not recomputed
    assert (first.requests, first.failures) == (2, 1)
    assert s.summary(160, 60).requests == 1  # second 100 left the window
    assert (s.summary(160, 60).failures, s.summary(160, 60).p99) == (1, 9.0)
    s.add(159.0, False, 3.0)  # a new request is in the next answer at once
    assert s.summary(160, 60).requests == 2 and 3.0 <= (s.summary(160, 60).p50 or 0) <= 3.12
    assert s.summary(191, 60).requests == 1 and s.summary(260, 60).requests == 0
    assert s.summary(150, 60).requests == 3  # asking about an earlier moment recomputes it


# -- the intake -----------------------------------------------------------------------
def record(direction: str = "outbound", rid: str = "r1", **kw: Any) -> LogRecord:
    base: dict[str, Any] = dict(time=1000.0, mesh="default", dataplane="web-1" if direction == "outbound" else "orders-1",
                                direction=direction, source="web", destination="orders", method="GET",
                                path="/orders", status=200, request_id=rid, duration_ms=5.0)
    base.update(kw)
    return LogRecord(**base)


def take(sub: Subscription) -> LogRecord:
    item = sub.queue.get_nowait()
    assert item is not None
    return item


class Clock:
    def __init__(self) -> None:
        self.now = 1010.0

    def __call__(self) -> float:
        return self.now


async def test_each_request_counts_once_per_edge() -> None:
    intake = TelemetryIntake(clock=Clock())
    sub = intake.subscribe("default", TapFilter(service="orders"))
    intake.ingest([record("outbound", "a"), record("inbound", "a", mtls=True)])
    # a caller without a sidecar, in plaintext: its edge's mTLS is "no" (read from the entry that counts it)
    intake.ingest([record("inbound", "b", source="external", status=500, mtls=False)])
    stats = await intake.stats("default")
    assert [(s["service"], s["total"], s["totalFailures"]) for s in stats["services"]] == [("orders", 2, 1)]
    edges = {(e["source"], e["destination"]): (e["total"], e["mtls"]) for e in stats["edges"]}
    assert edges == {("web", "orders"): (1, "yes"), ("external", "orders"): (1, "no")}
    tapped = [take(sub).request_id for _ in range(sub.queue.qsize())]
    assert tapped == ["a", "b"]
    assert stats["received"] == 3


async def test_a_remembered_stats_row_changes_with_its_key_and_encodes_as_itself() -> None:
    clock = Clock()
    intake = TelemetryIntake(clock=clock)
    intake.ingest([record("outbound", "a", time=clock.now - 1)])
    first = await intake.stats("default")
    again = await intake.stats("default")
    assert again["services"][0] is first["services"][0]  # nothing changed: the same row, encoded once
    intake.ingest([record("outbound", "b", time=clock.now - 1, status=503)])
    later = await intake.stats("default")
    assert [(r["requests"], r["failures"], r["total"]) for r in later["services"]] == [(2, 1, 2)]
    assert [(r["requests"], r["mtls"]) for r in later["edges"]] == [(2, "unknown")]
    intake.ingest([record("inbound", "b", time=clock.now - 1, status=503, mtls=True)])  # the edge's mTLS is now known
    assert [r["mtls"] for r in (await intake.stats("default"))["edges"]] == ["yes"]
    clock.now += 61  # out of the minute: the same totals, an empty window
    gone = await intake.stats("default")
    assert [(r["requests"], r["total"]) for r in gone["services"]] == [(0, 2)]
    for row in (*gone["services"], *gone["edges"], *later["services"]):
        assert isinstance(row, EncodedRow) and row.json == json.dumps(dict(row), separators=(",", ":"))


async def test_the_callee_half_completes_a_failure_before_it_is_tapped() -> None:
    clock = Clock()
    intake = TelemetryIntake(clock=clock, join_window=1.0)
    sub = intake.subscribe("default", TapFilter(status="5xx"))
    intake.ingest([record("outbound", "x", status=503, details="via_upstream")])
    assert sub.queue.empty()  # held back for the callee's half
    intake.ingest([record("inbound", "x", status=503, flags=["UF"], upstream_host="127.0.0.1:8080",
                          transport_failure="delayed connect error: 111")])
    got = take(sub)
    assert got.direction == "outbound"
    assert got.explanation.startswith("upstream connection refused by the app at 127.0.0.1:8080")
    assert intake.request("default", "x")[0].explanation == got.explanation
    # a failure whose other half never comes is tapped once the window has passed
    intake.ingest([record("outbound", "y", status=500, details="via_upstream")])
    assert intake.flush_due() == 0
    clock.now += 1.5
    assert intake.flush_due() == 1
    assert take(sub).explanation == "orders answered 500"


async def test_the_inbound_half_first_then_the_outbound() -> None:
    intake = TelemetryIntake(clock=Clock())
    sub = intake.subscribe("default", TapFilter())
    intake.ingest([record("inbound", "z", status=403, details="rbac_access_denied_matched_policy[deny-web]")])
    intake.ingest([record("outbound", "z", status=403, details="via_upstream")])
    got = take(sub)
    assert got.explanation == "denied by TrafficPermission deny-web (at orders's sidecar)"


async def test_hops_that_share_a_request_id_are_paired_by_caller_and_callee() -> None:
    intake = TelemetryIntake(clock=Clock())
    sub = intake.subscribe("default", TapFilter())
    deeper_in = record("inbound", "s", source="orders", destination="inventory", status=503, flags=["UF"],
                       upstream_host="127.0.0.1:9", transport_failure="delayed connect error: 111", time=1000.2)
    intake.ingest([deeper_in, record("outbound", "s", status=502, details="via_upstream")])
    assert sub.queue.empty()  # web -> orders waits for orders' own inbound half, not inventory's
    intake.ingest([record("inbound", "s", status=502, details="via_upstream", time=1000.1)])
    assert take(sub).explanation == (  # the deeper hop that already came in says where it started
        "orders answered 502, after orders -> inventory failed:"
        " upstream connection refused by the app at 127.0.0.1:9 (is inventory running?)"
    )
    stored = [r for r in intake.request("default", "s") if r.direction == "outbound"]
    assert stored[0].explanation == "orders answered 502"  # each entry keeps its own hop's reason
    assert [(r.direction, r.destination) for r in intake.request("default", "s")] == [
        ("outbound", "orders"), ("inbound", "orders"), ("inbound", "inventory")]  # in call order


async def test_the_join_flusher_runs_on_the_loop() -> None:
    intake = TelemetryIntake(join_window=0.05)
    intake.start()
    sub = intake.subscribe("default", TapFilter())
    intake.ingest([record("outbound", "w", status=502, details="via_upstream", time=0)])
    got = await asyncio.wait_for(sub.queue.get(), 2)
    assert got is not None
    assert got.request_id == "w"
    await intake.stop()


def test_tap_filters() -> None:
    f = TapFilter(service="orders", path="/orders", status="5xx,404")
    assert f.matches(record(status=503)) and f.matches(record(status=404))
    assert not f.matches(record(status=200)) and not f.matches(record(status=403))
    assert not f.matches(record(status=503, path="/health"))
    assert not f.matches(record(status=503, source="a", destination="b"))
    assert TapFilter(status="failed").matches(record(status=0))
    assert parse_status("")(200)
    with pytest.raises(ValidationError, match="'6xx' is not a status filter"):
        TapFilter(status="6xx")


def test_request_lookup_by_id_and_by_trace_and_bounded_memory() -> None:
    intake = TelemetryIntake(clock=Clock(), limits=TelemetryLimits(records=3))
    intake.ingest([record("outbound", "a", trace_id="t1"), record("inbound", "a", trace_id="t1")])
    assert [r.direction for r in intake.request("default", "a")] == ["outbound", "inbound"]
    assert len(intake.request("default", "t1")) == 2
    intake.ingest([record("outbound", "b"), record("outbound", "c")])
    assert [r.direction for r in intake.request("default", "a")] == ["inbound"]  # the oldest entry fell out
    intake.ingest([record("outbound", "d")])
    assert intake.request("default", "a") == [] and "a" not in intake.mesh("default").by_request


async def test_stats_filters_windows_and_busiest_paths() -> None:
    intake = TelemetryIntake(clock=Clock())
    intake.ingest([record("outbound", str(i), path=f"/p{i % 3}") for i in range(9)])
    intake.ingest([record("outbound", "o", source="orders", destination="inventory", path="/stock")])
    data = await intake.stats("default", window="5m", service="inventory", paths=2)
    assert [s["service"] for s in data["services"]] == ["inventory"]
    assert [(e["source"], e["destination"]) for e in data["edges"]] == [("orders", "inventory")]
    assert [p["path"] for p in data["paths"]] == ["/stock"]
    everything = await intake.stats("default", paths=2)
    assert [p["requests"] for p in everything["paths"]] == [3, 3]
    with pytest.raises(ValidationError, match="window"):
        await intake.stats("default", window="1h")


async def test_a_broken_context_never_loses_the_record() -> None:
    def broken(r: LogRecord) -> Any:
        raise RuntimeError("boom")

    intake = TelemetryIntake(context_for=broken, clock=Clock())
    intake.ingest([record("outbound", "e", status=503, flags=["UH"])])
    assert (await intake.stats("default"))["services"][0]["totalFailures"] == 1
    assert intake.request("default", "e")[0].explanation.startswith("(no explanation: RuntimeError")


def test_records_round_trip_through_json() -> None:
    r = record(flags=["UT"], policies=["Timeout/t"], mtls=True, explanation="timed out after 2s")
    data = r.to_json()
    assert data["requestId"] == "r1" and data["failed"] is False and data["counted"] is True
    assert LogRecord.from_json(data) == r
