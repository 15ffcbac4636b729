"""Operations without dropped requests (issue 16), with real Envoys and a steady bounded load
client counting every request (meshline.testing.load).

* A graceful stop (SIGTERM to the agent) of one of three instances: the agent deregisters,
  waits until the caller's sidecar has ACKed a config without it, drains, then stops: 0 failed.
* A long-lived connection across a graceful stop of the sidecar it goes through ends cleanly,
  with 0 failed requests on it: HTTP/1.1 keep-alive gets ``Connection: close`` after its
  request, HTTP/2 (a gRPC channel) gets GOAWAY and no stream is reset, and a WebSocket under
  `meshline run` ends with the app's own close frame (the app hears SIGTERM after the drain).
* `meshline drain NAME` takes an instance out under load with 0 failed requests.

A sidecar killed first (no graceful stop) is covered by tests/security/test_agent_crash.py:
callers stop sending to it within about a second, not after the 10 s offline timeout.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import httpx
import pytest

from meshline.testing.load import RATE_HZ, PacedLoad
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import GRPC_ECHO_METHOD, GrpcTestServer, HttpTestServer, free_port

AFTER = RATE_HZ  # requests counted after the stop, so the survivors are seen serving


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MeshHarness]:
    spec = {"mtls": {"mode": "strict"}, "defaultPermission": "allow"}
    with MeshHarness(tmp_path, mtls="strict", auth=True, mesh_spec=spec) as m:
        yield m


def endpoints(caller: Sidecar, service: str = "orders") -> set[int]:
    """The ports of ``service`` the caller's Envoy would send to now (its EDS view)."""
    ports = set()
    for line in caller.admin("/clusters").text.splitlines():
        if line.startswith(f"{service}::") and "::cx_active::" in line:
            ports.add(int(line.split("::")[1].rsplit(":", 1)[1]))
    return ports


def ack_seconds(log: str) -> float | None:
    m = re.search(r"every caller ACKed a config without this instance in ([0-9.]+)s", log)
    return float(m.group(1)) if m else None


def test_a_graceful_stop_of_one_of_three_instances_fails_no_request(mesh: MeshHarness) -> None:
    with HttpTestServer("orders-a") as a, HttpTestServer("orders-b") as b, HttpTestServer("orders-c") as c:
        instances = [mesh.sidecar("orders", app_port=app.port, name=f"orders-{i}") for i, app in
                     enumerate((a, b, c), 1)]  # fmt: skip
        web = mesh.sidecar("web", app_port=free_port(), upstreams=["orders"])
        wait_until(lambda: endpoints(web) == {s.inbound_port for s in instances}, 15, what="web to see all three")
        load = PacedLoad(web.url("orders") + "/").start()
        try:
            wait_until(lambda: {"orders-a", "orders-b", "orders-c"} <= {w for _, w in load.outcomes}, 15,
                       what="all three serving")  # fmt: skip
            stopping = instances[0]
            stopped_at = time.monotonic()
            rc = stopping.stop(timeout=30)  # SIGTERM: the graceful stop
            done_at = time.monotonic()
            wait_until(lambda: len(load.since(done_at)) >= AFTER, 30, what="requests after the stop")
        finally:
            load.stop()
        log = stopping.log()
        assert rc == 0, log
        assert stopping.inbound_port not in endpoints(web)
        failed = load.failed("orders-")
        during = load.since(stopped_at)
        print(f"graceful stop: {len(failed)} failed of {len(load.outcomes)} ({len(during)} during and after the"
              f" stop, which took {done_at - stopped_at:.2f}s; last caller ACK {ack_seconds(log)}s after deregistering)")
        assert failed == [], failed
        assert ack_seconds(log) is not None, log  # it waited for web's ACK, and said so
        assert {w for _, w in load.since(done_at)} == {"orders-b", "orders-c"}
        # the order of events on stop, as the agent reports them
        order = [log.index(s) for s in ("deregistered dataplane orders-1", "every caller ACKed", "draining Envoy")]
        assert order == sorted(order), log


def test_a_long_lived_connection_across_a_graceful_stop_ends_cleanly(mesh: MeshHarness) -> None:
    """One keep-alive connection from web's app through web's sidecar while that sidecar stops:
    Envoy answers the request in flight and then closes the connection (``Connection: close``),
    rather than resetting it under a request."""
    with HttpTestServer("orders-a") as a:
        mesh.sidecar("orders", app_port=a.port, name="orders-1")
        web = mesh.sidecar("web", app_port=free_port(), upstreams=["orders"], extra_args=["--drain-seconds", "3"])
        wait_until(lambda: len(endpoints(web)) == 1, 15, what="web to see orders")
        outcomes: list[str] = []
        closing: list[str] = []
        with httpx.Client(timeout=5) as client:
            for _ in range(20):  # warm: one connection, reused
                outcomes.append(client.get(web.url("orders") + "/").json()["instance"])
            web.proc.send_signal(15)
            wait_until(lambda: "draining Envoy" in web.log(), 15, what="web's sidecar to drain")
            deadline = time.monotonic() + 2  # bounded: within the drain period
            while time.monotonic() < deadline and not closing:
                try:
                    r = client.get(web.url("orders") + "/")
                except httpx.HTTPError as err:
                    outcomes.append(type(err).__name__)
                    break
                outcomes.append(r.json()["instance"] if r.status_code == 200 else f"HTTP {r.status_code}")
                if r.headers.get("connection", "").lower() == "close":
                    closing.append(r.headers["connection"])
        assert web.stop(timeout=30) == 0, web.log()
        assert set(outcomes) == {"orders-a"}, outcomes  # no request failed
        assert closing, "Envoy never asked the keep-alive connection to close while draining"


