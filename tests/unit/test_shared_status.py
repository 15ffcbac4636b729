"""Which xDS status a replica shows for a dataplane (controlplane.shared_status.merged_status)."""

from __future__ import annotations

from meshline.controlplane.shared_status import merged_status
from meshline.xds.status import DataplaneStatus, TypeStatus

NODE = "default.web-1"


def record(connected: bool, replica: str, **types: TypeStatus) -> dict[str, object]:
    st = DataplaneStatus(NODE, connected=connected, connected_at=100.0, disconnected_at=0.0 if connected else 150.0,
                         types=dict(types))  # fmt: skip
    return {"xds": {**st.to_record(), "replica": replica}}


def test_the_record_survives_the_store_round_trip() -> None:
    st = DataplaneStatus(NODE, connected=True, connected_at=1.0, nacks=2,
                         types={"CDS": TypeStatus(sent="a", acked="a", pushes=3, nack="bad", nack_version="b")})  # fmt: skip
    again = DataplaneStatus.from_record(st.to_record())
    assert again == st and again.to_json() == st.to_json()


def test_a_connected_record_of_a_live_replica_is_shown_as_is() -> None:
    stored = record(True, "b", CDS=TypeStatus(sent="v1", acked="v1"))
    out, replica = merged_status(NODE, None, stored, {"b": 1.0}, me="a", ttl=3.0, now=200.0)
    assert (out["state"], out["connected"], replica, out["lastSeen"]) == ("in-sync", True, "b", 199.0)


def test_a_silent_or_departed_replica_makes_its_sidecars_offline() -> None:
    stored = record(True, "b", CDS=TypeStatus(sent="v1", acked="v1"))
    silent, replica = merged_status(NODE, None, stored, {"b": 5.0}, me="a", ttl=3.0, now=200.0)
    assert (silent["state"], silent["connected"], replica) == ("offline", False, "")
    assert silent["disconnectedAt"] == silent["lastSeen"] == 195.0  # its last beat
    assert silent["types"]["CDS"]["acked"] == "v1"  # what it last ran stays visible
    departed, _ = merged_status(NODE, None, stored, {}, me="a", ttl=3.0, now=200.0)
    assert departed["state"] == "offline"


def test_this_replicas_memory_wins_for_its_own_streams() -> None:
    local = DataplaneStatus(NODE, connected=False, disconnected_at=180.0)
    stored = record(True, "a")  # written before the stream closed; the next batch is not out yet
    out, replica = merged_status(NODE, local, stored, {"a": 0.1}, me="a", ttl=3.0, now=200.0)
    assert (out["state"], replica) == ("offline", "")
    local.connected = True  # a fresh stream here beats another replica's older record
    out, replica = merged_status(NODE, local, record(True, "b"), {"b": 0.1}, me="a", ttl=3.0, now=200.0)
    assert (out["connected"], replica) == (True, "a")


def test_another_replicas_record_wins_over_a_closed_local_one() -> None:
    local = DataplaneStatus(NODE, connected=False, disconnected_at=180.0)  # it moved to replica b
    out, replica = merged_status(NODE, local, record(True, "b"), {"b": 0.1}, me="a", ttl=3.0, now=200.0)
    assert (out["connected"], replica) == (True, "b")
    nothing, _ = merged_status(NODE, None, None, {}, me="a", ttl=3.0)
    assert nothing == {"node": NODE, "state": "offline", "connected": False}
