"""The core mesh, end to end: real control plane, real agents and Envoys, real servers on loopback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import aiohttp
import httpx
import pytest

from meshline.testing.mesh import MeshHarness, wait_until
from meshline.testing.nack import TRIGGER, breakable_control_plane, trigger_dataplane
from meshline.testing.servers import GrpcTestServer, HttpTestServer, TcpEchoServer, grpc_echo, tcp_exchange


def test_http_request_crosses_both_sidecars(mesh: MeshHarness) -> None:
    with HttpTestServer("orders-app") as app:
        orders = mesh.sidecar("orders", app.port)
        web = mesh.sidecar("web", 1, upstreams=["orders"])
        resp = httpx.get(web.url("orders") + "/checkout?id=7", timeout=5)
        assert resp.status_code == 200
        assert resp.json()["instance"] == "orders-app"
        assert resp.json()["path"] == "/checkout?id=7"
        # it went through orders' inbound listener, not around it
        assert orders.stats("http.inbound_").get(f"http.inbound_{orders.inbound_port}.downstream_rq_2xx") == 1
        mesh.wait_in_sync()
        assert mesh.dataplane_status("web-1")["state"] == "in-sync"


def test_grpc_request_crosses_both_sidecars(mesh: MeshHarness) -> None:
    with GrpcTestServer("echo-app") as app:
        mesh.sidecar("echo", app.port, protocol="grpc")
        caller = mesh.sidecar("caller", 1, upstreams=["echo"])
        assert grpc_echo(f"127.0.0.1:{caller.port('echo')}", b"hello") == b"echo-app:hello"
        assert app.calls == 1


def test_tcp_connection_crosses_both_sidecars(mesh: MeshHarness) -> None:
    with TcpEchoServer("db-app") as app:
        mesh.sidecar("db", app.port, protocol="tcp")
        caller = mesh.sidecar("caller", 1, upstreams=["db"])
        assert tcp_exchange(caller.port("db"), b"select 1\n") == b"db-app:select 1\n"


def test_websocket_upgrade_passes_through_http_services(mesh: MeshHarness) -> None:
    with HttpTestServer("chat-app") as app:
        mesh.sidecar("chat", app.port)
        web = mesh.sidecar("web", 1, upstreams=["chat"])

        async def talk() -> str:
            async with aiohttp.ClientSession() as s, s.ws_connect(web.url("chat").replace("http", "ws") + "/ws") as ws:
                await ws.send_str("hi")
                msg = await ws.receive(timeout=5)
                return str(msg.data)

        assert asyncio.run(talk()) == "chat-app:hi"


def _spread(url: str, n: int) -> Counter[str]:
    with httpx.Client(timeout=5) as c:
        return Counter(c.get(url).json()["instance"] for _ in range(n))


def test_instances_that_start_and_stop_are_added_and_dropped(mesh: MeshHarness) -> None:
    with HttpTestServer("orders-a") as a, HttpTestServer("orders-b") as b:
        first = mesh.sidecar("orders", a.port)
        web = mesh.sidecar("web", 1, upstreams=["orders"])
        assert _spread(web.url("orders"), 10) == Counter({"orders-a": 10})

        mesh.sidecar("orders", b.port)
        started = time.monotonic()
        wait_until(lambda: _spread(web.url("orders"), 10).get("orders-b", 0) > 0, 5, what="orders-b gets traffic")
        joined = time.monotonic() - started
        assert set(_spread(web.url("orders"), 20)) == {"orders-a", "orders-b"}

        first.stop()
        started = time.monotonic()
        wait_until(lambda: _spread(web.url("orders"), 10) == Counter({"orders-b": 10}), 5, what="orders-a dropped")
        left = time.monotonic() - started
        # a stopped instance is gone for good, and nothing failed on the way
        assert _spread(web.url("orders"), 30) == Counter({"orders-b": 30})
        assert joined < 5 and left < 5


def test_control_plane_restart_loses_no_request(mesh: MeshHarness) -> None:
    with HttpTestServer("orders-app") as app, HttpTestServer("orders-new") as newer:
        mesh.sidecar("orders", app.port)
        web = mesh.sidecar("web", 1, upstreams=["orders"])
        results: Counter[int] = Counter()
        errors: list[str] = []
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(timeout=5) as c:
                while not stop.is_set():
                    try:
                        results[c.get(web.url("orders")).status_code] += 1
                    except httpx.HTTPError as err:
                        errors.append(repr(err))
                    time.sleep(0.01)

        t = threading.Thread(target=traffic)
        t.start()
        try:
            time.sleep(0.5)
            mesh.restart_control_plane(down_for=2.0)
            time.sleep(0.5)
            # the mesh converges again: agents/Envoys reconnected by themselves
            mesh.wait_in_sync(timeout=20)
            # and new changes flow: a new instance joins after the restart
            mesh.sidecar("orders", newer.port)
            wait_until(lambda: newer.count() > 0, 10, what="new instance receives traffic after restart")
        finally:
            stop.set()
            t.join()
        assert errors == []
        assert set(results) == {200} and results[200] > 100


# -- NACK: a config Envoy rejects --------------------------------------------------------
@pytest.fixture
def breakable_mesh(tmp_path):  # type: ignore[no-untyped-def]
    harness = MeshHarness(tmp_path, build=breakable_control_plane)
    harness.start()
    yield harness
    harness.stop()


def test_rejected_config_is_shown_and_last_good_one_keeps_serving(breakable_mesh: MeshHarness) -> None:
    mesh = breakable_mesh
    with HttpTestServer("orders-app") as app:
        mesh.sidecar("orders", app.port)
        web = mesh.sidecar("web", 1, upstreams=["orders"])
        mesh.wait_in_sync()
        mesh.apply(trigger_dataplane("orders"))
        status = wait_until(lambda: (s := mesh.dataplane_status("web-1"))["state"] == "rejected" and s,
                            10, what="web-1 to NACK")
        assert "(unclosed" in status["lastNack"]["message"]  # Envoy names the bad regex
        # Envoy keeps the previous config: requests still reach orders
        for _ in range(20):
            assert httpx.get(web.url("orders"), timeout=5).json()["instance"] == "orders-app"
        # `meshline get dataplanes` shows it too
        listing = mesh.api.get("/api/v1/meshes/default/dataplanes")["items"]
        assert {i["name"]: i["status"]["state"] for i in listing}["web-1"] == "rejected"
        # fixing the cause brings the dataplane back in sync
        mesh.api.request("DELETE", f"/api/v1/meshes/default/dataplanes/{TRIGGER}")
        wait_until(lambda: mesh.dataplane_status("web-1")["state"] == "in-sync", 10, what="web-1 back in sync")


def test_a_deleted_dataplane_is_registered_again_and_serves(mesh: MeshHarness) -> None:
    with HttpTestServer("orders-app") as app:
        mesh.sidecar("orders", app.port, env={"MESHLINE_REGISTRATION_CHECK_S": "0.3"})
        web = mesh.sidecar("web", 1, upstreams=["orders"])
        mesh.wait_in_sync()
        mesh.api.request("DELETE", "/api/v1/meshes/default/dataplanes/orders-1")

        def serving_again() -> bool:
            doc = mesh.api.get("/api/v1/meshes/default/dataplanes/orders-1")  # 404 raises: retried
            return bool(doc["spec"].get("ready")) and doc["status"]["state"] == "in-sync"

        wait_until(serving_again, 15, what="orders-1 registered again, ready and in sync")
        resp = wait_until(lambda: (r := httpx.get(web.url("orders") + "/", timeout=5)).status_code == 200 and r,
                          10, what="web reaching orders again")  # fmt: skip
        assert resp.json()["instance"] == "orders-app"
        assert "was deleted from the control plane; registered it again" in mesh.sidecars[0].log()