def _drain_stats(sc: Sidecar) -> dict[str, int]:
    """Envoy's downstream close counters summed over its HTTP connection managers."""
    out: dict[str, int] = {}
    for key, value in sc.stats("downstream_").items():
        for name in ("downstream_cx_drain_close", "downstream_rq_rx_reset", "downstream_cx_destroy_remote_active_rq",
                     "downstream_cx_destroy_local_active_rq", "downstream_rq_completed"):
            if key.startswith("http.") and key.endswith("." + name):
                out[name] = out.get(name, 0) + value
    return out


def test_a_long_lived_http2_connection_across_a_graceful_stop_gets_goaway_not_a_reset(mesh: MeshHarness) -> None:
    """A gRPC channel (one HTTP/2 connection) from web's app through web's sidecar, used while
    that sidecar stops: Envoy sends GOAWAY (counted as a drain close), every RPC succeeds (the
    channel moves to a new connection), none is reset."""
    with GrpcTestServer("echo-a") as app:
        mesh.sidecar("echo", app_port=app.port, protocol="grpc", name="echo-1")
        web = mesh.sidecar("web", app_port=free_port(), upstreams=["echo"], extra_args=["--drain-seconds", "3"])
        wait_until(lambda: len(endpoints(web, "echo")) == 1, 15, what="web to see echo")
        replies: list[str] = []
        with grpc.insecure_channel(f"127.0.0.1:{web.port('echo')}") as channel:
            echo = channel.unary_unary(GRPC_ECHO_METHOD)

            def call() -> None:
                try:
                    replies.append(echo(b"x", timeout=5).decode())
                except grpc.RpcError as err:
                    replies.append(f"{err.code().name}")

            for _ in range(20):
                call()
            web.proc.send_signal(15)
            wait_until(lambda: "draining Envoy" in web.log(), 15, what="web's sidecar to drain")
            drained: dict[str, int] = {}
            deadline = time.monotonic() + 2  # bounded: within the 3 s drain period
            while time.monotonic() < deadline:
                call()
                drained = _drain_stats(web)
                if drained.get("downstream_cx_drain_close", 0) >= 1 and len(replies) >= 40:
                    break
        assert web.stop(timeout=30) == 0, web.log()
        print(f"HTTP/2 across a graceful stop: {len(replies)} RPCs, {sum(r != 'echo-a:x' for r in replies)} failed;"
              f" stats {drained}")
        assert set(replies) == {"echo-a:x"}, replies
        assert drained.get("downstream_cx_drain_close", 0) >= 1, drained  # GOAWAY sent for the drain
        assert drained.get("downstream_rq_rx_reset", 0) == 0, drained
        assert drained.get("downstream_cx_destroy_local_active_rq", 0) == 0, drained


