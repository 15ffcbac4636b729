"""Golden signals from the sidecars' counters (agent.signals -> telemetry.signals -> intake):
names parsed, deltas exact across failed posts and Envoy restarts, the counting side chosen
as for access-log entries, and entries of such sidecars never counted twice."""

from __future__ import annotations

from typing import Any

import pytest

from meshline.agent.signals import Totals, delta, read, split_tags
from meshline.core.errors import ValidationError
from meshline.telemetry import envoy_config
from meshline.telemetry.intake import TelemetryIntake
from meshline.telemetry.record import LogRecord
from meshline.telemetry.signals import rows_from_json

NOW = 1_800_000_000.0
OUT = ("reporter.source.mesh.default.source_service.web.destination_service.orders.protocol.http"
       ".destination_version.v1.2.destination_zone..response_code.{code}.mesh_denied..response_flags.-")


def test_tags_are_split_even_when_values_hold_dots() -> None:
    assert dict(split_tags(OUT.format(code=200)) or ()) == {
        "reporter": "source", "mesh": "default", "source_service": "web", "destination_service": "orders",
        "protocol": "http", "destination_version": "v1.2", "destination_zone": "", "response_code": "200",
        "mesh_denied": "", "response_flags": ""}
    inbound = "reporter.destination.mesh.default.source_service.spiffe://prod.mesh.example/default/web.mesh_denied."
    assert dict(split_tags(inbound) or ())["source_service"] == "spiffe://prod.mesh.example/default/web"
    assert split_tags("nonsense.x") is None


def envoy_doc(count: int, bins: list[tuple[float, float, int]]) -> dict[str, Any]:
    name = OUT.format(code=200)
    return {"stats": [
        {"name": f"meshline.requests.{name}", "value": count},
        {"histograms": {"details": [{"name": f"meshline.request_duration.{name}",
                                     "totals": [{"lower_bound": lo, "width": w, "count": c} for lo, w, c in bins]}]}},
    ]}


def test_deltas_are_what_changed_and_a_lower_total_is_a_restart() -> None:
    first = read(envoy_doc(3, [(590, 10, 2), (1000, 100, 1)]))
    [row] = delta(first, Totals())
    assert row["count"] == 3 and row["latency"] == [[0.6, 2], [1.1, 1]]
    second = read(envoy_doc(5, [(590, 10, 3), (1000, 100, 2)]))
    [row] = delta(second, first)
    assert row["count"] == 2 and row["latency"] == [[0.6, 1], [1.1, 1]]
    assert delta(second, second) == []
    restarted = read(envoy_doc(1, [(590, 10, 1)]))
    [row] = delta(restarted, second)
    assert row["count"] == 1 and row["latency"] == [[0.6, 1]]


def row(reporter: str = "source", count: int = 1, **labels: str) -> dict[str, Any]:
    base = {"reporter": reporter, "mesh": "default", "destination_service": "orders", "response_code": "200"}
    if reporter == "source":
        base["source_service"] = "web"
    return {"labels": {**base, **labels}, "count": count, "latency": [[1.5, count]]}


def test_a_bad_row_refuses_the_post_naming_the_field() -> None:
    with pytest.raises(ValidationError, match=r"rows\[0\].count"):
        rows_from_json({"rows": [{**row(), "count": -1}]})
    with pytest.raises(ValidationError, match=r"rows\[0\].labels.reporter"):
        rows_from_json({"rows": [row(reporter="both")]})


def test_the_counting_side_is_the_callers_or_the_callees_for_a_caller_outside_the_mesh() -> None:
    intake = TelemetryIntake(clock=lambda: NOW)
    rows = rows_from_json({"rows": [
        row(count=7, destination_version="v1"), row(count=2, response_code="503"),
        row(count=1, response_code="403", mesh_denied="deny-web"),
        # the callee's side of the same calls: not counted again; mTLS from the certificate
        row("destination", 10, source_service="spiffe://meshline.local/default/web", destination_version="v1"),
        # a meshed plaintext caller (its own sidecar counts) and one from outside (this side counts)
        row("destination", 4, source_claimed="web"), row("destination", 3),
        {**row(count=9, method="GET", path="/a", scope="paths")},
    ]})
    intake.ingest_signals("default", rows, dataplane="web-1", through=NOW)
    m = intake.meshes["default"]
    orders = m.services["orders"]
    assert (orders.total, orders.total_failures, orders.total_denied) == (13, 2, 1)
    assert m.edges[("web", "orders")].total == 10 and m.edges[("external", "orders")].total == 3
    assert m.mtls(("web", "orders")) == "mixed"  # 10 with a certificate, 4 claimed in plaintext
    assert m.versions[("orders", "v1", "caller")].total == 7 and m.versions[("orders", "v1", "callee")].total == 10
    assert m.paths[("orders", "GET", "/a")].total == 9
    assert orders.summary(NOW, 60).p50 == pytest.approx(1.5, rel=0.05)


