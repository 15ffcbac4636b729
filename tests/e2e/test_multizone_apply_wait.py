"""`meshline apply --wait` at a global control plane: it returns once the dataplanes the change
affects in every zone have ACKed, names a NACK by zone and dataplane, and a disconnected zone.
(Control planes on loopback, real Envoys; zone B's control plane can make Envoy NACK on demand.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshline.testing.mesh import ControlPlaneThread, MeshHarness, wait_until
from meshline.testing.nack import breakable_control_plane, trigger_dataplane
from meshline.testing.servers import HttpTestServer


def timeout_doc(seconds: int) -> str:
    return (f"kind: Timeout\nmesh: default\nname: web-to-orders\nspec:\n  sources: [{{match: {{service: web}}}}]\n"
            f"  destinations: [{{match: {{service: orders}}}}]\n  conf: {{http: {{requestTimeout: {seconds}s}}}}\n")


class Zones:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.glob = MeshHarness(tmp / "global", auth=True, overrides={"mode": "global", "zone": "global"})
        self.zones: dict[str, MeshHarness] = {}

    def zone(self, name: str, breakable: bool = False) -> MeshHarness:
        token = self.glob.api.request("POST", "/api/v1/tokens", json={"kind": "zone", "zone": name})["token"]
        path = self.tmp / f"{name}.token"
        path.write_text(token)
        z = MeshHarness(self.tmp / name, auth=True, build=breakable_control_plane if breakable else None, overrides={
            "mode": "zone", "zone": name, "global_url": self.glob.api_url, "zone_token_file": path,
            "create_default_mesh": False})  # fmt: skip
        z.control_plane = ControlPlaneThread(z.settings(), z.build)  # its mesh comes from global
        z.control_plane.start()
        self.zones[name] = z
        wait_until(lambda: any(m["name"] == "default" for m in z.api.get("/api/v1/meshes")["items"]), 30,
                   interval=0.1, what=f"the mesh in {name}")  # fmt: skip
        return z

    def apply_wait(self, doc: str, *extra: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MESHLINE_API": self.glob.api_url, "MESHLINE_TOKEN": self.glob.admin_token() or "",
               "MESHLINE_CONFIG": str(self.tmp / "cli.yaml")}  # fmt: skip
        return subprocess.run([sys.executable, "-m", "meshline", "apply", "--wait", *extra, "-f", "-"], input=doc,
                              capture_output=True, text=True, env=env, timeout=120)  # fmt: skip

    def stop(self) -> None:
        for z in self.zones.values():
            z.stop()
        self.glob.stop()


@pytest.fixture
def zones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Zones]:
    monkeypatch.setenv("MESHLINE_ZONE_POLL_S", "2")
    z = Zones(tmp_path)
    z.glob.start()
    try:
        yield z
    finally:
        z.stop()


def test_apply_wait_at_global_waits_for_every_zone_and_names_a_nack_by_zone(zones: Zones) -> None:
    a, b = zones.zone("zone-a"), zones.zone("zone-b", breakable=True)
    with HttpTestServer("orders-a") as orders_a, HttpTestServer("orders-b") as orders_b:
        a.sidecar("orders", orders_a.port)
        a.sidecar("web", 1, upstreams=["orders"])
        b.sidecar("orders", orders_b.port)
        b.sidecar("web", 1, upstreams=["orders"])
        done = zones.apply_wait(timeout_doc(5))
        assert done.returncode == 0, done.stdout + done.stderr
        count = re.search(r"^(\d+) dataplanes? ACKed the change in \d+\.\ds$", done.stdout, re.M)
        assert count is not None and int(count.group(1)) >= 2, done.stdout  # web in both zones

        # zone b's sidecars now reject every new route config: the next change is NACKed there
        b.apply(trigger_dataplane("orders"))
        failed = zones.apply_wait(timeout_doc(7), "--timeout", "10")
        assert failed.returncode == 1, failed.stdout
        assert re.search(r"zone-b/web-1: rejected \(NACK\) version \S+: ", failed.stderr), failed.stderr
        assert "zone-a/" not in failed.stderr  # zone a ACKed

        # a zone that is gone is named too
        a.control_plane.stop()  # type: ignore[union-attr]
        wait_until(lambda: not any(z["connected"] for z in zones.glob.api.get("/api/v1/zones")["items"]
                                   if z["name"] == "zone-a"), 60, interval=0.2, what="zone a to be gone")  # fmt: skip
        gone = zones.apply_wait(timeout_doc(9), "--timeout", "10")
        assert gone.returncode == 1 and "zone zone-a is not connected to global" in gone.stderr, gone.stderr
