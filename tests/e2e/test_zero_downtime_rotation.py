"""CA and token rotation combined with the operations of issue 16, under a steady bounded load through a
caller's sidecar (every request counted): while the mesh's CA rotates, one instance's sidecar
is upgraded in place (SIGUSR2: the agent re-executes, hot restarts Envoy, and its new program
asks for a certificate in the middle of the rotation) and the other instance stops gracefully.
0 failed requests, and afterwards every remaining sidecar serves a certificate of the new CA.
A dataplane token is rotated the same way: a new token file, an in-place upgrade, the old token
revoked.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
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


def upgrade_result(sc: Sidecar) -> dict[str, object]:
    """The final status of the in-place upgrade SIGUSR2 started (what `systemctl reload` sends)."""
    wait_until(lambda: (read_status(sc.work_dir) or {}).get("state") in ("done", "failed"), 120,
               what=f"{sc.name}'s upgrade")  # fmt: skip
    return read_status(sc.work_dir) or {}


def upgraded_and_stopped_failing_nothing(what: str, load: PacedLoad, first: Sidecar, second: Sidecar, rc: int,
                                         upgraded: dict[str, object], after: float) -> None:  # fmt: skip
    """Every request answered by an orders instance; orders-1 upgraded in place and serving,
    orders-2 stopped cleanly, and only orders-1 (app orders-a) answering after the stop."""
    failed = load.failed("orders-")
    print(f"{what}: {len(failed)} failed of {len(load.outcomes)} requests; upgrade: {upgraded.get('message')}")
    assert failed == [], failed
    assert rc == 0, second.log()
    assert upgraded.get("state") == "done", first.log()
    assert first.proc.poll() is None and first.ready()
    assert {w for _, w in load.since(after)} == {"orders-a"}


def two_orders_and_web(mesh: MeshHarness, a: HttpTestServer, b: HttpTestServer) -> tuple[Sidecar, Sidecar, Sidecar]:
    first = mesh.sidecar("orders", app_port=a.port, name="orders-1")
    second = mesh.sidecar("orders", app_port=b.port, name="orders-2")
    web = mesh.sidecar("web", app_port=free_port(), upstreams=["orders"])
    wait_until(lambda: endpoints(web) == {first.inbound_port, second.inbound_port}, 30, what="web to see both")
    return first, second, web


def test_ca_rotation_during_a_sidecar_upgrade_and_a_graceful_stop_fails_no_request(mesh: MeshHarness) -> None:
    with HttpTestServer("orders-a") as a, HttpTestServer("orders-b") as b:
        first, second, web = two_orders_and_web(mesh, a, b)
        old_ca = mesh.dataplane_status("orders-1")["certAuthority"]
        load = PacedLoad(web.url("orders") + "/").start()
        try:
            wait_until(lambda: {"orders-a", "orders-b"} <= {w for _, w in load.outcomes}, 30, what="both serving")
            new_ca = str(mesh.api.request("POST", "/api/v1/ca/default/rotate")["rotating"]["id"])
            assert new_ca != old_ca
            first.proc.send_signal(signal.SIGUSR2)  # upgrade orders-1's sidecar in the middle of it
            rc = second.stop(timeout=60)  # and stop orders-2 gracefully meanwhile
            upgraded = upgrade_result(first)
            wait_until(lambda: all(on_new_ca(mesh, sc, new_ca) for sc in (first, web)), 60, interval=0.3,
                       what="orders-1 and web to serve certificates of the new CA")  # fmt: skip
            after = time.monotonic()
            wait_until(lambda: len(load.since(after)) >= RATE_HZ, 30, what="requests after it all")
        finally:
            load.stop()
        upgraded_and_stopped_failing_nothing("CA rotation + sidecar upgrade + graceful stop", load, first, second,
                                             rc, upgraded, after)  # fmt: skip
        assert mesh.api.get("/api/v1/ca/default/trust-bundle")["roots"] == 2  # the old root is still trusted


def test_a_dataplane_token_rotated_by_an_in_place_upgrade_fails_no_request(mesh: MeshHarness, tmp_path: Path) -> None:
    """Token rotation without a restart: a new token in the agent's --token-file, SIGUSR2 (what
    `systemctl reload` sends: the new program reads the file again), then the old token revoked.
    The sidecar keeps serving on the new token; the old one is refused from then on."""
    def issue() -> tuple[str, str]:
        body = {"kind": "dataplane", "mesh": "default", "service": "orders", "dataplane": "orders-1", "ttl": "24h"}
        out = mesh.api.request("POST", "/api/v1/tokens", json=body)
        return str(out["token"]), str(out["id"])

    old_token, old_id = issue()
    token_file = tmp_path / "orders-1.token"
    token_file.write_text(old_token)
    token_file.chmod(0o600)
    with HttpTestServer("orders-a") as a:
        orders = mesh.sidecar("orders", app_port=a.port, name="orders-1", issue_token=False,
                              extra_args=["--token-file", str(token_file)])  # fmt: skip
        web = mesh.sidecar("web", app_port=free_port(), upstreams=["orders"])
        wait_until(lambda: endpoints(web) == {orders.inbound_port}, 30, what="web to see orders-1")
        load = PacedLoad(web.url("orders") + "/").start()
        try:
            wait_until(lambda: len(load.outcomes) >= RATE_HZ // 2, 30, what="the load to flow")
            new_token, _ = issue()
            staged = token_file.with_suffix(".new")
            staged.write_text(new_token)
            staged.chmod(0o600)
            staged.replace(token_file)
            orders.proc.send_signal(signal.SIGUSR2)
            assert upgrade_result(orders).get("state") == "done", orders.log()
            mesh.api.request("POST", f"/api/v1/tokens/{old_id}/revoke")
            revoked = time.monotonic()
            wait_until(lambda: len(load.since(revoked)) >= 2 * RATE_HZ, 30, what="requests after the revocation")
        finally:
            load.stop()
        failed = load.failed("orders-")
        print(f"token rotation by an in-place upgrade: {len(failed)} failed of {len(load.outcomes)} requests")
        assert failed == [], failed
        assert mesh.dataplane_status("orders-1")["connected"] is True
        assert orders.proc.poll() is None and orders.ready()
        refused = httpx.get(f"{mesh.api_url}/api/v1/meshes/default/dataplanes/orders-1",
                            headers={"Authorization": f"Bearer {old_token}"}, timeout=5)  # fmt: skip
        assert refused.status_code == 401 and "revoked" in refused.text, refused.text


def test_one_minute_certificates_renew_across_an_upgrade_and_a_graceful_stop_fails_no_request(
    tmp_path: Path,
) -> None:
    """Certificates of 1 minute (renewed at 50-66 %, pooled connections cycled every 15 s):
    orders-1's sidecar is upgraded in place, and its new program renews on schedule (a second
    serial after the upgrade's); orders-2 then stops gracefully. 0 failed requests."""
    spec = {"mtls": {"mode": "strict", "certLifetime": "1m"}, "defaultPermission": "allow"}
    with MeshHarness(tmp_path, mtls="strict", auth=True, mesh_spec=spec) as mesh, \
            HttpTestServer("orders-a") as a, HttpTestServer("orders-b") as b:  # fmt: skip
        first, second, web = two_orders_and_web(mesh, a, b)
        load = PacedLoad(web.url("orders") + "/").start()
        try:
            wait_until(lambda: {"orders-a", "orders-b"} <= {w for _, w in load.outcomes}, 30, what="both serving")
            first.proc.send_signal(signal.SIGUSR2)
            upgraded = upgrade_result(first)
            assert upgraded.get("state") == "done", first.log()
            serial = wait_until(lambda: identity_serial(first) or None, 10, what="orders-1's certificate")
            wait_until(lambda: identity_serial(first) not in ("", serial), 60, interval=0.5,
                       what="orders-1's new program to renew its certificate")  # fmt: skip
            rc = second.stop(timeout=60)
            after = time.monotonic()
            wait_until(lambda: len(load.since(after)) >= RATE_HZ, 30, what="requests after the stop")
        finally:
            load.stop()
        upgraded_and_stopped_failing_nothing("1-minute certificates + sidecar upgrade + graceful stop", load, first,
                                             second, rc, upgraded, after)  # fmt: skip
        assert identity_serial(first) == mesh.dataplane_status("orders-1")["certSerial"]
