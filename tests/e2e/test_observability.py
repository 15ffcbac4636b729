"""Every request counted, timed and tapped, with real Envoys streaming their access logs to the
control plane: counts match the traffic sent exactly, a delay shows in the percentiles, and
a tap started before the traffic sees each matching request once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from click.testing import CliRunner

from meshline.cli.main import cli
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import HttpTestServer

pytestmark = pytest.mark.e2e

TOTAL, FAILING = 500, 37


class PathFailServer(HttpTestServer):
    """Answers 503 to every path under /fail/, normally to the rest."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/fail/"):
            self.requests.append({"path": request.path_qs})
            return web.json_response({"instance": self.name, "path": request.path_qs}, status=503)
        return await super()._handle(request)


class Tap:
    """A live tap through the API, read on a thread; ``ready`` once the control plane confirmed it."""

    def __init__(self, mesh: MeshHarness, **params: str) -> None:
        self.url = f"{mesh.api_url}/api/v1/meshes/default/tap"
        self.params = params
        self.records: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.stream("GET", self.url, params=self.params, timeout=httpx.Timeout(10, read=60)) as resp:
            for line in resp.iter_lines():
                if self._stop.is_set():
                    return
                if not line.strip():
                    continue
                item = json.loads(line)
                if "tap" in item:
                    self.ready.set()
                else:
                    self.records.append(item)

    def __enter__(self) -> Tap:
        self._thread.start()
        assert self.ready.wait(10), "the tap did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


@pytest.fixture(scope="module")
def apps() -> Iterator[tuple[PathFailServer, HttpTestServer, HttpTestServer]]:
    with PathFailServer("orders-1") as orders, HttpTestServer("catalog-1") as catalog, \
            HttpTestServer("web-1") as web_app:
        yield orders, catalog, web_app


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, apps: tuple[Any, ...]) -> Iterator[tuple[MeshHarness, Sidecar]]:
    orders, catalog, web_app = apps
    with MeshHarness(tmp_path_factory.mktemp("observability")) as harness:
        harness.sidecar("orders", orders.port, tags={"version": "v1"})
        harness.sidecar("catalog", catalog.port)
        web = harness.sidecar("web", web_app.port, upstreams=["orders", "catalog"])
        harness.wait_in_sync()
        yield harness, web


def stats(mesh: MeshHarness, **params: str) -> dict[str, Any]:
    return dict(mesh.api.get("/api/v1/meshes/default/stats", params=params))


def service(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in data["services"] if s["service"] == name)


