"""Transparent mode across zones: an app in zone A calls ``orders.mesh``, a service that only
zone B runs, by its name; DNS answers with the VIP zone A gave it, and the call goes through B's
zone ingress with mTLS end to end."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshline.testing import netns
from meshline.testing.mesh import wait_until
from meshline.testing.netns import TestNetwork
from meshline.testing.zonemesh import ZoneWorld

ALLOW = """
kind: TrafficPermission
mesh: default
name: web-to-orders
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: orders}}]
  action: allow
"""


@pytest.fixture
def world(tmp_path: Path) -> Iterator[ZoneWorld]:
    netns.require_netns("nft", "curl")
    net = TestNetwork(tmp_path / "net")
    w = ZoneWorld(net, tmp_path)
    try:
        yield w.start()
    finally:
        try:
            w.stop()
        finally:
            net.close()


def app(name: str, port: int) -> list[str]:
    return [sys.executable, "-m", "meshline.testing.apps", "http", "--name", name, "--port", str(port), "--host", "0.0.0.0"]


def test_an_app_in_zone_a_reaches_a_service_only_in_zone_b_by_its_mesh_name(world: ZoneWorld) -> None:
    net = world.net
    a, b = world.zone("zone-a", ingress=False), world.zone("zone-b")
    world.wait_mesh(a)
    world.apply(ALLOW)
    wa = net.host("wa")
    wa.set_resolver(world.glob.host.address if world.glob else net.gateway)  # a resolver inside the test network
    world.run(b, net.host("ob"), "orders", 8080, app("orders-b", 8080), transparent=True)
    world.run(a, wa, "web", 9000, app("web-a", 9000), transparent=True)

    def answer() -> dict[str, str] | None:
        code, body = wa.curl("http://orders.mesh/whoami")
        return json.loads(body) if code == 200 else None

    seen = wait_until(answer, 90, interval=0.5, what="orders.mesh from zone a")
    assert seen["instance"] == "orders-b"
    assert "URI=spiffe://meshline.local/default/web" in seen["headers"]["x-forwarded-client-cert"]
    vip = next(s["spec"]["vip"] for s in world.get("services", cp=a.cp) if s["name"] == "orders")
    assert vip.startswith("240.240.")  # zone a gave the remote service its VIP
