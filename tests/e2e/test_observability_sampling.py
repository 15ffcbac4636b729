"""Golden signals stay exact when the sidecars stream almost nothing: with `logging.successes: 0`
the counts come from each Envoy's own counters (reported by its agent), failures are still
streamed and explained, and a tap still sees every request while it is open."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from tests.e2e.test_observability import PathFailServer, Tap, service, stats

pytestmark = pytest.mark.e2e

TOTAL, FAILING = 1000, 20


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with PathFailServer("orders-1") as orders_app, PathFailServer("web-1") as web_app, \
            MeshHarness(tmp_path_factory.mktemp("sampling"),
                        mesh_spec={"logging": {"stream": True, "successes": 0}}) as harness:
        orders = harness.sidecar("orders", orders_app.port, tags={"version": "v1"})
        web = harness.sidecar("web", web_app.port, upstreams=["orders"])
        harness.wait_in_sync()
        yield {"harness": harness, "web": web, "orders": orders}


def streamed(sc: Sidecar) -> int:
    """Entries this sidecar's Envoy handed to its access-log stream (counted as it logs)."""
    return sum(v for k, v in sc.stats("access_logs.grpc_access_log").items() if k.endswith("logs_written"))


def counted(sc: Sidecar) -> int:
    """Requests this sidecar's Envoy counted (its stats logger runs after the stream's logger)."""
    return sum(v for k, v in sc.stats("^meshline.requests.").items())


def orders_total(harness: MeshHarness) -> int:
    rows = [s for s in stats(harness)["services"] if s["service"] == "orders"]
    return int(rows[0]["total"]) if rows else 0


