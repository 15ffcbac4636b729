"""Explained failures: every Envoy response flag and the common response code details in plain words."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.data.accesslog.v3 import accesslog_pb2

from meshline.telemetry.explain import (
    FLAG_BY_CODE,
    FLAGS,
    EndpointCounts,
    ExplainContext,
    explain,
    explain_pair,
    explain_request,
)
from meshline.telemetry.record import LogRecord


def rec(**kw: Any) -> LogRecord:
    base: dict[str, Any] = dict(time=1.0, mesh="default", dataplane="web-1", direction="outbound", source="web",
                                destination="orders", method="GET", path="/orders/7", status=503)
    base.update(kw)
    return LogRecord(**base)


def test_the_table_covers_every_flag_envoy_reports() -> None:
    fields = {f.name for f in accesslog_pb2.ResponseFlags.DESCRIPTOR.fields}
    assert {f.field for f in FLAGS} == fields
    assert len(FLAG_BY_CODE) == len(FLAGS)


# What each flag alone says: a fragment that shows the right cause was picked.
EXPECTED = {
    "LH": "failed its local health check",
    "UH": "no healthy instance of orders",
    "UT": "timed out after",
    "LR": "the sidecar reset the stream",
    "UR": "reset the stream",
    "UF": "could not connect to 10.0.0.5:8080",
    "UC": "closed the connection before answering",
    "UO": "circuit breaker open",
    "NR": "no route for GET /orders/7 to orders",
    "DI": "delay injected",
    "FI": "fault injected: aborted with 503",
    "RL": "rate limited",
    "UAEX": "denied by external authorization",
    "RLSE": "rate limit service could not be reached",
    "DC": "the caller (web) went away after 120ms",
    "URX": "retries exhausted",
    "SI": "idle too long",
    "IH": "invalid x-envoy-* headers",
    "DPE": "invalid HTTP request",
    "UMSDR": "maximum duration",
    "RFCF": "orders (orders-1) answered 503",  # served from cache: the status speaks
    "NFCF": "configuration was missing",
    "DT": "maximum duration",
    "UPE": "invalid response (protocol error)",
    "NC": "does not exist",
    "OM": "overloaded",
    "DF": "could not resolve orders",
    "DR": "went away",
}


@pytest.mark.parametrize("flag", [f.code for f in FLAGS])
def test_each_flag_alone_has_its_explanation(flag: str) -> None:
    r = rec(flags=[flag], upstream_host="10.0.0.5:8080", destination_instance="orders-1", duration_ms=120,
            route_timeout_ms=None)
    assert EXPECTED[flag] in explain(r), explain(r)


def test_success_needs_no_explanation() -> None:
    assert explain(rec(status=200)) == ""
    assert explain(rec(status=304)) == ""


def test_an_application_error_names_the_instance() -> None:
    r = rec(status=503, details="via_upstream", destination_instance="orders-2")
    assert explain(r) == "orders (orders-2) answered 503"
    inbound = rec(direction="inbound", dataplane="orders-2", status=500, details="via_upstream")
    assert explain(inbound) == "orders (orders-2) answered 500"


def test_grpc_errors_are_named() -> None:
    r = rec(status=200, grpc_status=14, details="via_upstream")
    assert explain(r) == "orders answered gRPC UNAVAILABLE (14)"


def test_no_healthy_instance_counts_what_the_control_plane_knows() -> None:
    uh = rec(flags=["UH"], details="no_healthy_upstream", upstream_cluster="inventory", destination="inventory")
    ejected = ExplainContext(EndpointCounts(registered=2, offline=0, in_cluster=2), outlier_detection=True)
    assert explain(uh, ejected) == "no healthy instance of inventory (2 ejected by outlier detection)"
    with_policy = rec(flags=["UH"], destination="inventory", policies=["CircuitBreaker/inventory-cb"])
    assert explain(with_policy, ExplainContext(EndpointCounts(3, 1, 2))) == (
        "no healthy instance of inventory (2 ejected by outlier detection (CircuitBreaker inventory-cb), 1 offline)"
    )
    assert explain(uh, ExplainContext(EndpointCounts(0, 0, 0))) == "no healthy instance of inventory (no instance is registered)"
    assert explain(uh, ExplainContext(EndpointCounts(1, 1, 0))) == (
        "no healthy instance of inventory (its only instance is offline)"
    )
    assert explain(uh, ExplainContext(EndpointCounts(3, 3, 0))) == "no healthy instance of inventory (all 3 offline)"
    subset = rec(flags=["UH"], destination="orders", upstream_cluster="orders_version-v3")
    assert explain(subset, ExplainContext(EndpointCounts(2, 0, 0))) == (
        "no healthy instance of orders (2 online, but none matches orders_version-v3's subset)"
    )


def test_timeouts_name_the_policy_and_the_configured_value() -> None:
    r = rec(flags=["UT"], details="upstream_response_timeout", status=504, route_timeout_ms=2000,
            duration_ms=2003, policies=["Timeout/orders-timeouts"])
    assert explain(r) == "timed out after 2s (Timeout orders-timeouts)"
    default = rec(flags=["UT"], status=504, route_timeout_ms=15000, duration_ms=15001)
    assert explain(default) == "timed out after 15s (the default route timeout)"
    per_try = rec(flags=["UT", "URX"], details="upstream_per_try_timeout", status=504, per_try_timeout_ms=250,
                  attempts=3, policies=["Retry/orders-retries"])
    assert explain(per_try) == (
        "an attempt timed out after 250ms (Retry orders-retries); gave up after 3 attempts (Retry orders-retries)"
    )


def test_policies_from_the_control_plane_when_the_entry_has_none() -> None:
    r = rec(flags=["RL"], status=429, details="local_rate_limited")
    ctx = ExplainContext(policies=("RateLimit/orders-global",))
    assert explain(r, ctx) == "rate limited (local limit) (RateLimit orders-global)"


def test_denials_name_the_traffic_permission() -> None:
    r = rec(direction="inbound", status=403, details="rbac_access_denied_matched_policy[deny-web]",
            policies=["TrafficPermission/deny-web"])
    assert explain(r) == "denied by TrafficPermission deny-web"
    unknown = rec(status=403, details="rbac_access_denied_matched_policy[deny-web]")
    assert explain(unknown) == "denied by TrafficPermission deny-web"
    default = rec(status=403, details="rbac_access_denied_matched_policy[none]")
    assert explain(default) == "denied: no TrafficPermission allows web -> orders"
    mesh_default = rec(status=403, details="rbac_access_denied_matched_policy[mesh_default]")
    assert explain(mesh_default) == "denied: no TrafficPermission allows web -> orders (the mesh denies by default)"


def test_connection_failures_say_what_happened_and_where() -> None:
    refused = rec(flags=["UF"], upstream_host="10.0.0.5:8080",
                  transport_failure="delayed_connect_error:_Connection_refused")
    assert explain(refused) == "upstream connection refused by 10.0.0.5:8080"
    app_down = rec(direction="inbound", flags=["UF"], upstream_host="127.0.0.1:8080", destination="orders",
                   transport_failure="delayed connect error: 111")
    assert explain(app_down) == "upstream connection refused by the app at 127.0.0.1:8080 (is orders running?)"
    tls = rec(flags=["UF", "URX"], upstream_host="10.0.0.5:18080", attempts=3,
              transport_failure="TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED")
    assert explain(tls).startswith("TLS handshake with 10.0.0.5:18080 failed (")
    assert explain(tls).endswith("; gave up after 3 attempts")
    timed_out = rec(flags=["UF"], upstream_host="10.0.0.9:80", transport_failure="connect timeout")
    assert explain(timed_out) == "connecting to 10.0.0.9:80 timed out"


def test_fault_injection_and_its_delay() -> None:
    abort = rec(flags=["FI"], status=503, details="fault_filter_abort", policies=["FaultInjection/chaos"])
    assert explain(abort) == "fault injected: aborted with 503 (FaultInjection chaos)"
    slow_ok = rec(flags=["DI"], status=200, policies=["FaultInjection/chaos"])
    assert explain(slow_ok) == "delay injected (FaultInjection chaos)"
    slow_timeout = rec(flags=["DI", "UT"], status=504, route_timeout_ms=1000, policies=["FaultInjection/chaos"])
    assert explain(slow_timeout) == "timed out after 1s (the default route timeout); delay injected (FaultInjection chaos)"


def test_overflow_names_the_circuit_breaker() -> None:
    r = rec(flags=["UO"], details="upstream_reset_before_response_started{overflow}",
            policies=["CircuitBreaker/orders-cb"])
    assert explain(r) == "circuit breaker open: too many connections or requests to orders (CircuitBreaker orders-cb)"


def test_the_most_telling_cause_wins() -> None:
    both = rec(flags=["UF", "URX", "UH"], upstream_host="10.0.0.5:8080", attempts=3)
    assert explain(both).startswith("no healthy instance of orders")
    assert "gave up after 3 attempts" in explain(both)


def test_the_callee_explains_what_the_caller_only_saw_as_a_status() -> None:
    out = rec(status=503, details="via_upstream")
    out.explanation = explain(out)
    inbound = rec(direction="inbound", dataplane="orders-1", flags=["UF"], upstream_host="127.0.0.1:8080",
                  transport_failure="delayed connect error: 111")
    inbound.explanation = explain(inbound)
    assert explain_pair(out, inbound) == (
        "upstream connection refused by the app at 127.0.0.1:8080 (is orders running?) (at orders's sidecar)"
    )
    app_error = rec(direction="inbound", status=503, details="via_upstream")
    app_error.explanation = explain(app_error)
    assert explain_pair(out, app_error) == out.explanation  # the app answered: the caller's view is right
    local = rec(flags=["UT"], status=504)
    local.explanation = explain(local)
    assert explain_pair(local, inbound) == local.explanation  # the caller's own sidecar decided


def test_a_request_across_hops_names_where_it_surfaced_and_where_it_started() -> None:
    """The demo's apps pass x-request-id on: one id, two hops, four entries."""
    web_out = rec(status=502, details="via_upstream", destination_instance="orders-v1", time=1.0)
    web_out.explanation = explain(web_out)
    orders_in = rec(direction="inbound", dataplane="orders-v1", status=502, details="via_upstream", time=1.001)
    orders_in.explanation = explain(orders_in)
    orders_out = rec(dataplane="orders-v1", source="orders", destination="inventory", status=503, flags=["UH"],
                     time=1.002)
    orders_out.explanation = explain(orders_out)
    assert explain_request([web_out, orders_in, orders_out]) == (
        "orders (orders-v1) answered 502, after orders -> inventory failed: no healthy instance of inventory"
    )
    assert explain_request([orders_out]) == "no healthy instance of inventory"
    ok = rec(status=200)
    assert explain_request([ok]) == ""
    denied_in = rec(direction="inbound", status=403, details="rbac_access_denied_matched_policy[deny-web]")
    denied_in.explanation = explain(denied_in)
    denied_out = rec(status=403, details="via_upstream")
    denied_out.explanation = explain(denied_out)
    assert explain_request([denied_out, denied_in]) == "denied by TrafficPermission deny-web (at orders's sidecar)"
