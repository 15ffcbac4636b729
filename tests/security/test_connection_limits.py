"""Finding 5: idle connections were never closed.

The attack: ~20,000 idle TCP connections without credentials exhausted the control plane's
file descriptors; the API stopped answering and the log filled with a traceback per failed
accept. Against a real control plane (TLS on both ports, short timeouts from the settings'
environment variables so the test need not wait a minute) and real sidecars:

* thousands of idle connections to the API and xDS ports are closed by the server after the
  handshake / idle timeout, and past ``MESHLINE_MAX_CONNECTIONS`` silent ones are shed;
* meanwhile an authenticated API call, the running sidecars (traffic and config pushes) and a
  sidecar that starts during the flood are served;
* the log has a few rate-limited warnings, no traceback per connection.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import selectors
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshline.testing.mesh import wait_until
from tests.security.world import World, secured_world

HANDSHAKE_S, IDLE_S, MAX_CONNECTIONS = 1, 2, 1000
PER_PORT = 1500  # past the limit on each port
ENV = {
    "MESHLINE_API_TLS": "on",
    "MESHLINE_HANDSHAKE_TIMEOUT_S": str(HANDSHAKE_S),
    "MESHLINE_IDLE_TIMEOUT_S": str(IDLE_S),
    "MESHLINE_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
}
TIMEOUT = """
kind: Timeout
mesh: default
name: orders-during-the-flood
spec:
  destinations: [{match: {service: orders}}]
  conf: {http: {requestTimeout: 7s}}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with secured_world(Path(tmp_path_factory.mktemp("conns")), env=ENV) as w:
        yield w


def open_idle(port: int, n: int) -> list[socket.socket]:
    """``n`` TCP connections that never send a byte (no TLS handshake, no credential)."""
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setblocking(False)
        out.append(s)
    return out


def open_silent_tls(world: World, n: int) -> list[ssl.SSLSocket]:
    """``n`` API connections that finish the TLS handshake and then send nothing."""
    ctx = ssl.create_default_context(cafile=str(world.harness.data_dir / "cp-ca.pem"))
    out = []
    for _ in range(n):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", world.harness.api_port), timeout=5),
                            server_hostname="127.0.0.1")
        s.setblocking(False)
        out.append(s)
    return out


def wait_closed_by_server(socks: list[socket.socket], timeout: float) -> int:
    """How many of ``socks`` the server closed (EOF or reset) within ``timeout`` seconds."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    closed, deadline = 0, time.monotonic() + timeout
    while closed < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(1)
            except (ssl.SSLWantReadError, BlockingIOError):
                continue
            except OSError:  # reset
                data = b""
            if not data:
                sel.unregister(s)
                closed += 1
    sel.close()
    return closed


def config_has(world: World, text: str) -> bool:
    return text in world.web.admin("/config_dump?resource=dynamic_route_configs").text


@pytest.mark.e2e
def test_idle_connections_are_closed_while_clients_keep_being_served(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    h = world.harness
    socks: list[socket.socket] = []
    late = None
    try:
        socks += open_idle(h.api_port, PER_PORT)
        socks += open_idle(h.xds_port, PER_PORT)
        socks += open_silent_tls(world, 20)
        # both ports are past their limit: clients that talk are served all the same
        assert h.api.get("/api/v1/meshes")["items"]
        assert httpx.get(world.web.url("orders") + "/", timeout=5).status_code == 200
        h.apply(TIMEOUT)  # the running sidecars' xDS streams still get pushes
        wait_until(lambda: config_has(world, '"timeout": "7s"'), 15, what="the push to reach web")
        late = h.sidecar("web", 1, upstreams=["orders"], wait=False)  # connects during the flood
        closed = wait_closed_by_server(socks, timeout=IDLE_S + HANDSHAKE_S + 8)
        assert closed == len(socks), f"{len(socks) - closed} idle connections still open"
        h.wait_ready(late)
        assert httpx.get(late.url("orders") + "/", timeout=5).status_code == 200
    finally:
        for s in socks:
            s.close()
        if late is not None:
            late.stop()
    guard = world.on_loop(lambda cp: cp.api_connections)
    assert guard.limit == MAX_CONNECTIONS and guard.shed >= PER_PORT - MAX_CONNECTIONS
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks[0].getMessage()
    assert "Traceback" not in caplog.text
    at_limit = [r for r in caplog.records if "at the limit" in r.getMessage()]
    assert 1 <= len(at_limit) <= 3  # one warning per 10 s, not one per connection


def test_the_open_file_limit_is_raised_at_start() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 256:
        pytest.skip(f"the hard open-file limit ({hard}) leaves nothing to raise")
    code = (
        "import resource; from meshline.controlplane.limits import raise_fd_limit;"
        "print(raise_fd_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    # prlimit, not preexec_fn: Python code between fork and exec can deadlock on gRPC's threads.
    prlimit = shutil.which("prlimit") or "/usr/bin/prlimit"
    out = subprocess.run(
        [prlimit, f"--nofile=256:{hard}", "--", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert out.stdout.split() == [str(hard)] * 3


async def test_accept_failures_are_one_warning_not_a_traceback_each(caplog: pytest.LogCaptureFixture) -> None:
    """What asyncio reports when accept() runs out of descriptors (it retries a second later)."""
    from meshline.controlplane.limits import QuietConnectionErrors

    loop = asyncio.get_running_loop()
    others: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: others.append(context))
    quiet = QuietConnectionErrors(loop)
    quiet.install()
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(1000):
                loop.call_exception_handler({
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files"),
                })  # fmt: skip
            loop.call_exception_handler({"message": "something else", "exception": ValueError("x")})
    finally:
        quiet.uninstall()
        loop.set_exception_handler(None)
    warned = [r for r in caplog.records if "cannot accept connections" in r.getMessage()]
    assert len(warned) == 1 and not warned[0].exc_info
    assert "Too many open files" in warned[0].getMessage()
    assert [c["message"] for c in others] == ["something else"]  # the rest goes on as before


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class FakeConnection:
    def __init__(self) -> None:
        self.transport = FakeTransport()


def test_past_the_limit_the_oldest_silent_connection_makes_room() -> None:
    from meshline.api.site import ConnectionGuard

    guard = ConnectionGuard(limit=2)

    def conn() -> Any:
        c = FakeConnection()
        guard.opened(c)  # type: ignore[arg-type]
        return c

    a, b = conn(), conn()
    guard.spoke(b)  # b sent a request: it is served, never shed
    c = conn()
    assert a.transport.aborted and not b.transport.aborted and not c.transport.aborted
    guard.spoke(c)
    d = conn()  # every held connection is in use: the new one is refused
    assert d.transport.aborted and guard.open == 2 and guard.shed == 2
    guard.closed(b)
    e = conn()
    assert not e.transport.aborted and guard.open == 2