def test_entries_of_a_sidecar_that_reports_its_counters_are_not_counted_again() -> None:
    intake = TelemetryIntake(clock=lambda: NOW)
    entry = LogRecord(time=NOW - 1, mesh="default", dataplane="web-1", direction="outbound", source="web",
                      destination="orders", status=200, signals=True)
    intake.ingest([entry])
    assert "orders" not in intake.meshes["default"].services
    assert len(intake.meshes["default"].recent) == 1  # kept for tap and explain all the same
    plain = LogRecord(time=NOW - 1, mesh="default", dataplane="web-1", direction="outbound", source="web",
                      destination="orders", status=200)
    intake.ingest([plain])
    assert intake.meshes["default"].services["orders"].total == 1


def test_the_stream_filter_keeps_failures_and_samples_successes() -> None:
    assert envoy_config.stream_filter(100) is None
    sampled = envoy_config.stream_filter(5, traced=True)
    assert sampled is not None
    kinds = [f.WhichOneof("filter_specifier") for f in sampled.or_filter.filters]
    # Envoy's own filters only (no CEL: it cost as much Envoy CPU as the rest of a request)
    assert kinds == ["status_code_filter", "status_code_filter", "response_flag_filter", "header_filter",
                     "and_filter", "metadata_filter", "metadata_filter", "header_filter", "header_filter",
                     "runtime_filter"]
    f = sampled.or_filter.filters
    assert (f[3].header_filter.header.name, f[3].header_filter.header.string_match.exact) == ("x-meshline-watch", "1")
    grpc_failed = f[4].and_filter.filters
    assert grpc_failed[0].header_filter.header.string_match.prefix == "application/grpc"
    assert grpc_failed[1].grpc_status_filter.exclude and list(grpc_failed[1].grpc_status_filter.statuses) == [0]
    assert (f[5].metadata_filter.matcher.filter, f[5].metadata_filter.matcher.path[0].key,
            f[5].metadata_filter.matcher.value.string_match.exact) == ("envoy.filters.http.rbac", "shadow_engine_result", "denied")
    assert f[6].metadata_filter.matcher.filter == "meshline.record" and f[6].metadata_filter.matcher.value.present_match
    # an absent key is no match (Envoy's default would stream every request)
    assert f[5].metadata_filter.match_if_key_not_found.value is False
    assert f[6].metadata_filter.HasField("match_if_key_not_found") and not f[6].metadata_filter.match_if_key_not_found.value
    assert f[7].header_filter.header.string_match.suffix == "-01"  # a sampled W3C trace
    assert sampled.or_filter.filters[-1].runtime_filter.percent_sampled.numerator == 50_000
    none = envoy_config.stream_filter(0)
    assert none is not None and len(none.or_filter.filters) == 7  # no traces, no runtime sampling at all


def test_a_count_waits_for_its_latencies_but_not_for_ever() -> None:
    from meshline.agent.signals import HOLD_S, SignalReporter

    reporter = SignalReporter()
    counted_first = read(envoy_doc(3, [(590, 10, 2)]))  # Envoy merges histograms a flush later
    ready, through = reporter._with_latencies(counted_first, NOW)
    [row] = delta(ready, Totals())
    assert row["count"] == 2 and through < NOW  # what it posts holds only the requests with latencies
    reporter.acked = ready
    merged = read(envoy_doc(3, [(590, 10, 3)]))
    ready, through = reporter._with_latencies(merged, NOW + 0.5)
    [row] = delta(ready, reporter.acked)
    assert row["count"] == 1 and through == NOW + 0.5
    reporter.acked = ready
    never_timed = read(envoy_doc(4, [(590, 10, 3)]))  # a request the caller gave up on has no latency
    ready, _ = reporter._with_latencies(never_timed, NOW + 1)
    assert delta(ready, reporter.acked) == []
    ready, through = reporter._with_latencies(never_timed, NOW + 1 + HOLD_S)
    [row] = delta(ready, reporter.acked)
    assert row["count"] == 1 and through == NOW + 1 + HOLD_S
