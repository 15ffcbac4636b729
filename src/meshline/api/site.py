"""The API's listening socket, with a bound on the connections it holds.

aiohttp's own sites accept connections without limit and wait for a TLS handshake as long
as asyncio's default (60 s). Here every accepted TCP connection passes through
:class:`ConnectionGuard` at once, before any TLS (which is started per connection with
``loop.start_tls``, so a connection that never completes its handshake is counted and can
be shed too): over the limit, the oldest connection that has not sent a request byte yet
(idle, so it has shown no credential) is closed to make room, so clients that talk keep
being served while silent ones are shed; only when every held connection has spoken is the
new one refused. The request-head and idle timeouts are aiohttp's ``keepalive_timeout`` (the
runner's), and the TLS handshake has ``handshake_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from aiohttp import web

from meshline.core.ratelog import RateLimitedLog

log = logging.getLogger("meshline.api")


class _Guarded(asyncio.Protocol):
    """One accepted connection: tells the guard when it opens, first speaks and closes; runs
    its TLS handshake, then hands the connection to aiohttp's protocol (made by ``make``)."""

    def __init__(
        self, make: Callable[[], asyncio.Protocol], guard: ConnectionGuard, tls: ssl.SSLContext | None,
        handshake_timeout: float,
    ) -> None:  # fmt: skip
        self.make = make
        self.guard = guard
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self.transport: asyncio.Transport | None = None  # the TCP connection: what the guard closes
        self.inner: asyncio.Protocol | None = None
        self._early: list[bytes] = []  # request bytes that arrived with the end of the handshake
        self._handshake: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.guard.opened(self)
        if transport.is_closing():  # shed at once
            return
        if self.tls is None:
            self._serve(transport)
        else:
            self._handshake = asyncio.get_running_loop().create_task(self._start_tls(transport, self.tls))

    async def _start_tls(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        try:
            tls = await asyncio.get_running_loop().start_tls(
                raw, self, context, server_side=True, ssl_handshake_timeout=self.handshake_timeout
            )
        except (OSError, asyncio.CancelledError):  # timed out, refused by TLS, shed, or shutting down
            self.guard.closed(self)
            return
        if tls is None:
            self.guard.closed(self)
            return
        self._serve(tls)

    def _serve(self, transport: asyncio.Transport) -> None:
        self.inner = self.make()
        self.inner.connection_made(transport)
        for data in self._early:
            self.inner.data_received(data)
        self._early.clear()

    def data_received(self, data: bytes) -> None:
        self.guard.spoke(self)
        if self.inner is None:
            self._early.append(data)
        else:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.closed(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class ConnectionGuard:
    def __init__(self, limit: int, what: str = "API") -> None:
        self.limit = limit
        self.what = what
        self._silent: dict[_Guarded, None] = {}  # oldest first: never sent a byte
        self._spoken: set[_Guarded] = set()
        self.shed = 0  # connections closed to stay within the limit
        self._log = RateLimitedLog(log)

    @property
    def open(self) -> int:
        return len(self._silent) + len(self._spoken)

    def opened(self, conn: _Guarded) -> None:
        self._silent[conn] = None
        if self.open <= self.limit:
            return
        victim = next(iter(self._silent))  # the oldest silent one: the new one if none other is
        self._drop(victim)
        self._log.warning(
            "limit",
            "%s connections at the limit (%d, MESHLINE_MAX_CONNECTIONS): %s",
            self.what,
            self.limit,
            "refused a new one, every other is in use" if victim is conn else "closed the oldest idle one",
        )

    def spoke(self, conn: _Guarded) -> None:
        if conn in self._silent:
            del self._silent[conn]
            self._spoken.add(conn)

    def closed(self, conn: _Guarded) -> None:
        self._silent.pop(conn, None)
        self._spoken.discard(conn)

    def _drop(self, conn: _Guarded) -> None:
        self.closed(conn)
        self.shed += 1
        if conn.transport is not None:
            conn.transport.abort()


async def start_site(
    runner: web.AppRunner,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    handshake_timeout: float,
    max_connections: int,
) -> tuple[asyncio.Server, ConnectionGuard]:
    """Listen for the API (after ``runner.setup()``); close the server before ``runner.cleanup()``."""
    server = runner.server
    assert server is not None, "runner.setup() first"
    guard = ConnectionGuard(max_connections)
    listener = await asyncio.get_running_loop().create_server(
        lambda: _Guarded(server, guard, ssl_context, handshake_timeout), host, port, reuse_address=True, backlog=1024
    )
    return listener, guard
