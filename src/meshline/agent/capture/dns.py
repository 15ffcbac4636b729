"""The agent's DNS server for a transparent workload (UDP and TCP, on 127.0.0.1).

The capture rules send the app's DNS queries (udp/tcp 53) here. Mesh names (``orders.mesh``,
and bare ``orders`` unless the mesh turns bare names off) are answered from the table the
control plane sent (:mod:`meshline.agent.capture.dns_table`): an A record with the service's
VIP, no AAAA (VIPs are IPv4), NXDOMAIN for an unknown ``*.mesh``. Every other query is sent,
byte for byte, to the host's own resolver (``/etc/resolv.conf`` as it was when the agent
started), and its answer comes back unchanged. The agent runs in the proxy group, so its own
queries are not captured.

Bounded: at most ``MAX_IN_FLIGHT`` forwarded queries and ``MAX_TCP_CLIENTS`` TCP clients at
once (more are dropped, as a busy resolver would), each forward waits ``FORWARD_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, cast

from meshline.agent.capture.dns_table import DnsTable

log = logging.getLogger("meshline.agent.dns")
TTL = 5  # seconds: short, so a moved VIP (never, in practice) or a removed service ages out fast
FORWARD_TIMEOUT_S = 3.0
MAX_IN_FLIGHT = 256
MAX_TCP_CLIENTS = 64
MAX_MESSAGE = 65535
QTYPE_A, QTYPE_AAAA, QCLASS_IN = 1, 28, 1
RCODE_NXDOMAIN, RCODE_SERVFAIL, RCODE_FORMERR = 3, 2, 1


def host_resolvers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The nameservers of this host (the system default 127.0.0.1 when none is listed)."""
    out = []
    try:
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    out.append(str(ipaddress.ip_address(parts[1].split("%")[0])))
    except OSError:
        pass
    return out or ["127.0.0.1"]


def parse_question(msg: bytes) -> tuple[int, str, int, int, int]:
    """(id, name, qtype, qclass, end of the question) of a query; ValueError if malformed."""
    if len(msg) < 12:
        raise ValueError("short message")
    qid, flags, qdcount = struct.unpack("!HHH", msg[:6])
    if flags & 0x8000 or qdcount != 1:
        raise ValueError("not a single-question query")
    i, labels = 12, []
    while True:
        if i >= len(msg):
            raise ValueError("truncated name")
        size = msg[i]
        i += 1
        if size == 0:
            break
        if size & 0xC0 or i + size > len(msg):
            raise ValueError("bad label")
        labels.append(msg[i : i + size].decode("ascii", errors="replace"))
        i += size
    if i + 4 > len(msg):
        raise ValueError("truncated question")
    qtype, qclass = struct.unpack("!HH", msg[i : i + 4])
    return qid, ".".join(labels), qtype, qclass, i + 4


def answer(query: bytes, end: int, qtype: int, vip: str | None) -> bytes:
    """The authoritative response to ``query`` for a mesh name."""
    qid, flags = struct.unpack("!HH", query[:4])
    rd = flags & 0x0100
    records = b""
    rcode = 0
    if vip is None:
        rcode = RCODE_NXDOMAIN
    elif qtype == QTYPE_A:
        records = struct.pack("!HHHIH", 0xC00C, QTYPE_A, QCLASS_IN, TTL, 4) + socket.inet_aton(vip)
    head = struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | rd | 0x0080 | rcode, 1, 1 if records else 0, 0, 0)
    return head + query[12:end] + records


