"""Traffic record and replay, end to end: a demo-like app behind a real sidecar, 200 requests
recorded by `meshline record` (the TrafficRecording's Lua filter, the access-log stream, the
record API), the HAR file checked for redaction, then `meshline replay` against a v2 that differs
on one endpoint (exactly that endpoint is reported) and against an identical v1 (no difference).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from click.testing import CliRunner, Result

from meshline.cli.main import cli
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import _LoopThread, free_port

pytestmark = pytest.mark.e2e

SECRETS = ("Bearer s3cr3t-token", "session=abc123", "key-0f0f0f")


class DemoLikeApp:
    """orders: list, item by id, create an order, health. ``v2`` changes only the item answer."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.port = free_port()
        self._loop = _LoopThread()
        self._runner: web.AppRunner | None = None

    def make(self) -> web.Application:
        def stamp() -> dict[str, Any]:  # what differs on every answer and must be ignored
            return {"timestamp": time.time(), "requestId": f"r-{time.monotonic_ns()}"}

        async def items(request: web.Request) -> web.Response:
            return web.json_response({"items": [1, 2, 3], **stamp()})

        async def item(request: web.Request) -> web.Response:
            body: dict[str, Any] = {"id": int(request.match_info["id"]), "name": "book", **stamp()}
            if self.version == "v2":
                body["name"] = "Book"  # the one behaviour v2 changed
            return web.json_response(body)

        async def order(request: web.Request) -> web.Response:
            data = await request.json()
            return web.json_response({"ordered": data, **stamp()}, status=201)

        async def health(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/items", items)
        app.router.add_get("/items/{id}", item)
        app.router.add_post("/orders", order)
        app.router.add_get("/health", health)
        return app

    def __enter__(self) -> DemoLikeApp:
        async def up() -> None:
            self._runner = web.AppRunner(self.make(), access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self._loop.run(up())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            self._loop.run(self._runner.cleanup())
        self._loop.stop()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshHarness, Sidecar, Sidecar]]:
    with MeshHarness(tmp_path_factory.mktemp("replay"), mtls="strict") as h, \
            DemoLikeApp("v1") as v1, DemoLikeApp("v2") as v2, DemoLikeApp("v1") as client:
        h.apply([{"kind": "TrafficPermission", "mesh": "default", "name": "all", "spec": {"action": "allow"}}])
        orders_v1 = h.sidecar("orders", app_port=v1.port, tags={"version": "v1"}, name="orders-v1")
        web_sc = h.sidecar("web", app_port=client.port, upstreams=["orders"])
        wait_until(lambda: httpx.get(web_sc.url("orders") + "/health", timeout=5).status_code == 200, 20,
                   what="web -> orders")
        h.v2_port = v2.port  # type: ignore[attr-defined]
        yield h, orders_v1, web_sc


def requests_of(i: int) -> tuple[str, str, dict[str, Any] | None]:
    kind = i % 4
    if kind == 0:
        return "GET", "/items", None
    if kind == 1:
        return "GET", f"/items/{i % 10}", None
    if kind == 2:
        return "POST", "/orders", {"item": i, "qty": 2}
    return "GET", "/health", None


def has_lua(sc: Sidecar) -> bool:
    return "envoy.filters.http.lua" in sc.admin("/config_dump?resource=dynamic_listeners").text


def record(h: MeshHarness, out: Path, *args: str) -> tuple[threading.Thread, list[Result]]:
    results: list[Result] = []

    def run() -> None:
        results.append(CliRunner().invoke(cli, ["--api", h.api_url, "record", "orders", "--version", "v1",
                                                "--duration", "120s", "--max", "200", "-o", str(out), *args]))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, results


