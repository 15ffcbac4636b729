"""Explained failures, each caused for real through real Envoys: no healthy instance (outlier
ejection, and no instance at all), a Timeout, a refused connection (app down behind a live
sidecar, and a dead sidecar), a local rate limit and an injected fault."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from meshline.cli.main import cli
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import Behaviour, HttpTestServer
from tests.e2e.test_observability import Tap

pytestmark = pytest.mark.e2e

UPSTREAMS = ["orders", "inventory", "slow", "billing", "payments", "reviews", "ghost"]
POLICIES = """
kind: CircuitBreaker
mesh: default
name: inventory-breaker
spec:
  destinations: [{match: {service: inventory}}]
  conf: {outlierDetection: {consecutive5xx: 3, maxEjectionPercent: 100, baseEjectionTime: 60s}}
---
kind: LoadBalancer
mesh: default
name: inventory-no-panic
spec:
  destinations: [{match: {service: inventory}}]
  conf: {panicThreshold: 0}
---
kind: Timeout
mesh: default
name: slow-timeouts
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: slow}}]
  conf: {http: {requestTimeout: 300ms}}
---
kind: RateLimit
mesh: default
name: orders-limits
spec:
  destinations: [{match: {service: orders}}]
  conf: {local: {http: {requests: 2, interval: 1m}}}
---
kind: FaultInjection
mesh: default
name: reviews-chaos
spec:
  destinations: [{match: {service: reviews}}]
  conf: {faults: [{abort: {percentage: 100, httpStatus: 503}}]}
"""


@pytest.fixture(scope="module")
def apps() -> Iterator[dict[str, HttpTestServer]]:
    servers = {
        "ok": HttpTestServer("ok"),
        "failing": HttpTestServer("inventory-app", behaviour=Behaviour(status=503)),
        "slow": HttpTestServer("slow-app", behaviour=Behaviour(delay=1.0)),
        "billing": HttpTestServer("billing-app"),
    }
    for s in servers.values():
        s.start()
    yield servers
    for s in servers.values():
        s.stop()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, apps: dict[str, HttpTestServer]) -> Iterator[dict[str, Any]]:
    with MeshHarness(tmp_path_factory.mktemp("failures")) as harness:
        harness.apply(POLICIES)
        sidecars = {
            "orders": harness.sidecar("orders", apps["ok"].port),
            "reviews": harness.sidecar("reviews", apps["ok"].port),
            "payments": harness.sidecar("payments", apps["ok"].port),
            "inventory": harness.sidecar("inventory", apps["failing"].port),
            "slow": harness.sidecar("slow", apps["slow"].port),
            "billing": harness.sidecar("billing", apps["billing"].port),
            "web": harness.sidecar("web", apps["ok"].port, upstreams=UPSTREAMS),
        }
        harness.wait_in_sync()
        yield {"harness": harness, **sidecars}


def first_failure(harness: MeshHarness, web: Sidecar, service: str, path: str = "/x", attempts: int = 10,
                  **headers: str) -> dict[str, Any]:
    """Send requests to ``service`` until one fails; its tapped record (the caller's side)."""
    with Tap(harness, service=service, status="failed,4xx") as tap:
        for _ in range(attempts):
            # (a TCP upstream that is not there just closes the connection)
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(web.url(service) + path, headers=headers, timeout=5)
            if tap.records:
                break
        wait_until(lambda: tap.records, 10, what=f"a failed request to {service} in the tap")
    return tap.records[0]


def test_no_healthy_instance_after_outlier_ejection(mesh: dict[str, Any]) -> None:
    # inventory's app answers 503: three of them eject its only instance (consecutive5xx: 3)
    with Tap(mesh["harness"], service="inventory", status="5xx") as tap:
        for _ in range(6):
            assert httpx.get(mesh["web"].url("inventory") + "/x", timeout=5).status_code == 503
        wait_until(lambda: len(tap.records) == 6, 10, what="six failed requests in the tap")
    explanations = [x["explanation"] for x in tap.records]
    assert explanations.count("inventory (inventory-1) answered 503") == 3  # before the ejection
    assert explanations.count(
        "no healthy instance of inventory (1 ejected by outlier detection (CircuitBreaker inventory-breaker))"
    ) == 3
    uh = next(x for x in tap.records if "UH" in x["flags"])
    assert "CircuitBreaker/inventory-breaker" in uh["policies"]


def test_no_instance_at_all(mesh: dict[str, Any]) -> None:
    r = first_failure(mesh["harness"], mesh["web"], "ghost", attempts=2)
    assert r["protocol"] == "tcp" and r["flags"] == ["UH"]  # a service nobody registered: plain TCP
    assert r["explanation"] == "no healthy instance of ghost (no instance is registered)"


def test_timeout_names_the_policy(mesh: dict[str, Any]) -> None:
    r = first_failure(mesh["harness"], mesh["web"], "slow", attempts=1)
    assert r["status"] == 504 and "UT" in r["flags"]
    assert r["explanation"] == "timed out after 300ms (Timeout slow-timeouts)"
    out = CliRunner().invoke(cli, ["--api", mesh["harness"].api_url, "explain", r["requestId"]],
                             catch_exceptions=False).output
    assert out.startswith(f"{r['requestId']}: timed out after 300ms (Timeout slow-timeouts)")


def test_app_down_behind_a_live_sidecar(mesh: dict[str, Any], apps: dict[str, HttpTestServer]) -> None:
    port = apps["billing"].port
    apps["billing"].stop()
    r = first_failure(mesh["harness"], mesh["web"], "billing", attempts=1)
    assert r["status"] == 503
    assert r["explanation"] == (
        f"upstream connection refused by the app at 127.0.0.1:{port} (is billing running?) (at billing's sidecar)"
    )
    both = mesh["harness"].api.get(f"/api/v1/meshes/default/requests/{r['requestId']}")
    assert [x["direction"] for x in both["records"]] == ["outbound", "inbound"]
    assert both["records"][1]["flags"] == ["UF"] and both["explanation"] == r["explanation"]


def test_dead_sidecar_refuses_the_connection(mesh: dict[str, Any]) -> None:
    payments: Sidecar = mesh["payments"]
    payments.kill()  # still registered (until it is marked offline): the caller tries to connect
    with socket.socket() as s:  # nothing listens on its inbound port any more
        assert s.connect_ex(("127.0.0.1", payments.inbound_port)) != 0
    r = first_failure(mesh["harness"], mesh["web"], "payments", attempts=1)
    assert "UF" in r["flags"]
    assert r["explanation"].startswith(f"upstream connection refused by 127.0.0.1:{payments.inbound_port} (payments-1)")


def test_rate_limited_by_the_callees_sidecar(mesh: dict[str, Any]) -> None:
    r = first_failure(mesh["harness"], mesh["web"], "orders", attempts=5)
    assert r["status"] == 429
    assert r["explanation"] == "rate limited (local limit) (RateLimit orders-limits) (at orders's sidecar)"


def test_injected_fault(mesh: dict[str, Any]) -> None:
    r = first_failure(mesh["harness"], mesh["web"], "reviews", attempts=1)
    assert r["status"] == 503
    assert r["explanation"] == "fault injected: aborted with 503 (FaultInjection reviews-chaos) (at reviews's sidecar)"
    tapped = CliRunner().invoke(
        cli, ["--api", mesh["harness"].api_url, "tap", "reviews", "--replay", "1", "--max", "1", "-o", "json"],
        catch_exceptions=False,
    ).output
    assert json.loads(tapped.strip().splitlines()[-1])["explanation"] == r["explanation"]
