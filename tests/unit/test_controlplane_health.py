"""Which crashed dataplanes callers stop sending to, and when (controlplane/health.py)."""

from __future__ import annotations

import asyncio

from meshline.controlplane.health import OfflineTracker, gone
from meshline.controlplane.read_model import ReadModel
from meshline.core.resource import Resource, ResourceKey
from meshline.kinds import default_kinds
from meshline.xds.status import StatusRegistry

AFTER = 10.0


def dp(name: str, service: str = "orders", ready: bool = True) -> Resource:
    doc = {"kind": "Dataplane", "mesh": "default", "name": name,
           "spec": {"address": "127.0.0.1", "ready": ready,
                    "inbound": [{"port": 1000 + len(name), "servicePort": 8080, "tags": {"service": service}}]}}
    return default_kinds().decode(doc)


def dps(*resources: Resource) -> dict[str, Resource]:
    return {r.name: r for r in resources}


def test_a_lost_instance_with_a_live_peer_is_left_out_at_once() -> None:
    world = dps(dp("orders-1"), dp("orders-2"))
    assert gone(world, {"orders-1": 100.0}, now=100.0, after=AFTER) == {"orders-1"}
    assert gone(world, {}, now=100.0, after=AFTER) == frozenset()


def test_the_last_instance_is_kept_until_offline_after() -> None:
    world = dps(dp("orders-1"), dp("orders-2", ready=False), dp("web-1", service="web"))
    # its only peer is not ready, and another service's instance does not count
    assert gone(world, {"orders-1": 100.0}, now=105.0, after=AFTER) == frozenset()
    assert gone(world, {"orders-1": 100.0}, now=110.5, after=AFTER) == {"orders-1"}
    both = dps(dp("orders-1"), dp("orders-2"))
    assert gone(both, {"orders-1": 100.0, "orders-2": 100.0}, now=101.0, after=AFTER) == frozenset()
    assert gone(both, {"orders-1": 100.0, "orders-2": 100.0}, now=111.0, after=AFTER) == {"orders-1", "orders-2"}
    # a dataplane deregistered (its goodbye) is not ours to mark
    assert gone(both, {"orders-9": 0.0}, now=111.0, after=AFTER) == frozenset()


class FakeReconciler:
    def __init__(self, resources: list[Resource]) -> None:
        self.model = ReadModel()  # the real read model, filled by hand
        self.model.replace(ResourceKey("Mesh", "", "default"), default_kinds().decode({"kind": "Mesh", "name": "default"}))
        for r in resources:
            self.model.replace(r.key, r)
        self.touched: list[str] = []

    def touch_mesh(self, mesh: str) -> None:
        self.touched.append(mesh)


async def test_a_closed_stream_acts_at_once_a_reconnect_undoes_it_and_a_stopping_control_plane_marks_nothing() -> None:
    status = StatusRegistry()
    tracker = OfflineTracker(status, AFTER)
    rec = FakeReconciler([dp("orders-1"), dp("orders-2")])
    tracker.start(rec)  # type: ignore[arg-type]
    try:
        for node in ("default.orders-1", "default.orders-2"):
            status.connected(node)
            tracker.connected(node)
        await asyncio.sleep(0)
        assert rec.touched == [] and tracker.offline_in("default") == frozenset()

        status.disconnected("default.orders-1")
        tracker.disconnected("default.orders-1")
        await asyncio.sleep(0)  # checked once this loop iteration ends, not at the next tick
        assert tracker.offline_in("default") == {"orders-1"} and rec.touched == ["default"]

        status.connected("default.orders-1")
        tracker.connected("default.orders-1")
        await asyncio.sleep(0)
        assert tracker.offline_in("default") == frozenset() and rec.touched == ["default", "default"]

        tracker.stop()  # the control plane stops: its streams end, nothing is marked
        status.disconnected("default.orders-2")
        tracker.disconnected("default.orders-2")
        await asyncio.sleep(0)
        assert tracker.offline_in("default") == frozenset() and rec.touched == ["default", "default"]
    finally:
        tracker.stop()
