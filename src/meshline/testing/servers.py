"""Real upstream servers for end-to-end tests: HTTP (aiohttp, with WebSocket echo),
gRPC (generic bytes handler, no generated code) and TCP echo. Each runs on 127.0.0.1 in a
background thread so tests may use blocking clients.

The HTTP server answers every request with JSON naming the instance, so a test sees
where a request landed, and its behaviour can be changed while it runs (fail a share
of requests, delay, fixed status) to exercise retries, outlier detection and timeouts.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web

GRPC_ECHO_METHOD = "/meshline.test.Echo/Echo"


def _ephemeral_low() -> int:
    try:
        return int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker_slice(low: int, high: int) -> tuple[int, int]:
    """Parallel test workers (pytest-xdist) each take their own slice of the range, so two
    workers never hand out the same port before its owner binds it."""
    try:
        index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
        count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    except ValueError:
        return low, high
    size = (high - low) // count
    return low + index % count * size, low + (index % count + 1) * size


_LOW, _HIGH = _worker_slice(20000, max(21000, _ephemeral_low()))
_handed_out: set[int] = set()
_next = [random.Random(os.getpid() ^ time.time_ns()).randrange(_LOW, _HIGH)]
_port_lock = threading.Lock()


def free_port() -> int:
    """A free loopback port for a test server or sidecar.

    Taken below the kernel's ephemeral range (which the kernel also hands out as source
    ports of outgoing connections, so a port found free there can be taken before the
    process that needs it binds it), from a per-process random start, never twice."""
    with _port_lock:
        for _ in range(_HIGH - _LOW):
            port = _next[0]
            _next[0] = _LOW + (port + 1 - _LOW) % (_HIGH - _LOW)
            if port in _handed_out:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port below the ephemeral range")


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports (all reserved like :func:`free_port`)."""
    while True:
        first = free_port()
        taken = [first]
        for _ in range(count - 1):
            nxt = free_port()
            taken.append(nxt)
            if nxt != taken[-2] + 1:
                break
        if len(taken) == count and taken[-1] == first + count - 1:
            return first


class _LoopThread:
    """An event loop in a daemon thread, to host async servers for blocking tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class Behaviour:
    status: int = 200
    fail_ratio: float = 0.0  # share of requests answered with fail_status
    fail_status: int = 503
    delay: float = 0.0  # seconds before answering
    body_size: int = 0  # extra payload bytes


@dataclass
class HttpTestServer:
    name: str
    port: int = 0
    host: str = "127.0.0.1"  # where it listens ("0.0.0.0": every interface, like many real apps)
    behaviour: Behaviour = field(default_factory=Behaviour)
    requests: list[dict[str, Any]] = field(default_factory=list)
    _loop: _LoopThread | None = None
    _runner: web.AppRunner | None = None
    _rng: random.Random = field(default_factory=lambda: random.Random(7))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                await ws.send_str(f"{self.name}:{msg.data}")
            return ws
        body = await request.read()
        record = {"method": request.method, "path": request.path_qs, "headers": dict(request.headers),
                  "body": body.decode(errors="replace"), "at": time.time()}
        self.requests.append(record)
        b = self.behaviour
        if b.delay:
            await asyncio.sleep(b.delay)
        status = b.status
        if b.fail_ratio and self._rng.random() < b.fail_ratio:
            status = b.fail_status
        payload = {"instance": self.name, "method": request.method, "path": request.path_qs,
                   "headers": dict(request.headers), "status": status, "remote": request.remote}
        if b.body_size:
            payload["pad"] = "x" * b.body_size
        return web.json_response(payload, status=status, headers={"x-instance": self.name})

    def start(self) -> HttpTestServer:
        self._loop = _LoopThread()
        self.port = self.port or free_port()

        async def up() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, self.host, self.port).start()

        self._loop.run(up())
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._runner is not None:
            self._loop.run(self._runner.cleanup())
        self._loop.stop()
        self._loop = None

    def count(self) -> int:
        return len(self.requests)

    def __enter__(self) -> HttpTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GrpcTestServer:
    """Answers GRPC_ECHO_METHOD with b"<name>:<request bytes>"; optional status to fail with."""

    def __init__(self, name: str, port: int = 0, host: str = "127.0.0.1") -> None:
        self.name = name
        self.port = port or free_port()
        self.host = host
        self.calls = 0
        self.fail_code: grpc.StatusCode | None = None
        self._server: grpc.Server | None = None

    def _echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls += 1
        if self.fail_code is not None:
            context.abort(self.fail_code, f"{self.name} fails on purpose")
        return self.name.encode() + b":" + request

    def start(self) -> GrpcTestServer:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handler = grpc.method_handlers_generic_handler(
            "meshline.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(self._echo)}
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"{self.host}:{self.port}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0).wait(5)
            self._server = None

    def __enter__(self) -> GrpcTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def grpc_echo(target: str, payload: bytes = b"ping", timeout: float = 5.0,
              metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
    with grpc.insecure_channel(target) as channel:
        call: Callable[..., bytes] = channel.unary_unary(GRPC_ECHO_METHOD)
        return call(payload, timeout=timeout, metadata=metadata)


def grpcs_echo(target: str, server_name: str, ca_pem: bytes, payload: bytes = b"ping", timeout: float = 5.0) -> bytes:
    """The echo call over TLS (as a client outside the mesh calls a gateway), SNI ``server_name``."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    options = (("grpc.ssl_target_name_override", server_name), ("grpc.default_authority", server_name))
    with grpc.secure_channel(target, creds, options=options) as channel:
        call: Callable[..., bytes] = channel.unary_unary(GRPC_ECHO_METHOD)
        return call(payload, timeout=timeout)


class TcpEchoServer:
    """Echoes each line back prefixed with the instance name: b"<name>:<line>"."""

    def __init__(self, name: str, port: int = 0, host: str = "127.0.0.1", banner: bool = False) -> None:
        self.name = name
        self.port = port or free_port()
        self.host = host
        self.banner = banner  # speak first: b"<name>:hello\n" before reading anything (like SMTP, MySQL)
        self.connections = 0
        self._loop: _LoopThread | None = None
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            if self.banner:
                writer.write(self.name.encode() + b":hello\n")
                await writer.drain()
            while line := await reader.readline():
                writer.write(self.name.encode() + b":" + line)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._clients.discard(task)

    def start(self) -> TcpEchoServer:
        self._loop = _LoopThread()

        async def up() -> None:
            self._server = await asyncio.start_server(self._client, self.host, self.port)

        self._loop.run(up())
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._server is not None:
            server = self._server

            async def down() -> None:
                server.close()
                # end open connections here, not as tasks destroyed with the loop
                for task in list(self._clients):
                    task.cancel()
                await asyncio.gather(*self._clients, return_exceptions=True)

            self._loop.run(down())
        self._loop.stop()
        self._loop = None

    def __enter__(self) -> TcpEchoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tcp_exchange(port: int, line: bytes = b"hello\n", timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(line)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def landed(responses: list[dict[str, Any]]) -> Counter[str]:
    """Count which instance answered each response (from the JSON the HTTP server returns)."""
    return Counter(r["instance"] for r in responses)


def dumps(obj: object) -> str:
    return json.dumps(obj, sort_keys=True)
