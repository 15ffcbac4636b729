"""Telemetry of the requests that are not plain request/response (issue 11, item 11): a
WebSocket through two sidecars ends without Envoy's ``[error] Stats access logger computed
non-number value`` and leaves a latency sample on both sides; requests an HTTPRoute mirrors
appear in ``tap`` of the mirror, marked as copies, live and replayed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import httpx

from meshline.agent.metrics import parse
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import HttpTestServer
from tests.e2e.test_observability import Tap

MIRROR = """kind: HTTPRoute
mesh: default
name: orders-mirror
spec:
  destinations: [{match: {service: orders}}]
  rules:
    - mirrors: [{service: orders-shadow}]
"""


def durations(mesh: MeshHarness, sc: Sidecar, code: str) -> float:
    port = mesh.api.get(f"/api/v1/meshes/default/dataplanes/{sc.name}")["spec"]["metrics"]["port"]
    fams = parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
    fam = fams.get("meshline_request_duration_seconds")
    if fam is None:
        return 0.0
    return sum(s.value for s in fam.samples if s.name.endswith("_count") and s.labels.get("response_code") == code)


def stats_logger_errors(sc: Sidecar) -> list[str]:
    log = (sc.work_dir / "envoy.log").read_text(errors="replace")
    return [line for line in log.splitlines() if "[error]" in line and "Stats access logger" in line]


def test_a_websocket_ends_without_an_error_and_with_a_latency_sample(tmp_path: Path) -> None:
    with HttpTestServer("chat-app") as app, MeshHarness(tmp_path) as mesh:
        chat = mesh.sidecar("chat", app.port)
        web = mesh.sidecar("web", 1, upstreams=["chat"])

        async def talk() -> str:
            async with aiohttp.ClientSession() as s, s.ws_connect(web.url("chat").replace("http", "ws") + "/ws") as ws:
                await ws.send_str("hi")
                msg = await ws.receive(timeout=5)
                return str(msg.data)

        assert asyncio.run(talk()) == "chat-app:hi"  # and the client closed it
        wait_until(lambda: durations(mesh, web, "101") == 1 and durations(mesh, chat, "101") == 1, 15,
                   what="a latency sample of the WebSocket on both sides")
        assert httpx.get(web.url("chat") + "/plain", timeout=5).status_code == 200  # ordinary ones still timed
        wait_until(lambda: durations(mesh, web, "200") == 1, 15, what="the plain request's latency")
        assert stats_logger_errors(web) == [] and stats_logger_errors(chat) == []


def test_mirrored_requests_appear_in_tap(tmp_path: Path) -> None:
    with HttpTestServer("orders-1") as orders, HttpTestServer("shadow-1") as shadow, MeshHarness(tmp_path) as mesh:
        mesh.sidecar("orders", orders.port)
        mesh.sidecar("orders-shadow", shadow.port)
        web = mesh.sidecar("web", 1, upstreams=["orders"])
        mesh.apply(MIRROR)
        mesh.wait_in_sync()
        wait_until(lambda: (httpx.get(web.url("orders") + "/warm", timeout=5), shadow.count() > 0)[1], 15,
                   what="the mirror to be live")
        with Tap(mesh, service="orders-shadow") as tap:
            for i in range(3):
                assert httpx.get(web.url("orders") + f"/copy/{i}", timeout=5).status_code == 200
            wait_until(lambda: len([r for r in tap.records if r["path"].startswith("/copy/")]) == 3, 10,
                       what="the three mirrored copies in the tap")
        copies = [r for r in tap.records if r["path"].startswith("/copy/")]
        assert all(r["mirrored"] and r["destination"] == "orders-shadow" and r["source"] == "web" for r in copies)
        assert shadow.count() >= 3

        env = {**os.environ, "MESHLINE_API": mesh.api_url, "MESHLINE_TOKEN": ""}
        out = subprocess.run([sys.executable, "-m", "meshline", "tap", "orders-shadow", "--replay", "3", "--max", "3"],
                             capture_output=True, text=True, env=env, timeout=30).stdout
        lines = [line for line in out.splitlines() if "/copy/" in line]
        assert len(lines) == 3 and all("mirrored copy" in line for line in lines), out
        # the caller's own view is unchanged: one request per call, counted for orders only
        stats = mesh.api.get("/api/v1/meshes/default/stats", params={"window": "1m"})
        assert "orders-shadow" not in {s["service"] for s in stats["services"]}
