"""Two control-plane replicas on one PostgreSQL store: exactly one drives a rollout (the live
replica with the smallest id), both show the same state, a command sent to the other one is
acted on, and when the driver stops the other takes over at the same step.

Needs PostgreSQL (see tests/store/test_postgres.py): skipped locally without it, a failure in CI.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshline.testing.mesh import MeshHarness, wait_until
from meshline.testing.servers import HttpTestServer
from tests.e2e.test_status_replicas import two_replicas
from tests.store.test_postgres import admin_url, database_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.postgres

ROLLOUT = {"kind": "Rollout", "mesh": "default", "name": "orders", "spec": {
    "service": "orders", "stable": {"version": "v1"}, "candidate": {"version": "v2"},
    "strategy": {"canary": {"steps": [{"weight": 20}, {"manualGate": True}, {"weight": 100}]}}}}  # fmt: skip


@pytest.fixture
def replicas(tmp_path: Path, database_url: str) -> Iterator[tuple[MeshHarness, MeshHarness]]:  # noqa: F811
    with two_replicas(tmp_path, database_url) as pair:
        yield pair


def state(h: MeshHarness) -> dict[str, Any]:
    return h.api.get("/api/v1/meshes/default/rollouts/orders/status")["state"] or {}


def test_one_replica_drives_the_other_takes_commands_and_takes_over(replicas: tuple[MeshHarness, MeshHarness]) -> None:
    a, b = replicas
    with HttpTestServer("orders-v1") as v1, HttpTestServer("orders-v2") as v2:
        a.sidecar("orders", v1.port, tags={"version": "v1"})
        a.sidecar("orders", v2.port, tags={"version": "v2"})
        wait_until(lambda: len(b.api.get("/api/v1/meshes/default/dataplanes")["items"]) == 2, 10, what="B sees both")
        b.apply(yaml.safe_dump(ROLLOUT))  # written through B, driven by A
        gate = wait_until(lambda: (s := state(b)).get("stage") == 1 and s.get("entered") and s, 20, what="the gate")
        assert gate["driver"] == "replica-a" and state(a) == gate  # the same truth from both replicas
        events = [h["event"] for h in gate["history"]]
        assert events.count("started") == 1 and events.count("step") == 2  # not once per replica
        b.api.request("POST", "/api/v1/meshes/default/rollouts/orders/promote")  # sent to B, acted on by A
        wait_until(lambda: state(a).get("phase") == "promoted", 20, what="promoted by A")
        # a second release of the same rollout, then A stops: B takes over at the same step
        b.api.request("DELETE", "/api/v1/meshes/default/rollouts/orders")
        wait_until(lambda: not b.api.get("/api/v1/meshes/default/httproutes")["items"], 10, what="its route gone")
        b.apply(yaml.safe_dump(ROLLOUT))
        at_gate = wait_until(lambda: (s := state(b)).get("stage") == 1 and s.get("entered") and s, 20, what="gate")
        kept, a.sidecars[:] = list(a.sidecars), []  # A's sidecars stay (still registered) while A stops
        try:
            a.stop()
            takeover(b, at_gate)
        finally:
            for sc in kept:
                sc.stop()


def takeover(b: MeshHarness, at_gate: dict[str, Any]) -> None:
    """B drives once A is gone: the same step, the same weights, and B's promote ends it."""
    taken = wait_until(lambda: (s := state(b)).get("driver") == "replica-b" and s, 10, what="B to take over")
    assert taken["stage"] == 1 and taken["stageStarted"] == at_gate["stageStarted"]
    assert taken["weights"] == at_gate["weights"] == {**at_gate["weights"], "candidate": 20}
    b.api.request("POST", "/api/v1/meshes/default/rollouts/orders/promote")
    wait_until(lambda: state(b).get("phase") == "promoted", 20, what="promoted by B")
    spec = b.api.get("/api/v1/meshes/default/httproutes/rollout-orders")["spec"]
    assert [r["backends"] for r in spec["rules"]] == [[{"tags": {"version": "v2"}, "weight": 1}]]
