"""Marks the endpoints of dataplanes whose sidecar has gone (stream closed for a while) unhealthy.

A graceful stop deregisters the dataplane at once; this covers crashes. The grace
period avoids flapping on a reconnect and on a control-plane restart (every stream
reconnects within seconds; until then nothing is marked).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from meshline.controlplane.status import StatusRegistry
from meshline.xds import names

if TYPE_CHECKING:
    from meshline.controlplane.reconciler import Reconciler


class OfflineTracker:
    def __init__(self, status: StatusRegistry, after: float) -> None:
        self.status = status
        self.after = after
        self._offline: dict[str, set[str]] = {}
        self._task: asyncio.Task[None] | None = None
        self._reconciler: Reconciler | None = None

    def offline_in(self, mesh: str) -> frozenset[str]:
        return frozenset(self._offline.get(mesh, ()))

    def connected(self, node: str) -> None:
        mesh, name = names.parse_node_id(node)
        if name in self._offline.get(mesh, set()):
            self._offline[mesh].discard(name)
            if self._reconciler is not None:
                self._reconciler.touch_mesh(mesh)

    def start(self, reconciler: Reconciler) -> None:
        self._reconciler = reconciler
        self._task = asyncio.create_task(self._run(), name="offline-tracker")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.after / 2))
            self.check(time.time())

    def check(self, now: float) -> None:
        assert self._reconciler is not None
        for mesh, snapshot in list(self._reconciler.snapshots.items()):
            gone = set()
            for name in snapshot.dataplanes:
                st = self.status.find(names.node_id(mesh, name))
                # Only dataplanes seen connected by this replica and then lost count; one
                # never seen may be connected to another replica.
                if st is not None and not st.connected and now - st.disconnected_at > self.after:
                    gone.add(name)
            if gone != self._offline.get(mesh, set()):
                self._offline[mesh] = gone
                self._reconciler.touch_mesh(mesh)
