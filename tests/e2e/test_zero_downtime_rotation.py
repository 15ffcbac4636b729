"""CA rotation combined with the operations of issue 16, under a steady bounded load through a
caller's sidecar (every request counted): while the mesh's CA rotates, one instance's sidecar
is upgraded in place (SIGUSR2: the agent re-executes, hot restarts Envoy, and its new program
asks for a certificate in the middle of the rotation) and the other instance stops gracefully.
0 failed requests, and afterwards every remaining sidecar serves a certificate of the new CA.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshline.agent.handoff import read_status
from meshline.testing.load import RATE_HZ, PacedLoad
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import HttpTestServer, free_port
from tests.e2e.test_security_rotation import identity_serial


@pytest.fixture
def mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MeshHarness]:
    monkeypatch.setenv("MESHLINE_CA_PROPAGATION", "3")  # the new root is trusted 3 s before it signs
    spec = {"mtls": {"mode": "strict"}, "defaultPermission": "allow"}
    with MeshHarness(tmp_path, mtls="strict", auth=True, mesh_spec=spec) as m:
        yield m


def endpoints(caller: Sidecar, service: str = "orders") -> set[int]:
    ports = set()
    for line in caller.admin("/clusters").text.splitlines():
        if line.startswith(f"{service}::") and "::cx_active::" in line:
            ports.add(int(line.split("::")[1].rsplit(":", 1)[1]))
    return ports


def on_new_ca(mesh: MeshHarness, sc: Sidecar, ca: str) -> bool:
    st = mesh.dataplane_status(sc.name)
    return bool(st.get("certAuthority") == ca and identity_serial(sc) == st.get("certSerial"))


def test_ca_rotation_during_a_sidecar_upgrade_and_a_graceful_stop_fails_no_request(mesh: MeshHarness) -> None:
    with HttpTestServer("orders-a") as a, HttpTestServer("orders-b") as b:
        first = mesh.sidecar("orders", app_port=a.port, name="orders-1")
        second = mesh.sidecar("orders", app_port=b.port, name="orders-2")
        web = mesh.sidecar("web", app_port=free_port(), upstreams=["orders"])
        wait_until(lambda: endpoints(web) == {first.inbound_port, second.inbound_port}, 30, what="web to see both")
        old_ca = mesh.dataplane_status("orders-1")["certAuthority"]
        load = PacedLoad(web.url("orders") + "/").start()
        try:
            wait_until(lambda: {"orders-a", "orders-b"} <= {w for _, w in load.outcomes}, 30, what="both serving")
            new_ca = str(mesh.api.request("POST", "/api/v1/ca/default/rotate")["rotating"]["id"])
            assert new_ca != old_ca
            first.proc.send_signal(signal.SIGUSR2)  # upgrade orders-1's sidecar in the middle of it
            rc = second.stop(timeout=60)  # and stop orders-2 gracefully meanwhile
            wait_until(lambda: (read_status(first.work_dir) or {}).get("state") in ("done", "failed"), 120,
                       what="orders-1's upgrade")  # fmt: skip
            upgraded = read_status(first.work_dir) or {}
            wait_until(lambda: all(on_new_ca(mesh, sc, new_ca) for sc in (first, web)), 60, interval=0.3,
                       what="orders-1 and web to serve certificates of the new CA")  # fmt: skip
            after = time.monotonic()
            wait_until(lambda: len(load.since(after)) >= RATE_HZ, 30, what="requests after it all")
        finally:
            load.stop()
        failed = load.failed("orders-")
        print(f"CA rotation + sidecar upgrade + graceful stop: {len(failed)} failed of {len(load.outcomes)} requests;"
              f" upgrade: {upgraded.get('message')}")  # fmt: skip
        assert failed == [], failed
        assert rc == 0, second.log()
        assert upgraded.get("state") == "done", first.log()
        assert first.proc.poll() is None and first.ready()
        assert {w for _, w in load.since(after)} == {"orders-a"}
        assert mesh.api.get("/api/v1/ca/default/trust-bundle")["roots"] == 2  # the old root is still trusted
