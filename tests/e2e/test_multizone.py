"""Multi-zone across test hosts: a global control plane, two zones each with a control plane,
a zone ingress and workload hosts; real Envoys, real requests (docs/multi-zone.md)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshline.testing import netns
from meshline.testing.mesh import wait_until
from meshline.testing.netns import Host, TestNetwork
from meshline.testing.zonemesh import INGRESS_PORT, ZoneWorld, http_app

WEB_TO_ORDERS = """
kind: TrafficPermission
mesh: default
name: web-to-orders
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: orders}}]
  action: %s
"""
RETRY = """
kind: Retry
mesh: default
name: orders-retry
spec:
  destinations: [{match: {service: orders}}]
  conf:
    http: {attempts: 5, retryOn: [5xx, connect-failure, reset]}
"""


@pytest.fixture
def world(tmp_path: Path) -> Iterator[ZoneWorld]:
    netns.require_netns("curl")
    net = TestNetwork(tmp_path / "net")
    w = ZoneWorld(net, tmp_path)
    try:
        yield w.start()
    finally:
        try:
            w.stop()
        finally:
            net.close()


def call(host: Host, port: int = 9001, path: str = "/") -> tuple[int, dict[str, Any]]:
    code, body = host.curl(f"http://127.0.0.1:{port}{path}")
    try:
        return code, json.loads(body)
    except ValueError:
        return code, {"raw": body}


def load(host: Host, work: Path, name: str, count: int, interval: float = 0.02) -> dict[str, Any]:
    """``count`` requests through the sidecar's outbound, from inside ``host``; the tally."""
    out = work / f"{name}.json"
    done = host.run([sys.executable, "-m", "meshline.testing.apps", "load", "--url", "http://127.0.0.1:9001/",
                     "--count", str(count), "--interval", str(interval), "--timeout", "10", "--out", str(out)],
                    timeout=count * (interval + 10) + 30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(out.read_text()))


class Steady:
    """Load running in the background in a host: ``wait_sent(n)`` to act mid-way, ``result()`` at the end."""

    def __init__(self, host: Host, work: Path, name: str, count: int, interval: float = 0.02) -> None:
        self.out = work / f"{name}.json"
        self.proc = host.spawn(name, [sys.executable, "-m", "meshline.testing.apps", "load", "--url",
                                      "http://127.0.0.1:9001/", "--count", str(count), "--interval", str(interval),
                                      "--timeout", "10", "--out", str(self.out), "--progress"])  # fmt: skip

    def wait_sent(self, n: int) -> None:
        wait_until(lambda: f"sent {n}\n" in self.proc.log() or not self.proc.alive(), 120, interval=0.05,
                   what=f"{n} requests sent")  # fmt: skip

    def result(self) -> dict[str, Any]:
        assert self.proc.proc.wait(timeout=600) == 0, self.proc.log()
        return dict(json.loads(self.out.read_text()))

    @staticmethod
    def failed(tally: dict[str, Any]) -> int:
        return int(tally["sent"]) - int(tally["codes"].get("200", 0))


def caller_of(answer: dict[str, Any]) -> str:
    xfcc = {k.lower(): v for k, v in answer.get("headers", {}).items()}.get("x-forwarded-client-cert", "")
    return xfcc.split("URI=", 1)[1].split(";", 1)[0].split(",", 1)[0] if "URI=" in xfcc else ""


def ingress_ssl_stats(world: ZoneWorld, zone: str) -> dict[str, int]:
    """The zone ingress Envoy's listener TLS counters (a TLS-terminating listener would count handshakes)."""
    z = world.zones[zone]
    sock = world.work / "dp" / f"ingress-{zone}" / "admin.sock"
    done = z.ingress_host.run(["curl", "-sS", "--unix-socket", str(sock), "http://envoy/stats?filter=ssl.handshake"])
    return {line.split(":")[0]: int(line.split(":")[1]) for line in done.stdout.splitlines() if ":" in line}


