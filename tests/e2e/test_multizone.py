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

    # the caller's sidecar counts the call from zone a to zone b
    web = next(d for d in world.get("dataplanes", cp=a.cp) if d["name"] == "web-wa")
    assert web["spec"]["inbound"][0]["tags"]["zone"] == "zone-a"  # stamped by zone a's control plane

    def counted() -> bool:
        code, text = wa.curl(f"http://{wa.address}:{web['spec']['metrics']['port']}/metrics")
        return code == 200 and any(line.startswith("meshline_requests_total") and 'reporter="source"' in line
                                   and 'source_zone="zone-a"' in line and 'destination_zone="zone-b"' in line
                                   for line in text.splitlines())  # fmt: skip

    wait_until(counted, 30, interval=0.5, what="source_zone/destination_zone in web's metrics")

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


def test_zones_serve_on_while_global_is_down_and_catch_up_when_it_returns(world: ZoneWorld) -> None:
    net = world.net
    a, b = world.zone("zone-a", ingress=False), world.zone("zone-b", ingress=False)
    world.wait_mesh(a)
    world.wait_mesh(b)
    world.apply(WEB_TO_ORDERS % "allow")
    world.run(a, net.host("oa"), "orders", 8080, http_app("orders-a", 8080))
    world.run(b, net.host("ob"), "orders", 8080, http_app("orders-b", 8080))
    wa, wb = net.host("wa"), net.host("wb")
    world.run(a, wa, "web", 8080, http_app("web-a", 8080), upstreams=["orders=9001"])
    world.run(b, wb, "web", 8080, http_app("web-b", 8080), upstreams=["orders=9001"])
    for host in (wa, wb):
        wait_until(lambda host=host: call(host)[0] == 200, 60, interval=0.3, what="web to reach orders")  # type: ignore[misc]
    zone_pids = {z.name: z.cp.proc.pid for z in (a, b) if z.cp.proc is not None}

    steady = {z: Steady(h, world.work, f"steady-{z}", 900, interval=0.03) for z, h in (("a", wa), ("b", wb))}
    for s in steady.values():
        s.wait_sent(30)
    world.stop_global()
    # a new instance registered meanwhile takes local traffic
    world.run(a, net.host("oa2"), "orders", 8080, http_app("orders-a2", 8080))
    wait_until(lambda: call(wa)[1].get("instance") == "orders-a2", 60, interval=0.2, what="the new instance's traffic")
    for s in steady.values():
        s.wait_sent(600)  # at least ~20 s of load with global down (more on a loaded machine)
    world.start_global()
    for name, s in steady.items():
        tally = s.result()
        print(f"zone {name}, global down: {Steady.failed(tally)} failed of {tally['sent']}; {tally['instances']}")
        assert Steady.failed(tally) == 0, tally
        if name == "a":
            assert tally["instances"].get("orders-a2", 0) > 0, tally

    # global back: both zones catch up by themselves; zone a's new instance is in the inventory
    def caught_up() -> bool:
        zones = world.zones_at_global()
        return all(zones.get(z, {}).get("connected") and zones[z]["versionsBehind"] == 0 for z in ("zone-a", "zone-b"))

    wait_until(caught_up, 90, interval=0.5, what="get zones to show both zones synced")
    out = world.cli("get", "zones")
    assert "zone-a" in out and "zone-b" in out
    orders_a = [s for s in world.get("zoneservices") if s["spec"]["zone"] == "zone-a" and s["spec"]["service"] == "orders"]
    assert sum(i["instances"] for i in orders_a[0]["spec"]["instances"]) == 2, orders_a
    # nothing was restarted
    assert {z.name: z.cp.proc.pid for z in (a, b) if z.cp.proc is not None} == zone_pids
    assert all(z.cp.proc is not None and z.cp.proc.alive() for z in (a, b))


TIMEOUT = """
kind: Timeout
mesh: default
name: orders-timeout
spec:
  destinations: [{match: {service: orders}}]
  conf: {http: {requestTimeout: %s}}
"""


def test_a_partitioned_zone_converges_when_healed_and_zone_tokens_are_bound_to_their_zone(world: ZoneWorld) -> None:
    a, b = world.zone("zone-a", ingress=False), world.zone("zone-b", ingress=False)
    world.wait_mesh(a)
    world.wait_mesh(b)
    world.apply(TIMEOUT % "5s")
    wait_until(lambda: any(t["name"] == "orders-timeout" for t in world.get("timeouts", cp=a.cp)), 60, interval=0.3,
               what="the Timeout in zone a")  # fmt: skip

    a.cp.host.disconnect()  # zone a's control plane cut off from global and the other zone
    world.apply(TIMEOUT % "7s")
    world.apply(WEB_TO_ORDERS % "allow")
    world.run(b, world.net.host("ob"), "orders", 8080, http_app("orders-b", 8080))  # zone b's inventory changes
    wait_until(lambda: not world.zones_at_global()["zone-a"]["connected"], 60, interval=0.5,
               what="global to see zone a gone")  # fmt: skip
    a.cp.host.reconnect()

    def converged() -> bool:
        timeouts = {t["name"]: t for t in world.get("timeouts", cp=a.cp)}
        perms = {p["name"] for p in world.get("trafficpermissions", cp=a.cp)}
        remote = [s for s in world.get("zoneservices", cp=a.cp) if s["spec"]["zone"] == "zone-b"]
        t = timeouts.get("orders-timeout")
        return bool(t and "7s" in json.dumps(t["spec"]) and "web-to-orders" in perms and remote)

    wait_until(converged, 120, interval=0.5, what="zone a to converge after the partition")
    wait_until(lambda: world.zones_at_global()["zone-a"]["connected"], 60, interval=0.5, what="zone a connected")

    # a zone control plane started with another zone's token is refused, and says so
    c = world.zone("zone-c", token=world.zone_token("zone-b"), ingress=False)
    wait_until(lambda: any("403" in e for z in world.get("zones", cp=c.cp) for e in z["errors"]), 60, interval=0.5,
               what="zone c to report the refusal")  # fmt: skip
    assert world.get("meshes", cp=c.cp) == []
    assert "zone-c" not in world.zones_at_global()
    # a revoked zone token is refused too
    token_id = next(t["id"] for t in json.loads(world.cli("token", "list", "-o", "json")) if t.get("zone") == "zone-b")
    world.cli("token", "revoke", token_id)
    wait_until(lambda: any("401" in e for z in world.get("zones", cp=b.cp) for e in z["errors"]), 60, interval=0.5,
               what="zone b to report its revoked token")  # fmt: skip
    assert world.get("timeouts", cp=b.cp)  # and it keeps serving what it has
