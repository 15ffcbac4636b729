"""The removal check a stopping agent asks for: pure over rendered snapshots and shared status,
and the agent's bounded wait on it."""

from __future__ import annotations

import asyncio
from typing import Any

from envoy.config.endpoint.v3 import endpoint_pb2

from meshline.agent.removal import wait_removed
from meshline.controlplane.removal import Peer, lists_endpoint, removal_report
from meshline.core.errors import Unavailable
from meshline.render.render import RenderResult
from meshline.xds.snapshot import ENDPOINT, Snapshot, pack


def _eds(*ports: int) -> Snapshot:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="orders")
    group = cla.endpoints.add()
    for port in ports:
        sock = group.lb_endpoints.add().endpoint.address.socket_address
        sock.address, sock.port_value = "127.0.0.1", port
    return Snapshot.build({ENDPOINT: [pack("orders", cla)]})


def _status(snap: Snapshot, *, acked: bool = True, state: str = "online") -> dict[str, Any]:
    return {"state": state, "types": {t: {"acked": v if acked else "old"} for t, v in snap.versions().items()}}


def _result(snap: Snapshot, reads: frozenset[str] = frozenset({"orders"})) -> RenderResult:
    return RenderResult(snapshot=snap, applied=(), reads=reads)


def test_lists_endpoint_reads_the_rendered_endpoints() -> None:
    assert lists_endpoint(_eds(1001, 1002), "127.0.0.1", 1002)
    assert not lists_endpoint(_eds(1001), "127.0.0.1", 1002)
    assert not lists_endpoint(_eds(1002), "10.0.0.1", 1002)


def test_done_only_when_every_caller_acked_a_config_without_the_instance() -> None:
    without, with_me = _eds(1001), _eds(1001, 1002)
    peers = [
        Peer("web-1", _result(without), _status(without)),
        Peer("web-2", _result(without), _status(without, acked=False)),
        Peer("web-3", _result(with_me), _status(with_me)),
        Peer("billing-1", _result(_eds(), frozenset({"billing"})), _status(_eds(), acked=False)),  # not a caller
        Peer("web-4", _result(without), _status(without, acked=False, state="offline")),
        Peer("orders-2", None, {}),
    ]
    report = removal_report(peers, "orders-2", "orders", "127.0.0.1", 1002)
    assert not report["done"]
    assert set(report["pending"]) == {"web-2", "web-3"}
    assert "has not ACKed" in report["pending"]["web-2"] and "still lists" in report["pending"]["web-3"]
    assert report["offline"] == ["web-4"]
    done = removal_report(peers[:1] + peers[3:], "orders-2", "orders", "127.0.0.1", 1002)
    assert done == {"done": True, "pending": {}, "offline": ["web-4"]}


def test_wait_removed_retries_until_done_and_is_bounded() -> None:
    answers: list[Any] = [Unavailable("down"), {"done": False, "pending": {"web-1": "has not ACKed"}},
                          {"done": True, "pending": {}, "offline": []}]

    async def ask() -> Any:
        a = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(a, Exception):
            raise a
        return a

    result = asyncio.run(wait_removed(ask, 5.0))
    assert result.done and "every caller ACKed" in result.summary()

    async def never() -> Any:
        return {"done": False, "pending": {"web-1": "has not ACKed EDS"}}

    late = asyncio.run(wait_removed(never, 0.2))
    assert not late.done and late.seconds >= 0.2 and "web-1: has not ACKed EDS" in late.summary()