def error_response(query: bytes, rcode: int) -> bytes:
    qid, flags = struct.unpack("!HH", query[:4])
    return struct.pack("!HHHHHH", qid, 0x8000 | (flags & 0x0100) | 0x0080 | rcode, 0, 0, 0, 0)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.spawn(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        out = await self.server.resolve(data, tcp=False)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


class _ForwardUdp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.done.done():
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


class DnsServer:
    """Serves one agent's mesh DNS on ``address:port``."""

    def __init__(self, table: DnsTable, port: int, address: str = "127.0.0.1",
                 upstreams: list[str] | None = None, upstream_port: int = 53) -> None:  # fmt: skip
        self.table = table
        self.port = port
        self.address = address
        self.upstreams = upstreams if upstreams is not None else host_resolvers()
        self.upstream_port = upstream_port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._tcp_clients = 0
        self.answered = 0  # mesh names answered
        self.forwarded = 0
        self.inherited: tuple[int, int] | None = None  # (udp, tcp) fds an upgrade handed over

    async def start(self) -> None:
        """Listen on UDP and TCP at one port; port 0 picks a free one for both (tests)."""
        loop = asyncio.get_running_loop()
        if self.inherited is not None:  # the sockets the old program bound: queries queued meanwhile are answered
            udp_fd, tcp_fd = self.inherited
            self.inherited = None
            udp = socket.socket(fileno=udp_fd)
            tcp = socket.socket(fileno=tcp_fd)
            for s in (udp, tcp):
                s.set_inheritable(False)
                s.setblocking(False)
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
            self._tcp = await asyncio.start_server(self._tcp_client, sock=tcp)
            return
        for attempt in range(20 if self.port == 0 else 1):
            transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(self.address, self.port))
            port = int(transport.get_extra_info("sockname")[1])
            try:
                self._tcp = await asyncio.start_server(self._tcp_client, self.address, port)
            except OSError:
                transport.close()
                if self.port != 0 or attempt == 19:
                    raise
                continue  # another process holds that TCP port: try another
            self._udp, self.port = transport, port
            return

    async def detach(self) -> tuple[int, int] | None:
        """Stop serving but keep the bound sockets open and inheritable across an exec
        (``(udp fd, tcp fd)``): the port never closes, so a query during the upgrade waits in
        the socket's queue instead of being refused (a refusal fails the app's lookup at once)."""
        if self._udp is None or self._tcp is None:
            await self.stop()
            return None
        fds = []
        for sock in (self._udp.get_extra_info("socket"), self._tcp.sockets[0]):
            fd = os.dup(sock.fileno())
            os.set_inheritable(fd, True)
            fds.append(fd)
        await self.stop()
        self.inherited = (fds[0], fds[1])
        return self.inherited

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resolve(self, query: bytes, *, tcp: bool) -> bytes | None:
        """The response to one query (None: drop it)."""
        try:
            _, name, qtype, qclass, end = parse_question(query)
        except ValueError:
            return error_response(query, RCODE_FORMERR) if len(query) >= 12 else None
        mesh_name, vip = self.table.lookup(name)
        if mesh_name and qclass == QCLASS_IN:
            self.answered += 1
            return answer(query, end, qtype, vip)
        if self._in_flight >= MAX_IN_FLIGHT:
            return None
        self._in_flight += 1
        try:
            for upstream in self.upstreams:
                with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
                    out = await asyncio.wait_for(self._forward(query, upstream, tcp), FORWARD_TIMEOUT_S)
                    self.forwarded += 1
                    return out
            return error_response(query, RCODE_SERVFAIL)
        finally:
            self._in_flight -= 1

    async def _forward(self, query: bytes, upstream: str, tcp: bool) -> bytes:
        if tcp:
            reader, writer = await asyncio.open_connection(upstream, self.upstream_port)
            try:
                writer.write(struct.pack("!H", len(query)) + query)
                await writer.drain()
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                return await reader.readexactly(size)
            finally:
                writer.close()
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in upstream else socket.AF_INET
        transport, proto = await loop.create_datagram_endpoint(_ForwardUdp, remote_addr=(upstream, self.upstream_port), family=family)
        try:
            transport.sendto(query)
            return await proto.done
        finally:
            transport.close()

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_clients >= MAX_TCP_CLIENTS:
            writer.close()
            return
        self._tcp_clients += 1
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), 10)
                query = await asyncio.wait_for(reader.readexactly(struct.unpack("!H", head)[0]), 10)
                out = await self.resolve(query, tcp=True)
                if out is None:
                    return
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            pass
        finally:
            self._tcp_clients -= 1
            writer.close()
