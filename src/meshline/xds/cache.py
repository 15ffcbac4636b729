"""Per-node snapshot cache: the reconciler sets snapshots, ADS streams watch them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from meshline.core.callbacks import KeyedCallbacks
from meshline.xds.snapshot import Snapshot


class SnapshotCache:
    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._watchers: KeyedCallbacks[Callable[[Snapshot], None]] = KeyedCallbacks()

    def get(self, node_id: str) -> Snapshot | None:
        return self._snapshots.get(node_id)

    def set(self, node_id: str, snapshot: Snapshot) -> bool:
        """Store and notify watchers; returns False when nothing changed."""
        prior = self._snapshots.get(node_id)
        if (
            prior is not None
            and prior.slots.keys() == snapshot.slots.keys()
            and all(prior.version(t) == snapshot.version(t) for t in snapshot.slots)
        ):
            return False
        self._snapshots[node_id] = snapshot
        for notify in self._watchers.get(node_id):
            notify(snapshot)
        return True

    def clear(self, node_id: str) -> None:
        self._snapshots.pop(node_id, None)

    def nodes(self) -> list[str]:
        return list(self._snapshots)

    def watch(self, node_id: str, notify: Callable[[Snapshot], None]) -> Callable[[], None]:
        return self._watchers.add(node_id, notify)

    def watched(self, node_id: str) -> bool:
        return node_id in self._watchers


async def wait_for(cache: SnapshotCache, node_id: str, timeout: float) -> Snapshot | None:
    snap = cache.get(node_id)
    if snap is not None:
        return snap
    fut: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()
    def done(snap: Snapshot) -> None:
        if not fut.done():
            fut.set_result(snap)

    cancel = cache.watch(node_id, done)
    try:
        return await asyncio.wait_for(fut, timeout)
    except TimeoutError:
        return None
    finally:
        cancel()