@pytest.fixture(scope="module")
def recording(mesh: tuple[MeshHarness, Sidecar, Sidecar], tmp_path_factory: pytest.TempPathFactory) -> Path:
    h, orders_v1, web_sc = mesh
    out = tmp_path_factory.mktemp("rec") / "orders.har"
    assert not has_lua(orders_v1)  # recording off: no filter at all
    thread, results = record(h, out, "--redact-header", "x-api-key")
    wait_until(lambda: has_lua(orders_v1), 20, what="the recording's filter on orders-v1")
    # Connections opened before the filter came keep the old config until they are drained, so
    # a few first requests may go unrecorded: send until the recorder has its 200 (bounded).
    with httpx.Client(timeout=10) as c:
        for i in range(400):
            if not thread.is_alive():
                break
            method, path, body = requests_of(i)
            resp = c.request(method, web_sc.url("orders") + path, json=body, headers={
                "authorization": SECRETS[0], "cookie": SECRETS[1], "x-api-key": SECRETS[2], "x-tenant": "acme"})
            assert resp.status_code in (200, 201)
            if i >= 199:
                thread.join(0.5)  # the last entries reach the control plane within its flush interval
    thread.join(60)
    assert results and results[0].exit_code == 0, results[0].output if results else "record did not end"
    assert "200 request(s) recorded" in results[0].output
    return out


def test_record_writes_200_requests_with_secrets_redacted_and_removes_its_filter(
    mesh: tuple[MeshHarness, Sidecar, Sidecar], recording: Path
) -> None:
    h, orders_v1, _ = mesh
    text = recording.read_text()
    for secret in SECRETS:
        assert secret not in text
    har = json.loads(text)
    entries = har["log"]["entries"]
    assert len(entries) == 200
    first = entries[0]["request"]
    headers = {x["name"]: x["value"] for x in first["headers"]}
    assert headers["authorization"] == headers["cookie"] == headers["x-api-key"] == "[redacted]"
    assert headers["x-tenant"] == "acme"
    posts = [e for e in entries if e["request"]["method"] == "POST"]
    assert 45 <= len(posts) <= 55  # every 4th request sent
    assert json.loads(base64.b64decode(posts[0]["request"]["postData"]["text"]))["qty"] == 2
    assert {e["response"]["status"] for e in posts} == {201}
    assert all(e["_version"] == "v1" for e in entries)
    assert recording.stat().st_mode & 0o077 == 0  # bodies may be private: the file is the user's own
    # The recording is over: its resource is gone and so is the filter.
    assert h.api.get("/api/v1/meshes/default/trafficrecordings")["items"] == []
    wait_until(lambda: not has_lua(orders_v1), 20, what="the filter to go")