def test_stat_tap_edges_and_stat_commands_count_exactly_the_requests_sent(
    mesh: tuple[MeshHarness, Sidecar], apps: tuple[PathFailServer, Any, Any]
) -> None:
    harness, web = mesh
    failing = set(range(0, TOTAL, TOTAL // FAILING)[:FAILING])
    assert len(failing) == FAILING
    with Tap(harness, service="orders") as everything, \
            Tap(harness, service="orders", path="/fail/", status="5xx") as failures, \
            Tap(harness, service="orders", path="/ok/", status="5xx") as none:
        with httpx.Client(base_url=web.url("orders"), timeout=10) as client:
            statuses = [client.get(f"/fail/{i}" if i in failing else f"/ok/{i}").status_code for i in range(TOTAL)]
        assert statuses.count(503) == FAILING and statuses.count(200) == TOTAL - FAILING

        def all_counted() -> dict[str, Any] | None:
            data = stats(harness)
            orders = [s for s in data["services"] if s["service"] == "orders"]
            return data if orders and orders[0]["total"] >= TOTAL and len(everything.records) >= TOTAL else None

        data = wait_until(all_counted, 20, what=f"{TOTAL} requests in stat and tap")
        assert data is not None
        wait_until(lambda: len(failures.records) >= FAILING, 10, what="the failures in the filtered tap")

    orders = service(data, "orders")
    assert (orders["total"], orders["totalFailures"]) == (TOTAL, FAILING)
    assert (orders["requests"], orders["failures"]) == (TOTAL, FAILING)  # all inside the 1 minute window
    edge = next(e for e in data["edges"] if e["destination"] == "orders")
    assert (edge["source"], edge["total"], edge["totalFailures"], edge["mtls"]) == ("web", TOTAL, FAILING, "no")
    # The tap agrees: each request once, from the caller's side, with where it landed.
    assert len(everything.records) == TOTAL
    assert sorted(r["path"] for r in everything.records) == sorted(
        f"/fail/{i}" if i in failing else f"/ok/{i}" for i in range(TOTAL)
    )
    assert {(r["direction"], r["source"], r["destinationInstance"]) for r in everything.records} == {
        ("outbound", "web", "orders-1")
    }
    assert sum(r["failed"] for r in everything.records) == FAILING
    assert sorted(int(r["path"].rsplit("/", 1)[1]) for r in failures.records) == sorted(failing)
    assert all(r["status"] == 503 and r["explanation"] == "orders (orders-1) answered 503" for r in failures.records)
    assert none.records == []
    assert apps[0].count() == TOTAL  # and the app saw each request once
    # The CLI's tables say the same (in this test: they read the requests it sent, and a
    # module's tests may run in different workers).
    out = CliRunner().invoke(cli, ["--api", harness.api_url, "edges", "-w", "5m"], catch_exceptions=False).output
    assert any(line.split()[:2] == ["web", "orders"] and line.split()[-1] == "no" for line in out.splitlines()), out
    stat_out = CliRunner().invoke(cli, ["--api", harness.api_url, "stat", "-w", "5m"], catch_exceptions=False).output
    orders_row = next(line for line in stat_out.splitlines() if line.startswith("orders"))
    assert "92.6%" in orders_row, stat_out  # 463 of 500


def test_a_delay_shows_in_the_percentiles(mesh: tuple[MeshHarness, Sidecar], apps: tuple[Any, HttpTestServer, Any]) -> None:
    harness, web = mesh
    apps[1].behaviour.delay = 0.2
    with httpx.Client(base_url=web.url("catalog"), timeout=10) as client:
        for _ in range(12):
            assert client.get("/items").status_code == 200

    def counted() -> dict[str, Any] | None:
        data = stats(harness, service="catalog", paths="5")
        rows = [s for s in data["services"] if s["service"] == "catalog"]
        return data if rows and rows[0]["total"] == 12 else None

    data = wait_until(counted, 15, what="12 catalog requests counted")
    assert data is not None
    latency = service(data, "catalog")["latencyMs"]
    assert latency["p50"] >= 200 and latency["p95"] >= 200 and latency["p99"] >= 200
    assert data["paths"][0]["path"] == "/items" and data["paths"][0]["latencyMs"]["p50"] >= 200
    table = CliRunner().invoke(cli, ["--api", harness.api_url, "stat", "catalog"], catch_exceptions=False).output
    row = next(line for line in table.splitlines() if line.startswith("catalog"))
    p50 = row.split()[4]  # SERVICE RPS SUCCESS DENIED P50
    assert p50.endswith("ms") and float(p50[:-2]) >= 200, table


def test_a_file_log_is_written_when_the_mesh_asks(mesh: tuple[MeshHarness, Sidecar], tmp_path: Path) -> None:
    harness, web = mesh
    logs = tmp_path / "logs"
    (logs / "default").mkdir(parents=True)  # Envoy refuses a log file in a missing directory
    spec = {"mtls": {"mode": "disabled"}, "logging": {"file": f"{logs}/{{mesh}}/{{service}}.log", "stream": True}}
    harness.api.put({"kind": "Mesh", "name": "default", "spec": spec})
    harness.wait_in_sync()
    try:
        # Envoy writes log files in batches (about once a second): wait for both sides' lines
        def written(name: str) -> bool:
            path = logs / "default" / name
            return path.exists() and "/ok/file" in path.read_text()

        wait_until(lambda: httpx.get(web.url("orders") + "/ok/file", timeout=5).status_code == 200
                   and written("web.log") and written("orders.log"), 15, what="file logs")
        line = next(json.loads(x) for x in (logs / "default" / "web.log").read_text().splitlines() if "/ok/file" in x)
        assert (line["direction"], line["source"], line["destination"], line["status"]) == ("outbound", "web", "orders", 200)
        assert line["destinationInstance"] == "orders-1" and line["requestId"]
    finally:
        harness.api.put({"kind": "Mesh", "name": "default", "spec": {"mtls": {"mode": "disabled"}}})
        harness.wait_in_sync()


def test_a_log_file_envoy_cannot_open_is_rejected_and_traffic_goes_on(mesh: tuple[MeshHarness, Sidecar]) -> None:
    harness, web = mesh
    spec = {"mtls": {"mode": "disabled"}, "logging": {"file": "/nonexistent-meshline-dir/{service}.log"}}
    harness.api.put({"kind": "Mesh", "name": "default", "spec": spec})
    try:
        def rejected() -> dict[str, Any] | None:
            st = harness.dataplane_status("web-1")
            return st if st["state"] == "rejected" else None

        st = wait_until(rejected, 10, what="web-1 to reject the listener")
        assert st is not None and "unable to open file '/nonexistent-meshline-dir/web.log'" in st["lastNack"]["message"]
        assert httpx.get(web.url("orders") + "/ok/still", timeout=5).status_code == 200  # on its last good config
    finally:
        harness.api.put({"kind": "Mesh", "name": "default", "spec": {"mtls": {"mode": "disabled"}}})
        harness.wait_in_sync()
