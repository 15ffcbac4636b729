"""Two zone control-plane replicas on one PostgreSQL store, both syncing with global: a change
at global reaches the zone once, the zone's services reach global once, and with either replica
killed under load the other goes on syncing and serving: no failed request.

Needs PostgreSQL (see tests/store/test_postgres.py): skipped locally without it, a failure in CI.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshline.testing.load import PacedLoad
from meshline.testing.mesh import ControlPlaneThread, MeshHarness, wait_until
from meshline.testing.servers import HttpTestServer
from tests.store.test_postgres import admin_url, database_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.postgres
QUICK = {"status_flush": 0.02, "replica_beat": 0.2}


def timeout_doc(seconds: int) -> dict[str, Any]:
    return {"kind": "Timeout", "mesh": "default", "name": "web-to-orders", "spec": {
        "sources": [{"match": {"service": "web"}}], "destinations": [{"match": {"service": "orders"}}],
        "conf": {"http": {"requestTimeout": f"{seconds}s"}}}}  # fmt: skip


def zone_replica(tmp: Path, name: str, glob: MeshHarness, token: Path, database: str, kek_from: Path | None) -> MeshHarness:
    (tmp / "cp").mkdir(parents=True, mode=0o700)
    if kek_from is not None:
        shutil.copy2(kek_from / "kek", tmp / "cp" / "kek")  # as an operator copies it to each replica
    z = MeshHarness(tmp, auth=True, overrides={
        **QUICK, "store_url": database, "replica_id": name, "mode": "zone", "zone": "zone-a",
        "global_url": glob.api_url, "zone_token_file": token, "create_default_mesh": False})  # fmt: skip
    z.control_plane = ControlPlaneThread(z.settings())
    z.control_plane.start()
    return z


@pytest.fixture
def setup(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[MeshHarness, MeshHarness, MeshHarness]]:  # noqa: F811
    monkeypatch.setenv("MESHLINE_ZONE_POLL_S", "2")
    glob = MeshHarness(tmp_path / "global", auth=True, overrides={"mode": "global", "zone": "global"},
                       mesh_spec={"defaultPermission": "allow"})  # fmt: skip
    glob.start()
    zones: list[MeshHarness] = []
    try:
        token = tmp_path / "zone-a.token"
        token.write_text(glob.api.request("POST", "/api/v1/tokens", json={"kind": "zone", "zone": "zone-a"})["token"])
        zones.append(zone_replica(tmp_path / "a", "replica-a", glob, token, database_url, None))
        zones.append(zone_replica(tmp_path / "b", "replica-b", glob, token, database_url, zones[0].data_dir))
        yield glob, zones[0], zones[1]
    finally:
        for z in zones:
            z.stop()
        glob.stop()


def test_two_zone_replicas_sync_once_and_either_may_die(setup: tuple[MeshHarness, MeshHarness, MeshHarness]) -> None:
    glob, a, b = setup
    for z in (a, b):
        wait_until(lambda z=z: any(m["name"] == "default" for m in z.api.get("/api/v1/meshes")["items"]), 30,  # type: ignore[misc]
                   interval=0.1, what="the mesh in the zone")  # fmt: skip
    with HttpTestServer("orders-1") as orders:
        b.sidecar("orders", orders.port)
        web = b.sidecar("web", 1, upstreams=["orders"])  # both connected to replica B
        glob.apply([timeout_doc(5)])

        def config_has(seconds: int) -> bool:
            return f'"timeout": "{seconds}s"' in web.admin("/config_dump?resource=dynamic_route_configs").text

        wait_until(lambda: config_has(5), 60, interval=0.2, what="global's Timeout in web's sidecar")
        # the zone's services reach global as one record each, whichever replica wrote them
        # (web's app never listens here: it is not ready, so not in the inventory)
        wait_until(lambda: [s["spec"]["service"] for s in glob.api.get("/api/v1/meshes/default/zoneservices")["items"]
                            if s["spec"]["zone"] == "zone-a"] == ["orders"], 30, interval=0.2,
                   what="orders at global, once")  # fmt: skip

        load = PacedLoad(web.url("orders")).start()
        try:
            wait_until(lambda: len(load.outcomes) >= 20, 30, what="load to flow")
            a.control_plane.stop()  # type: ignore[union-attr]  # replica A dies: B syncs on alone
            glob.apply([timeout_doc(7)])
            wait_until(lambda: config_has(7), 60, interval=0.2, what="the next change through replica B")
            a.control_plane.start()  # back; now B dies, and its sidecars keep serving their last config
            glob.apply([timeout_doc(8)])
            wait_until(lambda: any(t["spec"]["conf"]["http"]["requestTimeout"] == "8s"
                                   for t in a.api.get("/api/v1/meshes/default/timeouts")["items"]), 60,
                       interval=0.2, what="replica A to sync again")  # fmt: skip
            b.control_plane.stop()  # type: ignore[union-attr]
            n = len(load.outcomes)
            wait_until(lambda: len(load.outcomes) >= n + 20, 30, what="load to flow without replica B")
        finally:
            load.stop()
        assert load.outcomes and not load.failed("orders-1"), load.failed("orders-1")[:5]
        timeouts = a.api.get("/api/v1/meshes/default/timeouts")["items"]
        assert [t["name"] for t in timeouts] == ["web-to-orders"]
        zones = {z["name"]: z for z in glob.api.get("/api/v1/zones")["items"]}
        wait_until(lambda: glob.api.get("/api/v1/zones")["items"][0]["versionsBehind"] == 0, 30, interval=0.2,
                   what="the zone synced")  # fmt: skip
        assert list(zones) == ["zone-a"]
