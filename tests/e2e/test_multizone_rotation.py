"""The mesh CA rotated at global under steady cross-zone traffic: web in zone A calls orders,
which exists only in zone B, through B's zone ingress (mTLS end to end); every zone adopts the
new CA, its sidecars move to certificates from it, and no request fails.
(Control planes and Envoys on loopback.)"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshline.testing.mesh import ControlPlaneThread, MeshHarness, wait_until
from meshline.testing.netns import HostProcess
from meshline.testing.servers import HttpTestServer, free_port
from tests.e2e.test_security_rotation import SteadyTraffic

pytestmark = pytest.mark.e2e


class Zones:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        spec = {"mtls": {"mode": "strict"}, "defaultPermission": "allow"}
        self.glob = MeshHarness(tmp / "global", mtls="strict", auth=True, mesh_spec=spec,
                                overrides={"mode": "global", "zone": "global"})  # fmt: skip
        self.zones: list[MeshHarness] = []
        self.procs: list[HostProcess] = []

    def zone(self, name: str) -> MeshHarness:
        token = self.glob.api.request("POST", "/api/v1/tokens", json={"kind": "zone", "zone": name})["token"]
        path = self.tmp / f"{name}.token"
        path.write_text(token)
        z = MeshHarness(self.tmp / name, mtls="strict", auth=True, overrides={
            "mode": "zone", "zone": name, "global_url": self.glob.api_url, "zone_token_file": path})  # fmt: skip
        z.control_plane = ControlPlaneThread(z.settings())
        z.control_plane.start()
        self.zones.append(z)
        wait_until(lambda: any(m["name"] == "default" for m in z.api.get("/api/v1/meshes")["items"]), 30,
                   interval=0.1, what=f"the mesh in {name}")  # fmt: skip
        return z

    def ingress(self, z: MeshHarness) -> tuple[HostProcess, int]:
        import subprocess

        port = free_port()
        token = self.tmp / f"{z.tmp.name}-ingress.token"
        token.write_text(z.dataplane_token("zone-ingress"))
        work = self.tmp / "dp" / f"{z.tmp.name}-ingress"
        log_path = self.tmp / f"{z.tmp.name}-ingress.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "meshline", "zone-ingress", "--address", "127.0.0.1",
                                     "--port", str(port), "--name", "ingress", "--api", z.api_url,
                                     "--token-file", str(token), "--work-dir", str(work)],
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "MESHLINE_CONFIG": str(self.tmp / "cli.yaml")})  # fmt: skip
        hp = HostProcess("ingress", proc, log_path)
        self.procs.append(hp)
        wait_until(lambda: "ingress is ready for traffic" in hp.log() or not hp.alive(), 60, what="the zone ingress")
        assert hp.alive(), hp.log()
        return hp, port

    def stop(self) -> None:
        for p in self.procs:
            p.stop(timeout=20)
        for z in self.zones:
            z.stop()
        self.glob.stop()


@pytest.fixture
def zones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Zones]:
    monkeypatch.setenv("MESHLINE_ZONE_POLL_S", "2")
    monkeypatch.setenv("MESHLINE_CA_PROPAGATION", "3")  # a new root is trusted 3 s before it signs
    z = Zones(tmp_path)
    z.glob.start()
    try:
        yield z
    finally:
        z.stop()


def _ca_of(z: MeshHarness, name: str) -> Any:
    return z.api.get(f"/api/v1/meshes/default/dataplanes/{name}")["status"].get("certAuthority")


def test_a_ca_rotated_at_global_fails_no_cross_zone_request(zones: Zones) -> None:
    a, b = zones.zone("zone-a"), zones.zone("zone-b")
    zones.ingress(b)
    with HttpTestServer("orders-b") as orders, HttpTestServer("web-a") as web_app:
        b.sidecar("orders", orders.port)
        web = a.sidecar("web", web_app.port, upstreams=["orders"])
        url = web.url("orders")

        def through() -> bool:
            import httpx

            try:
                return httpx.get(url, timeout=5).json().get("instance") == "orders-b"
            except (httpx.HTTPError, ValueError):
                return False

        wait_until(through, 60, interval=0.3, what="web in zone a to reach orders in zone b")
        old = a.api.get("/api/v1/ca/default/trust-bundle")["caId"]
        assert b.api.get("/api/v1/ca/default/trust-bundle")["caId"] == old == zones.glob.api.get(
            "/api/v1/ca/default/trust-bundle")["caId"]  # one CA: global's, in every zone
        with SteadyTraffic(url) as traffic:
            wait_until(lambda: traffic.ok >= 20, 30, what="traffic to flow")
            new = str(zones.glob.api.request("POST", "/api/v1/ca/default/rotate")["rotating"]["id"])
            assert new != old
            wait_until(lambda: _ca_of(a, "web-1") == new and _ca_of(b, "orders-1") == new, 90, interval=0.3,
                       what="both zones' sidecars to use certificates from the new CA")  # fmt: skip
            n = traffic.ok
            wait_until(lambda: traffic.ok >= n + 50, 30, what="traffic on the new certificates")
        traffic.check(minimum=100)