def test_meshline_drain_takes_an_instance_out_and_leaves_it_running(mesh: MeshHarness) -> None:
    with HttpTestServer("orders-a") as a, HttpTestServer("orders-b") as b:
        first = mesh.sidecar("orders", app_port=a.port, name="orders-1")
        mesh.sidecar("orders", app_port=b.port, name="orders-2")
        web = mesh.sidecar("web", app_port=free_port(), upstreams=["orders"])
        wait_until(lambda: len(endpoints(web)) == 2, 15, what="web to see both")
        # while it is in service, the check sees web's config list it (what the wait relies on)
        before = mesh.api.get("/api/v1/meshes/default/dataplanes/orders-1/removal",
                              params={"service": "orders", "address": "127.0.0.1", "port": first.inbound_port})
        assert before["done"] is False and "still lists this instance" in before["pending"]["web-1"], before
        load = PacedLoad(web.url("orders") + "/").start()
        try:
            wait_until(lambda: {"orders-a", "orders-b"} <= {w for _, w in load.outcomes}, 15, what="both serving")
            env = {**os.environ, "MESHLINE_TOKEN": mesh.admin_token() or ""}
            out = subprocess.run([sys.executable, "-m", "meshline", "--api", mesh.api_url, "drain", "orders-1"],
                                 capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
            drained_at = time.monotonic()
            wait_until(lambda: len(load.since(drained_at)) >= AFTER, 30, what="requests after the drain")
        finally:
            load.stop()
        print(out.stdout.strip())
        assert out.returncode == 0, out.stdout + out.stderr
        assert "drained orders-1: every caller ACKed a config without this instance" in out.stdout, out.stdout
        assert load.failed("orders-") == []
        # once the command returned, web's sidecar had the config without it: nothing more lands there
        assert {w for _, w in load.since(drained_at)} == {"orders-b"}
        assert first.proc.poll() is None and first.ready()  # agent and Envoy still running
        assert first.inbound_port not in endpoints(web)
        unknown = subprocess.run([sys.executable, "-m", "meshline", "--api", mesh.api_url, "drain", "nope"],
                                 capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
        assert unknown.returncode != 0 and "nope" in unknown.stderr, unknown.stderr


def test_the_removal_check_keeps_to_the_token_scope_and_names_bad_input(mesh: MeshHarness) -> None:
    with HttpTestServer("orders-a") as a:
        first = mesh.sidecar("orders", app_port=a.port, name="orders-1")
        url = f"{mesh.api_url}/api/v1/meshes/default/dataplanes/orders-1/removal"
        query = {"service": "orders", "address": "127.0.0.1", "port": str(first.inbound_port)}

        def ask(token: str, params: dict[str, str]) -> httpx.Response:
            return httpx.get(url, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=5)

        own = ask(first.token or "", query)
        assert own.status_code == 200 and own.json()["done"] is True, own.text  # no callers: done
        other = ask(mesh.dataplane_token("orders", name="orders-2"), query)
        assert other.status_code == 403 and "its own dataplane" in other.text, other.text
        billing = ask(mesh.dataplane_token("billing"), query)
        assert billing.status_code == 403, billing.text
        bad = ask(first.token or "", {**query, "port": "http"})
        assert bad.status_code == 422 and "port" in bad.text and "1-65535" in bad.text, bad.text
        missing = ask(first.token or "", {"service": "orders"})
        assert missing.status_code == 422 and "address" in missing.text and "port" in missing.text, missing.text


WEBSOCKET_APP = """
import asyncio, signal, sys
from aiohttp import WSCloseCode, web

sockets = set()

async def ws(request):
    w = web.WebSocketResponse()
    await w.prepare(request)
    sockets.add(w)
    async for msg in w:
        await w.send_str("chat:" + msg.data)
    sockets.discard(w)
    return w

async def main():
    app = web.Application()
    app.router.add_get("/ws", ws)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1])).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for w in list(sockets):  # a clean goodbye: a close frame, code 1001
        await w.close(code=WSCloseCode.GOING_AWAY, message=b"stopping")
    await runner.cleanup()

asyncio.run(main())
"""


def test_a_websocket_across_a_graceful_stop_ends_with_a_close_frame(mesh: MeshHarness) -> None:
    """Under `meshline run`, the app hears SIGTERM only after the drain, while Envoy still
    carries its connections: its close frame reaches the client through both sidecars."""
    app_port = free_port()
    name = "chat-1"
    work_dir = mesh.tmp / "dp" / f"default.{name}"
    work_dir.mkdir(parents=True, mode=0o700)
    cmd = mesh.agent_command("chat", app_port, name=name, inbound_port=free_port(), protocol="http", tags={},
                             upstreams={}, mesh="default", work_dir=work_dir)  # fmt: skip
    cmd[cmd.index("dataplane")] = "run"
    cmd += ["--", sys.executable, "-c", WEBSOCKET_APP, str(app_port)]
    log_path = work_dir / "agent.log"
    env = {**os.environ, "MESHLINE_DATA_DIR": str(mesh.data_dir), "MESHLINE_TOKEN": mesh.dataplane_token("chat", name=name)}
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    chat = Sidecar(name, "chat", "default", int(cmd[cmd.index("--inbound-port") + 1]), app_port, {}, work_dir,
                   proc, log_path)  # fmt: skip
    mesh.sidecars.append(chat)  # the harness stops it, whatever happens
    web = mesh.sidecar("web", app_port=free_port(), upstreams=["chat"])
    wait_until(lambda: endpoints(web, "chat") == {chat.inbound_port}, 30, what="web to see chat (ready)")

    async def talk() -> tuple[list[str], aiohttp.WSMessage]:
        echoes: list[str] = []
        url = web.url("chat").replace("http", "ws") + "/ws"
        async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
            for i in range(5):
                await ws.send_str(f"m{i}")
                echoes.append(str((await ws.receive(timeout=5)).data))
            proc.send_signal(15)
            for i in range(200):  # bounded: ~10 s at most
                try:
                    await ws.send_str(f"d{i}")
                except ConnectionError:
                    break
                msg = await ws.receive(timeout=5)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    return echoes, msg
                echoes.append(str(msg.data))
                await asyncio.sleep(0.05)
            return echoes, await ws.receive(timeout=5)

    echoes, last = asyncio.run(talk())
    assert proc.wait(30) == 0, chat.log()
    print(f"WebSocket across a graceful stop: {len(echoes)} echoes, then {last.type.name} {last.data}")
    assert all(e.startswith("chat:") for e in echoes) and len(echoes) >= 5, echoes
    assert last.type == aiohttp.WSMsgType.CLOSE and last.data == 1001, (last, chat.log())
    out = chat.log()
    assert out.index("draining Envoy") < out.index("waiting for the app"), out
