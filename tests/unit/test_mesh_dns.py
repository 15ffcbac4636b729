"""Mesh DNS: the table travels in the transparent listener the control plane renders, the agent
reads it off the wire, and its DNS server answers mesh names and forwards the rest unchanged."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import cast

from envoy.service.discovery.v3 import discovery_pb2

from meshline.agent.capture.dns import DnsServer, host_resolvers, parse_question
from meshline.agent.capture.dns_table import DnsTable, dns_json
from meshline.testing.golden import load_resources, render_named
from meshline.xds.snapshot import LISTENER

INPUT = Path(__file__).parents[1] / "golden" / "transparent" / "mesh.input.yaml"


def query(name: str, qtype: int = 1, qid: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", qtype, 1)


def answer_of(msg: bytes) -> tuple[int, int, list[str]]:
    """(id, rcode, A addresses) of a response."""
    qid, flags, _, ancount = struct.unpack("!HHHH", msg[:8])
    end = parse_question(msg[:6] + b"\0\1" + msg[8:])[4] if False else 12 + msg[12:].index(b"\0") + 5
    out, i = [], end
    for _ in range(ancount):
        _, rtype, _, _, size = struct.unpack("!HHHIH", msg[i : i + 12])
        if rtype == 1:
            out.append(socket.inet_ntoa(msg[i + 12 : i + 12 + size]))
        i += 12 + size
    return qid, flags & 0xF, out


def test_the_table_is_read_from_the_listener_push_envoy_gets() -> None:
    result = render_named(load_resources(INPUT.read_text()), "web-1")
    slot = result.snapshot.slots[LISTENER]
    response = discovery_pb2.DiscoveryResponse(version_info="1", type_url=LISTENER,
                                               resources=[p.any for p in slot.resources.values()])  # fmt: skip
    table = DnsTable()
    table.observe(response.SerializeToString())
    assert table.received and table.vip_range == "240.240.0.0/16"
    assert table.vips == {"db": "240.240.0.12", "echo": "240.240.0.11", "orders": "240.240.0.10", "web": "240.240.0.13"}
    assert table.lookup("orders.mesh.") == (True, "240.240.0.10")
    assert table.lookup("ORDERS") == (True, "240.240.0.10")  # bare names, any case
    assert table.lookup("nope.mesh") == (True, None)
    assert table.lookup("example.com") == (False, None)
    # other types of response, and bytes that are not a response, leave it alone
    assert dns_json(discovery_pb2.DiscoveryResponse(type_url="x").SerializeToString()) is None
    table.observe(b"\xff\xff\xff")
    assert table.vips["orders"] == "240.240.0.10"


def test_bare_names_can_be_turned_off() -> None:
    table = DnsTable()
    table.update('{"range": "240.240.0.0/16", "bare": false, "vips": {"orders": "240.240.0.10"}}')
    assert table.lookup("orders") == (False, None) and table.lookup("orders.mesh") == (True, "240.240.0.10")


async def _udp(port: int, msg: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class P(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            got.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(P, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(msg)
        return await asyncio.wait_for(got, 5)
    finally:
        transport.close()


async def _tcp(port: int, msg: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(struct.pack("!H", len(msg)) + msg)
    size = struct.unpack("!H", await reader.readexactly(2))[0]
    out = await reader.readexactly(size)
    writer.close()
    return out


async def test_mesh_names_are_answered_and_others_forwarded_unchanged() -> None:
    # the "host resolver": a DNS server of its own that knows db.example.test
    upstream_table = DnsTable()
    upstream_table.update('{"bare": true, "vips": {"db.example.test": "10.9.9.9"}}')
    upstream = DnsServer(upstream_table, 0)
    await upstream.start()
    table = DnsTable()
    table.update('{"range": "240.240.0.0/16", "bare": true, "vips": {"orders": "240.240.0.10"}}')
    server = DnsServer(table, 0, upstreams=["127.0.0.1"], upstream_port=upstream.port)
    await server.start()
    try:
        for send in (_udp, _tcp):
            assert answer_of(await send(server.port, query("orders.mesh"))) == (0x1234, 0, ["240.240.0.10"])
            assert answer_of(await send(server.port, query("orders"))) == (0x1234, 0, ["240.240.0.10"])
            assert answer_of(await send(server.port, query("orders.mesh", qtype=28))) == (0x1234, 0, [])  # no AAAA
            assert answer_of(await send(server.port, query("gone.mesh")))[1] == 3  # NXDOMAIN
            forwarded = await send(server.port, query("db.example.test", qid=77))
            assert forwarded == await send(upstream.port, query("db.example.test", qid=77))  # byte for byte
            assert answer_of(forwarded) == (77, 0, ["10.9.9.9"])
        assert server.forwarded == 2 and upstream.answered == 4
    finally:
        await server.stop()
        await upstream.stop()


async def test_a_new_table_wakes_whoever_waits_for_it() -> None:
    table = DnsTable()
    waiter = asyncio.ensure_future(table.changed.wait())
    table.update('{"vips": {"a": "240.240.0.1"}}')
    await asyncio.wait_for(waiter, 1)


def test_host_resolvers_come_from_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# x\nsearch example.test\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\nnameserver bogus\n")
    assert host_resolvers(conf) == ["10.0.0.53", "fe80::1"]
    assert host_resolvers(tmp_path / "missing") == ["127.0.0.1"]


async def test_a_handed_over_server_keeps_its_port_and_a_query_meanwhile_is_answered_not_refused() -> None:
    """What an upgrade does (DnsService.hand_over, then take_over in the new program): the
    sockets stay bound across the gap, so a query waits in the queue instead of being refused."""
    from meshline.agent.capture.lifecycle import DnsService
    from meshline.agent.config import AgentConfig

    table = DnsTable()
    table.update('{"range": "240.240.0.0/16", "bare": true, "vips": {"orders": "240.240.0.10"}}')
    old = DnsServer(table, 0, upstreams=[])
    await old.start()
    port = old.port
    service = DnsService(table)
    service.servers.append(old)
    handed = await service.hand_over()
    assert list(handed["sockets"]) == ["127.0.0.1"] and handed["table"]
    # in the gap: nobody answers, but the port is bound (a closed one would be refused at once)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        s.send(query("orders.mesh", qid=9))
        new = DnsService(DnsTable())  # the new program's: an empty table until it takes over
        new.take_over(handed)
        # what start reads of the agent's config
        await new.start(cast(AgentConfig, SimpleNamespace(transparent=SimpleNamespace(dns_port=port, ipv6=False))))
        try:
            s.settimeout(5)
            reply = await asyncio.get_running_loop().run_in_executor(None, s.recv, 512)
            assert answer_of(reply) == (9, 0, ["240.240.0.10"])  # the queued query, from the carried table
            assert answer_of(await _tcp(port, query("orders.mesh"))) == (0x1234, 0, ["240.240.0.10"])
        finally:
            await new.stop()