def test_every_request_is_counted_while_only_failures_are_streamed(mesh: dict[str, Any]) -> None:
    harness, web, orders_sc = mesh["harness"], mesh["web"], mesh["orders"]
    failing = set(range(0, TOTAL, TOTAL // FAILING))
    with httpx.Client(base_url=web.url("orders"), timeout=10) as client:
        # 50 paths answered, 20 failing: within the paths `top` keeps (500)
        statuses = [client.get(f"/fail/{i}" if i in failing else f"/ok/{i % 50}").status_code for i in range(TOTAL)]
    assert statuses.count(503) == FAILING and statuses.count(200) == TOTAL - FAILING

    def settled() -> dict[str, Any] | None:  # the paths' counters come in the same posts, maybe the next one
        if orders_total(harness) < TOTAL:
            return None
        got = stats(harness, paths="1000")
        return got if sum(p["total"] for p in got["paths"] if p["service"] == "orders") >= TOTAL else None

    data = wait_until(settled, 30, what=f"{TOTAL} requests in stat and in its paths")
    orders = service(data, "orders")
    assert (orders["total"], orders["totalFailures"]) == (TOTAL, FAILING)
    assert (orders["requests"], orders["failures"]) == (TOTAL, FAILING)
    edge = next(e for e in data["edges"] if (e["source"], e["destination"]) == ("web", "orders"))
    assert (edge["total"], edge["totalFailures"]) == (TOTAL, FAILING)
    assert orders["latencyMs"]["p50"] is not None and orders["latencyMs"]["p99"] >= orders["latencyMs"]["p50"]
    # `top`: every path, each counted once, the failing ones as failures
    paths = {p["path"]: p for p in data["paths"] if p["service"] == "orders"}
    assert sum(p["total"] for p in paths.values()) == TOTAL
    assert {p for p, row in paths.items() if row["totalFailures"]} == {f"/fail/{i}" for i in failing}
    # the per-version index rollouts analyse counts the same
    summary = harness.control_plane.call(
        lambda: harness.control_plane.cp.ctx.services["telemetry"].version_summary("default", "orders", "v1", 60))
    assert (summary.requests, summary.failures) == (TOTAL, FAILING)
    # Both sidecars streamed the failures and nothing else (Envoy counts what it logs)
    assert counted(web) == TOTAL and counted(orders_sc) == TOTAL
    assert streamed(web) == FAILING and streamed(orders_sc) == FAILING
    wait_until(lambda: stats(harness)["received"] >= 2 * FAILING, 10, what="both halves of every failure")


def test_failures_are_explained_without_a_tap(mesh: dict[str, Any]) -> None:
    harness, web = mesh["harness"], mesh["web"]
    assert httpx.get(web.url("orders") + "/fail/explain-me", timeout=10).status_code == 503

    def explained() -> dict[str, Any] | None:
        return next((r for r in replay(harness, status="5xx") if r["path"] == "/fail/explain-me"), None)

    record = wait_until(explained, 10, what="the failure in tap --replay")
    assert record["status"] == 503 and "answered 503" in record["explanation"]
    def both() -> dict[str, Any] | None:
        d: dict[str, Any] = harness.api.get(f"/api/v1/meshes/default/requests/{record['requestId']}")
        return d if len(d["records"]) == 2 else None

    data = wait_until(both, 10, what="both halves of the failure")
    assert "answered 503" in data["explanation"]


def test_a_tap_sees_every_successful_request_while_it_is_open(mesh: dict[str, Any]) -> None:
    harness, web = mesh["harness"], mesh["web"]
    before = orders_total(harness)
    with Tap(harness, service="orders") as tap:
        with httpx.Client(base_url=web.url("orders"), timeout=10) as client:
            assert all(client.get(f"/watched/{i}").status_code == 200 for i in range(50))
        wait_until(lambda: len([r for r in tap.records if r["path"].startswith("/watched/")]) >= 50, 15,
                   what="the 50 requests in the tap")
    assert sorted(r["path"] for r in tap.records if r["path"].startswith("/watched/")) == sorted(
        f"/watched/{i}" for i in range(50))

    # Once the tap is gone, the sidecars go back to streaming failures only (a new config,
    # pushed after the tap ends): successes are counted, not streamed.
    def unwatched() -> bool:
        logged, seen = streamed(web), counted(web)
        assert httpx.get(web.url("orders") + "/after", timeout=10).status_code == 200
        wait_until(lambda: counted(web) > seen, 10, what="the request counted by the sidecar")
        return streamed(web) == logged

    wait_until(unwatched, 15, interval=0.2, what="successes no longer streamed after the tap closed")
    wait_until(lambda: orders_total(harness) >= before + 51, 15, what="every request in stat")


def replay(harness: MeshHarness, **params: str) -> list[dict[str, Any]]:
    """The records `tap --replay` shows (the tap ends after one idle second)."""
    out = []
    with httpx.stream("GET", f"{harness.api_url}/api/v1/meshes/default/tap",
                      params={"service": "orders", "replay": "1000", "idle": "1", **params},
                      timeout=httpx.Timeout(10, read=30)) as resp:
        for line in resp.iter_lines():
            item = json.loads(line) if line.strip() else {}
            if "end" in item:
                break
            if item and "tap" not in item:
                out.append(item)
    return out


def test_the_dashboards_recent_requests_show_successes_while_the_page_is_open(mesh: dict[str, Any]) -> None:
    """The dataplane page asks for its recent requests every few seconds; asking makes the
    service watched like a tap (its sidecars stream successes), so the list is not failures only."""
    harness, web = mesh["harness"], mesh["web"]

    def listed(prefix: str) -> list[str]:
        items = harness.api.get("/api/v1/meshes/default/dataplanes/orders-1/requests?limit=200")["items"]
        return [r["path"] for r in items if r["path"].startswith(prefix)]

    seen = counted(web)
    assert httpx.get(web.url("orders") + "/unseen", timeout=10).status_code == 200
    wait_until(lambda: counted(web) > seen, 10, what="the request counted by the sidecar")
    assert listed("/unseen") == []  # nobody looked: successes: 0 streams none

    sent: list[str] = []

    def shown() -> bool:  # each ask renews the look, as the page does
        sent.append(f"/looked-at/{len(sent)}")
        assert httpx.get(web.url("orders") + sent[-1], timeout=10).status_code == 200
        return bool(listed("/looked-at/"))

    wait_until(shown, 15, interval=0.3, what="a success in the dataplane's recent requests")
    # from then on every success shows
    with httpx.Client(base_url=web.url("orders"), timeout=10) as client:
        assert all(client.get(f"/looked-at/all/{i}").status_code == 200 for i in range(20))
    want = sorted(f"/looked-at/all/{i}" for i in range(20))
    wait_until(lambda: sorted(set(listed("/looked-at/all/"))) == want, 10, what="the 20 requests listed")
