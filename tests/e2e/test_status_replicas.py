"""Two control-plane replicas on one PostgreSQL store: sidecars connect to replica A, and
replica B answers `meshline get dataplanes` and `inspect` about them exactly as A does: in
sync, their NACKs with Envoy's message, their certificates, and offline once A is gone
(stopped, or killed without a word).

Needs PostgreSQL (see tests/store/test_postgres.py): skipped locally without it, a failure in CI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshline.testing.mesh import MeshHarness, wait_until
from meshline.testing.nack import TRIGGER, breakable_control_plane, trigger_dataplane
from meshline.testing.servers import HttpTestServer
from tests.store.test_postgres import admin_url, database_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.postgres

QUICK = {"status_flush": 0.02, "replica_beat": 0.2}  # batches every 20 ms; gone after 0.6 s of silence


def listing(mesh: MeshHarness) -> dict[str, dict[str, Any]]:
    """`meshline get dataplanes`, as name -> status."""
    return {i["name"]: i["status"] for i in mesh.api.get("/api/v1/meshes/default/dataplanes")["items"]}


def second_replica(tmp: Path, first: MeshHarness, database: str, replica_id: str) -> MeshHarness:
    """Replica B: its own ports and data dir, the store and the key-encryption key of the first."""
    (tmp / "cp").mkdir(parents=True, mode=0o700)
    shutil.copy2(first.data_dir / "kek", tmp / "cp" / "kek")  # as an operator copies it to each replica
    b = MeshHarness(tmp, mtls=first.mtls, mesh_spec=first.mesh_spec, overrides={**QUICK, "store_url": database, "replica_id": replica_id})
    b.start()
    return b


@contextlib.contextmanager
def two_replicas(tmp: Path, database: str, **first: Any) -> Iterator[tuple[MeshHarness, MeshHarness]]:
    """Replicas A and B on one PostgreSQL database (A built with ``first``), both stopped after."""
    a = MeshHarness(tmp / "a", **first, overrides={**QUICK, "store_url": database, "replica_id": "replica-a"})
    a.start()
    b = None
    try:
        b = second_replica(tmp / "b", a, database, "replica-b")
        yield a, b
    finally:
        a.stop()
        if b is not None:
            b.stop()


@pytest.fixture
def replicas(tmp_path: Path, database_url: str) -> Iterator[tuple[MeshHarness, MeshHarness]]:  # noqa: F811
    with two_replicas(tmp_path, database_url, mtls="strict", mesh_spec={"defaultPermission": "allow"},
                      build=breakable_control_plane) as pair:  # fmt: skip
        yield pair


def test_replica_b_shows_what_replica_a_sees(replicas: tuple[MeshHarness, MeshHarness]) -> None:
    a, b = replicas
    with HttpTestServer("orders-app") as app:
        a.sidecar("orders", app.port)
        a.sidecar("web", 1, upstreams=["orders"])
        a.wait_in_sync()
        b.wait_in_sync()  # B's view is not A's memory: it comes from the store

        def same_everywhere() -> dict[str, Any] | None:
            here, there = listing(a), listing(b)
            for name in ("orders-1", "web-1"):
                if not (here[name]["state"] == there[name]["state"] == "in-sync"):
                    return None
                if here[name]["types"] != there[name]["types"]:  # versions sent and ACKed per type
                    return None
            return there

        there = wait_until(same_everywhere, 10, what="both replicas to show the same versions")
        assert there["web-1"]["replica"] == "replica-a" and there["web-1"]["connected"]
        assert set(there["web-1"]["types"]) >= {"CDS", "LDS", "EDS"}
        assert there["web-1"]["certIdentity"] == "spiffe://meshline.local/default/web"  # signed by A
        assert there["web-1"]["certExpiresAt"] == listing(a)["web-1"]["certExpiresAt"]

        # A NACK, seen on A's stream, is visible from B with Envoy's message
        a.apply(trigger_dataplane("orders"))
        rejected = wait_until(lambda: (s := listing(b)["web-1"])["state"] == "rejected" and s,
                              15, what="web-1 to show as rejected on replica B")  # fmt: skip
        assert "(unclosed" in rejected["lastNack"]["message"]
        inspected = b.api.get("/api/v1/meshes/default/dataplanes/web-1/inspect")
        assert inspected["dataplane"]["status"]["state"] == "rejected"
        assert inspected["dataplane"]["status"]["nacks"] >= 1
        assert inspected["versions"]  # B renders the same config itself
        b.api.request("DELETE", f"/api/v1/meshes/default/dataplanes/{TRIGGER}")  # fixed from B
        wait_until(lambda: listing(b)["web-1"]["state"] == "in-sync", 15, what="web-1 back in sync on B")

        # A stops: it writes the streams' ends and says goodbye; B shows them offline
        assert a.control_plane is not None
        a.control_plane.stop()
        a.control_plane = None
        def all_offline() -> dict[str, dict[str, Any]] | None:
            seen = listing(b)
            return seen if all(s["state"] == "offline" for s in seen.values()) else None

        gone = wait_until(all_offline, 10, what="B to show A's sidecars offline")
        assert gone["web-1"]["connected"] is False and gone["web-1"]["replica"] == ""
        assert gone["web-1"]["lastSeen"] > 0


def test_sidecars_of_a_killed_replica_read_offline(tmp_path: Path, database_url: str) -> None:  # noqa: F811
    """Replica A is a real process, killed with SIGKILL: nobody writes anything, yet B shows
    A's sidecars offline once A's heartbeat is older than three beats."""
    a_view = MeshHarness(tmp_path / "a")  # only to start sidecars against A's ports
    a_view.data_dir.mkdir(parents=True, mode=0o700)
    env = {**os.environ, "MESHLINE_AUTH": "off", "MESHLINE_REPLICA_ID": "replica-a",
           "MESHLINE_REPLICA_BEAT_S": "0.2", "MESHLINE_STATUS_FLUSH_S": "0.02"}  # fmt: skip
    cmd = [sys.executable, "-m", "meshline", "control-plane", "--data-dir", str(a_view.data_dir),
           "--store", database_url, "--api-address", f"127.0.0.1:{a_view.api_port}",
           "--xds-address", f"127.0.0.1:{a_view.xds_port}", "--debounce", "0.005"]  # fmt: skip
    log = tmp_path / "replica-a.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    b = None
    try:
        wait_until(lambda: a_view.api.get("/api/v1/health")["status"] == "ok", 20,
                   what=f"replica A to start\n{log.read_text()}")  # fmt: skip
        a_view.api.put({"kind": "Mesh", "name": "default", "spec": {"mtls": {"mode": "disabled"}}})
        b = second_replica(tmp_path / "b", a_view, database_url, "replica-b")
        with HttpTestServer("orders-app") as app:
            a_view.sidecar("orders", app.port)
            wait_until(lambda: listing(b)["orders-1"]["state"] == "in-sync", 15, what="orders-1 in sync on B")
            assert listing(b)["orders-1"]["replica"] == "replica-a"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            offline = wait_until(lambda: (s := listing(b)["orders-1"])["state"] == "offline" and s,
                                 10, what="B to show orders-1 offline after A died")  # fmt: skip
            assert offline["connected"] is False
            assert offline["types"]["CDS"]["acked"]  # what it last ran stays visible
    finally:
        a_view.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if b is not None:
            b.stop()
