"""What each dataplane's sidecar is running: connection, versions sent/ACKed, last NACK.

Kept in memory by the replica the sidecar is connected to, which tells its listeners each
time a node's record changes; :class:`meshline.controlplane.status_publisher.StatusPublisher`
is the listener that writes them to the store (batched), so every replica can read them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from meshline.xds.snapshot import SHORT


@dataclass
class TypeStatus:
    sent: str = ""
    acked: str = ""
    sent_at: float = 0.0
    acked_at: float = 0.0
    pushes: int = 0
    nack: str = ""
    nack_version: str = ""
    nack_at: float = 0.0


@dataclass
class DataplaneStatus:
    node_id: str
    connected: bool = False
    connected_at: float = 0.0
    disconnected_at: float = 0.0
    streams: int = 0
    types: dict[str, TypeStatus] = field(default_factory=dict)
    nacks: int = 0
    agent_version: str = ""  # what its agent reported (core/versions.py), "" until it connects

    def type(self, type_url: str) -> TypeStatus:
        return self.types.setdefault(SHORT.get(type_url, type_url), TypeStatus())

    @property
    def last_nack(self) -> TypeStatus | None:
        rejected = [t for t in self.types.values() if t.nack]
        return max(rejected, key=lambda t: t.nack_at) if rejected else None

    def in_sync(self) -> bool:
        return self.connected and all(t.sent == t.acked for t in self.types.values())

    def state(self) -> str:
        if not self.connected:
            return "offline"
        nack = self.last_nack
        if nack is not None and nack.nack_version == nack.sent:
            return "rejected"
        return "in-sync" if self.in_sync() else "pushing"

    def to_record(self) -> dict[str, Any]:
        """Everything, losslessly (what the store keeps; :meth:`from_record` reads it back)."""
        return {
            "node": self.node_id, "connected": self.connected, "connectedAt": self.connected_at,
            "disconnectedAt": self.disconnected_at, "nacks": self.nacks, "agentVersion": self.agent_version,
            "types": {name: vars(t).copy() for name, t in self.types.items()},  # all of TypeStatus's fields
        }  # fmt: skip

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> DataplaneStatus:
        known = {f.name for f in fields(TypeStatus)}
        return cls(
            node_id=str(rec.get("node", "")),
            connected=bool(rec.get("connected", False)),
            connected_at=float(rec.get("connectedAt", 0.0)),
            disconnected_at=float(rec.get("disconnectedAt", 0.0)),
            nacks=int(rec.get("nacks", 0)),
            agent_version=str(rec.get("agentVersion", "")),
            types={
                name: TypeStatus(**{k: v for k, v in t.items() if k in known})
                for name, t in dict(rec.get("types") or {}).items()
            },
        )

    def to_json(self) -> dict[str, Any]:
        nack = self.last_nack
        return {
            "node": self.node_id,
            "state": self.state(),
            "connected": self.connected,
            "connectedAt": self.connected_at,
            "disconnectedAt": self.disconnected_at,
            "nacks": self.nacks,
            "agentVersion": self.agent_version,
            "lastNack": {"version": nack.nack_version, "message": nack.nack, "at": nack.nack_at}
            if nack
            else None,
            "types": {
                name: {"sent": t.sent, "acked": t.acked, "pushes": t.pushes, "ackedAt": t.acked_at}
                for name, t in sorted(self.types.items())
            },
        }


class StatusRegistry:
    def __init__(self) -> None:
        self._by_node: dict[str, DataplaneStatus] = {}
        # Called with a node id after its record changed (cheap: they only take note).
        self.listeners: list[Callable[[str], None]] = []

    def changed(self, node_id: str) -> None:
        for listener in self.listeners:
            listener(node_id)

    def get(self, node_id: str) -> DataplaneStatus:
        st = self._by_node.get(node_id)
        if st is None:
            st = self._by_node[node_id] = DataplaneStatus(node_id)
        return st

    def find(self, node_id: str) -> DataplaneStatus | None:
        return self._by_node.get(node_id)

    def connected(self, node_id: str) -> None:
        st = self.get(node_id)
        st.streams += 1
        st.connected = True
        st.connected_at = time.time()
        self.changed(node_id)

    def disconnected(self, node_id: str) -> None:
        st = self.get(node_id)
        st.streams = max(0, st.streams - 1)
        if st.streams == 0:
            st.connected = False
            st.disconnected_at = time.time()
        self.changed(node_id)

    def all(self) -> list[DataplaneStatus]:
        return list(self._by_node.values())

    def forget(self, node_id: str) -> None:
        self._by_node.pop(node_id, None)
