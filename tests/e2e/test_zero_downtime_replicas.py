"""A rolling restart of two control-plane replicas on PostgreSQL under steady load (issue 16):
each replica is stopped and started again in turn; its sidecars keep serving their last config
while it is away, reconnect to it, and ACK the same versions as before (no config change).
0 failed requests.

Needs PostgreSQL (see tests/store/test_postgres.py): skipped locally without it, a failure in CI.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshline.testing.load import RATE_HZ, PacedLoad
from meshline.testing.mesh import MeshHarness, wait_until
from meshline.testing.servers import HttpTestServer, free_port
from tests.e2e.test_status_replicas import two_replicas
from tests.store.test_postgres import admin_url, database_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.postgres


@pytest.fixture
def replicas(tmp_path: Path, database_url: str) -> Iterator[tuple[MeshHarness, MeshHarness]]:  # noqa: F811
    with two_replicas(tmp_path, database_url, mtls="strict", mesh_spec={"defaultPermission": "allow"}) as pair:
        yield pair


def acked(mesh: MeshHarness, name: str) -> dict[str, Any]:
    return {t: v["acked"] for t, v in mesh.dataplane_status(name)["types"].items()}


def test_a_rolling_restart_of_two_replicas_fails_no_request(replicas: tuple[MeshHarness, MeshHarness]) -> None:
    a, b = replicas
    with HttpTestServer("orders-a") as app_a, HttpTestServer("orders-b") as app_b:
        a.sidecar("orders", app_port=app_a.port, name="orders-1")
        b.sidecar("orders", app_port=app_b.port, name="orders-2")  # connected to replica B
        web = a.sidecar("web", app_port=free_port(), upstreams=["orders"])  # connected to replica A
        a.wait_in_sync()
        b.wait_in_sync()
        before = {name: acked(a, name) for name in ("web-1", "orders-1", "orders-2")}
        load = PacedLoad(web.url("orders") + "/").start()
        try:
            wait_until(lambda: {"orders-a", "orders-b"} <= {w for _, w in load.outcomes}, 15, what="both serving")
            for replica, rid in ((a, "replica-a"), (b, "replica-b")):
                replica.restart_control_plane(down_for=1.0)  # away for a second: sidecars keep serving
                for sc in replica.sidecars:  # reconnected to the new process, and ACKed
                    wait_until(lambda sc=sc, replica=replica, rid=rid: (s := replica.dataplane_status(sc.name))[
                        "state"] == "in-sync" and s["connected"] and s["replica"] == rid, 30,
                        what=f"{sc.name} back on {rid}")  # fmt: skip
            restarted = len(load.outcomes)
            wait_until(lambda: len(load.outcomes) >= restarted + RATE_HZ, 30, what="requests after the restarts")
        finally:
            load.stop()
        failed = load.failed("orders-")
        print(f"rolling restart of two replicas: {len(failed)} failed of {len(load.outcomes)} requests")
        assert failed == [], failed
        assert {w for _, w in load.outcomes[restarted:]} == {"orders-a", "orders-b"}
        after = {name: acked(b, name) for name in before}
        assert after == before  # the same versions: a restart is no config change