def replay(h: MeshHarness, recording: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--api", h.api_url, "replay", str(recording), "-o", "json", *args])


def test_replay_against_identical_v1_reports_no_difference(
    mesh: tuple[MeshHarness, Sidecar, Sidecar], recording: Path
) -> None:
    h, _, _ = mesh
    result = replay(h, recording, "--to", "orders,version=v1")
    assert result.exit_code == 0, result.output
    reports = json.loads(result.output)
    assert {r["endpoint"] for r in reports} == {"GET /items", "GET /items/{id}", "POST /orders", "GET /health"}
    assert not [r for r in reports if r["differs"]]
    assert sum(r["requests"] for r in reports) == 200


def test_replay_through_the_mesh_carries_its_own_identity_and_meets_the_policies(
    mesh: tuple[MeshHarness, Sidecar, Sidecar], recording: Path, tmp_path: Path
) -> None:
    """Inside `meshline run` the replayer is a workload (service replayer, its own certificate):
    its requests go through its sidecar, so the callee's permissions apply to it."""
    h, _, _ = mesh
    h.apply([{"kind": "TrafficPermission", "mesh": "default", "name": "replayer-no-orders", "spec": {
        "sources": [{"match": {"service": "replayer"}}], "destinations": [{"match": {"service": "orders"}}],
        "action": "deny", "rules": [{"paths": [{"prefix": "/orders"}], "methods": ["POST"]}]}}])
    cmd = [sys.executable, "-m", "meshline", "run", "--service", "replayer", "--port", str(free_port()),
           "--name", "replayer-1", "--api", h.api_url, "--xds-address", f"127.0.0.1:{h.xds_port}",
           "--work-dir", str(tmp_path / "work"), "--upstream", f"orders={free_port()}", "--protocol", "http",
           "--drain-seconds", "0.2", "--",
           sys.executable, "-m", "meshline", "--api", h.api_url, "replay", str(recording), "--to", "orders",
           "--through-mesh", "-o", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MESHLINE_DATA_DIR": str(h.data_dir)})
    assert done.returncode == 1, done.stdout + done.stderr  # replay's own exit code: a difference
    reports = json.loads(done.stdout[done.stdout.index("["):done.stdout.rindex("]") + 1])
    differing = {r["endpoint"]: r["status"] for r in reports if r["differs"]}
    posts = next(r["requests"] for r in reports if r["endpoint"] == "POST /orders")
    assert differing == {"POST /orders": {"201 -> 403": posts}}


@pytest.fixture(scope="module")
def orders_v2(mesh: tuple[MeshHarness, Sidecar, Sidecar], recording: Path) -> Sidecar:
    """v2, started once the tests that want v1 alone behind orders ran (they come first)."""
    h, _, _ = mesh
    return h.sidecar("orders", app_port=h.v2_port, tags={"version": "v2"}, name="orders-v2")  # type: ignore[attr-defined]


def test_replay_against_v2_reports_exactly_the_endpoint_that_changed(
    mesh: tuple[MeshHarness, Sidecar, Sidecar], recording: Path, orders_v2: Sidecar
) -> None:
    h, _, _ = mesh
    result = replay(h, recording, "--to", "orders,version=v2")
    assert result.exit_code == 1, result.output
    reports = json.loads(result.output)
    differing = [r for r in reports if r["differs"]]
    assert [r["endpoint"] for r in differing] == ["GET /items/{id}"]
    har = json.loads(recording.read_text())
    by_id = [e for e in har["log"]["entries"] if e["request"]["url"].rsplit("/", 2)[-2] == "items"]
    assert differing[0]["bodies"] == differing[0]["requests"] == len(by_id) and differing[0]["bodyExample"].startswith("$.name")
    assert differing[0]["latencyMs"]["recorded"]["p50"] is not None

    table = CliRunner().invoke(cli, ["--api", h.api_url, "replay", str(recording), "--to", "orders,version=v2"])
    assert "1 endpoint(s) differ: GET /items/{id}" in table.output


def test_replay_as_a_rollout_webhook_answers_422_for_a_differing_candidate(
    mesh: tuple[MeshHarness, Sidecar, Sidecar], recording: Path, orders_v2: Sidecar
) -> None:
    """What a Rollout's webhook POSTs (rollouts/controller.py): 2xx lets the step go on."""
    h, _, _ = mesh
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "meshline", "--api", h.api_url, "replay", str(recording),
                             "--serve", f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def post(candidate: str) -> httpx.Response:
            body = {"rollout": "orders", "mesh": "default", "service": "orders", "at": "preStep", "stage": 0,
                    "stable": "v1", "candidate": candidate}
            return httpx.post(f"http://127.0.0.1:{port}/", json=body, timeout=30)

        first = wait_until(lambda: post("v2"), 20, what="the webhook to listen")
        assert first.status_code == 422
        assert first.json()["differing"] == ["GET /items/{id}"]
        assert post("v1").status_code == 200
        assert httpx.post(f"http://127.0.0.1:{port}/", content=b"{}", timeout=10).status_code == 400
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_recording_whose_recorder_is_gone_is_deleted_once_its_time_is_up(
    mesh: tuple[MeshHarness, Sidecar, Sidecar],
) -> None:
    h, orders_v1, _ = mesh
    h.apply([{"kind": "TrafficRecording", "mesh": "default", "name": "orphan", "spec": {
        "destinations": [{"match": {"service": "orders", "version": "v1"}}], "until": time.time() + 2}}])
    wait_until(lambda: has_lua(orders_v1), 20, what="the orphan recording's filter")
    wait_until(lambda: h.api.get("/api/v1/meshes/default/trafficrecordings")["items"] == [], 30,
               what="the janitor to delete the expired recording")
    wait_until(lambda: not has_lua(orders_v1), 20, what="its filter to go")


def test_recording_needs_a_service_and_bounded_options(mesh: tuple[MeshHarness, Sidecar, Sidecar]) -> None:
    h, _, _ = mesh
    for params, field in (({}, "service"), ({"service": "orders", "duration": "2h"}, "duration"),
                          ({"service": "orders", "maxBody": str(10**8)}, "maxBody")):
        r = httpx.get(f"{h.api_url}/api/v1/meshes/default/record", params=params, timeout=10)
        assert r.status_code == 422 and field in r.text, r.text
    assert h.api.get("/api/v1/meshes/default/trafficrecordings")["items"] == []  # a refused one changes nothing
