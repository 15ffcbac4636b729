"""The agent's small HTTP client and server, against real sockets on loopback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from meshline.agent import http
from meshline.agent.api import AgentApi
from meshline.core.errors import NotFound, Unavailable, ValidationError
from meshline.testing.servers import free_port


async def raw_server(response: bytes) -> tuple[asyncio.Server, int, list[bytes]]:
    """A server that records each request's head and answers with ``response`` as is."""
    seen: list[bytes] = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(response)
        await writer.drain()
        writer.close()

    port = free_port()
    return await asyncio.start_server(on_connection, "127.0.0.1", port), port, seen


async def test_reads_a_chunked_body_as_envoys_admin_sends_it() -> None:
    server, port, seen = await raw_server(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nLIVE\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    async with server:
        resp = await http.request("GET", f"http://127.0.0.1:{port}/ready?x=1", headers={"X-A": "b"})
    assert (resp.status, resp.body) == (200, b"LIVE\nabc")
    assert seen[0].startswith(b"GET /ready?x=1 HTTP/1.1\r\n") and b"\r\nX-A: b\r\n" in seen[0]


async def test_talks_to_a_unix_socket_as_to_envoys_admin(tmp_path: Path) -> None:
    seen: list[bytes] = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nLIVE\n")
        await writer.drain()
        writer.close()

    path = tmp_path / "admin.sock"
    async with await asyncio.start_unix_server(on_connection, path):
        resp = await http.request("GET", "http://envoy/ready", uds=path)
    assert (resp.status, resp.body) == (200, b"LIVE\n")
    assert seen[0].startswith(b"GET /ready HTTP/1.1\r\nHost: envoy:80\r\n")
    with pytest.raises(http.HttpError, match=f"via {tmp_path / 'gone.sock'}.*FileNotFoundError"):
        await http.request("GET", "http://envoy/ready", uds=tmp_path / "gone.sock")


async def test_reads_content_length_and_until_close() -> None:
    server, port, _ = await raw_server(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnopeEXTRA")
    async with server:
        resp = await http.request("GET", f"http://127.0.0.1:{port}/")
    assert (resp.status, resp.reason, resp.body) == (404, "Not Found", b"nope")
    server, port, _ = await raw_server(b"HTTP/1.0 200 OK\r\n\r\nall of it")
    async with server:
        assert (await http.request("GET", f"http://127.0.0.1:{port}/")).body == b"all of it"


async def test_connection_refused_and_garbage_are_http_errors() -> None:
    with pytest.raises(http.HttpError, match="ConnectionRefused"):
        await http.request("GET", f"http://127.0.0.1:{free_port()}/")
    server, port, _ = await raw_server(b"SSH-2.0-OpenSSH\r\n\r\n")
    async with server:
        with pytest.raises(http.HttpError, match="not an HTTP/1.x response"):
            await http.request("GET", f"http://127.0.0.1:{port}/")


async def test_server_answers_through_the_handler_and_survives_its_errors() -> None:
    async def handler(method: str, path: str) -> tuple[int, str, bytes]:
        if path == "/boom":
            raise RuntimeError("bug")
        return 200, "text/plain", f"{method} {path}".encode()

    port = free_port()
    server = await http.serve("127.0.0.1", port, handler)
    async with server:
        ok = await http.request("GET", f"http://127.0.0.1:{port}/metrics?x=1")
        boom = await http.request("GET", f"http://127.0.0.1:{port}/boom")
        again = await http.request("POST", f"http://127.0.0.1:{port}/other", body=b"ignored")
    assert (ok.status, ok.body, ok.headers["content-type"]) == (200, b"GET /metrics", "text/plain")
    assert boom.status == 500
    assert (again.status, again.body) == (200, b"POST /other")


async def test_agent_api_sends_json_with_the_token_and_maps_errors() -> None:
    answers = iter(
        [
            b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"ok": true}',
            b'HTTP/1.1 404 Not Found\r\nContent-Length: 26\r\n\r\n{"message": "no such one"}',
            b"HTTP/1.1 422 Unprocessable\r\nContent-Length: 71\r\n\r\n"
            b'{"message": "bad", "problems": [{"path": "spec.port", "message": "x"}]}',
        ]
    )
    requests: list[tuple[bytes, Any]] = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(
                (h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")),
                b"0",
            )
        )
        body = await reader.readexactly(length)
        requests.append((head, json.loads(body) if body else None))
        writer.write(next(answers))
        await writer.drain()
        writer.close()

    port = free_port()
    async with await asyncio.start_server(on_connection, "127.0.0.1", port):
        api = AgentApi(f"http://127.0.0.1:{port}", token="t0k")
        doc = {"kind": "Dataplane", "mesh": "default", "name": "web-1", "spec": {}}
        assert await api.put(doc) == {"ok": True}
        with pytest.raises(NotFound, match="no such one"):
            await api.delete("Dataplane", "default", "web-1")
        with pytest.raises(ValidationError):
            await api.request("POST", "/api/v1/meshes/default/certificates", json={"csr": "x"})
    head, body = requests[0]
    assert head.startswith(b"PUT /api/v1/meshes/default/dataplanes/web-1 HTTP/1.1")
    assert b"Authorization: Bearer t0k" in head and body == doc
    assert requests[1][0].startswith(b"DELETE /api/v1/meshes/default/dataplanes/web-1 ")
    with pytest.raises(Unavailable, match="cannot reach the control plane"):
        await AgentApi(f"http://127.0.0.1:{free_port()}", token="").put(doc)
