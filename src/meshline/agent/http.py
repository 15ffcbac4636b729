"""A small HTTP/1.1 client and server on asyncio streams: all the HTTP a sidecar's agent does.

The agent asks Envoy's admin API (on a Unix socket, ``uds=``) whether it is ready, scrapes its
stats, calls the control plane's API a few times an hour (register, certificates) and answers
Prometheus scrapes. A
general HTTP library (httpx for the client, aiohttp for the server) cost 15 MB of private
memory per sidecar for that; this costs nothing measurable. One request per connection
(``Connection: close``), bodies read whole; responses may be chunked (Envoy's admin API).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MAX_HEADER_LINES = 100


class HttpError(Exception):
    """The request could not be made or its response not read (not an HTTP error status)."""


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)  # names lower-cased

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


async def request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    tls: ssl.SSLContext | None = None,
    timeout: float = 5.0,
    uds: str | os.PathLike[str] | None = None,
) -> Response:
    """One request; raises :class:`HttpError` on a connection, TLS, timeout or protocol error.

    ``uds``: connect to this Unix socket instead of the URL's host and port (the URL still
    gives the scheme, the Host header and the path)."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpError(f"not an http(s) URL: {url}")
    port = parts.port or (443 if https else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]  # fmt: skip
    where = f" (via {os.fspath(uds)})" if uds is not None else ""
    try:
        async with asyncio.timeout(timeout):
            context = (tls or ssl.create_default_context()) if https else None
            if uds is not None:
                reader, writer = await asyncio.open_unix_connection(
                    uds, ssl=context, server_hostname=host if https else None
                )
            else:
                reader, writer = await asyncio.open_connection(host, port, ssl=context)
            try:
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                await writer.drain()
                return await _read_response(reader, method)
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except TimeoutError:
        raise HttpError(f"{method} {url}{where}: no answer within {timeout:g} s") from None
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as err:
        raise HttpError(f"{method} {url}{where}: {type(err).__name__}: {err}") from None


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
        if not line:
            return headers
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    raise ValueError("too many header lines")


async def _read_response(reader: asyncio.StreamReader, method: str) -> Response:
    status_line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ValueError(f"not an HTTP/1.x response: {status_line[:80]!r}")
    headers = await _read_headers(reader)
    status = int(code)
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()  # until the server closes
    return Response(status, reason, body, headers)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await _read_headers(reader)  # trailers, then the blank line
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)  # CRLF after each chunk


# -- server ----------------------------------------------------------------------------

# (method, path) -> (status, content type, body)
Handler = Callable[[str, str], Awaitable[tuple[int, str, bytes]]]
REASONS = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    400: "Bad Request",
    500: "Internal Server Error",
}


async def serve(host: str, port: int, handler: Handler) -> asyncio.Server:
    """Answer each request with ``handler(method, path)`` (query string stripped); request
    bodies are not read (the agent only serves GETs)."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(30):
                line = (await reader.readline()).decode("latin-1").split()
                await _read_headers(reader)
                if len(line) != 3:
                    status, ctype, body = 400, "text/plain", b"bad request\n"
                else:
                    method, target = line[0], line[1].split("?", 1)[0]
                    try:
                        status, ctype, body = await handler(method, target)
                    except Exception:  # the scrape fails, the agent does not
                        status, ctype, body = 500, "text/plain", b"internal error\n"
                head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\nContent-Type: {ctype}\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
                writer.write(head.encode() + body)
                await writer.drain()
        except (TimeoutError, OSError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(on_connection, host, port)