def test_a_service_only_in_zone_b_is_reached_through_b_ingress_with_end_to_end_mtls_and_global_permissions(
    world: ZoneWorld,
) -> None:
    net = world.net
    a, b = world.zone("zone-a"), world.zone("zone-b")
    wa, wb, wa2 = net.host("wa"), net.host("wb"), net.host("wa2")
    world.run(b, wb, "orders", 8080, http_app("orders-b", 8080))
    world.run(a, wa, "web", 8080, http_app("web-a", 8080), upstreams=["orders=9001"])
    world.apply(WEB_TO_ORDERS % "allow")  # at global: strict mTLS denies what is not allowed

    def reached() -> dict[str, Any] | None:
        code, answer = call(wa)
        return answer if code == 200 else None

    answer = wait_until(reached, 60, interval=0.3, what="web in zone a to reach orders in zone b")
    assert answer["instance"] == "orders-b"
    # the callee's sidecar saw the caller's own certificate: mTLS end to end, across the ingress
    assert caller_of(answer) == "spiffe://meshline.local/default/web"
    assert answer["remote"] == "127.0.0.1"  # the app is reached by its own sidecar only
    # the ingress passed TLS through by SNI: its listener never took part in a handshake
    assert not any(v for k, v in ingress_ssl_stats(world, "zone-b").items() if k.startswith("listener.")), \
        ingress_ssl_stats(world, "zone-b")  # fmt: skip
    # zone a knows zone b's orders only as a count at b's ingress, never its endpoints
    remote = [s for s in world.get("zoneservices", cp=a.cp) if s["spec"]["zone"] == "zone-b"]
    assert [(s["spec"]["service"], s["spec"]["ingress"]["port"]) for s in remote] == [("orders", INGRESS_PORT)]
    assert not any(d["name"].startswith("orders") for d in world.get("dataplanes", cp=a.cp))

    # a TrafficPermission applied at global denies it in zone b, and allows it again
    world.apply(WEB_TO_ORDERS % "deny")
    wait_until(lambda: call(wa)[0] == 403, 60, interval=0.3, what="the deny applied at global to hold in zone b")
    world.apply(WEB_TO_ORDERS % "allow")
    wait_until(lambda: call(wa)[0] == 200, 60, interval=0.3, what="the allow to hold again")

    # failover: with orders in zone a too, zone a's callers use it; without it, zone b's; and back
    world.apply(RETRY)
    world.run(a, wa2, "orders", 8080, http_app("orders-a", 8080))
    wait_until(lambda: call(wa)[1].get("instance") == "orders-a", 60, interval=0.3, what="traffic to stay in zone a")
    tally = load(wa, world.work, "local", 30)
    assert tally["instances"] == {"orders-a": 30}, tally  # own zone only, while it is healthy
    # under steady load, zone a's only instance goes away: the calls move to zone b
    steady = Steady(wa, world.work, "load-failover", 300)
    steady.wait_sent(50)
    a.agents["orders-wa2"].stop(timeout=30)  # its agent deregisters it: zone a has no orders left
    tally = steady.result()
    failed = Steady.failed(tally)
    print(f"failover A->B under load: {failed} failed of {tally['sent']}; {tally['instances']}")
    assert failed <= 2, tally  # what the Retry policy could not hide
    assert tally["instances"].get("orders-a", 0) >= 50 and tally["instances"].get("orders-b", 0) > 0, tally
    wait_until(lambda: call(wa)[1].get("instance") == "orders-b", 60, interval=0.3, what="failover to zone b")
    world.run(a, wa2, "orders", 8080, http_app("orders-a", 8080), name="orders-wa2-again")
    wait_until(lambda: call(wa)[1].get("instance") == "orders-a", 60, interval=0.3, what="traffic back in zone a")

    zones = world.zones_at_global()
    assert zones["zone-a"]["connected"] and zones["zone-b"]["connected"], zones
