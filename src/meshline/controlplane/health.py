"""Leaves the endpoints of dataplanes whose sidecar has gone out of every caller's config.

A graceful stop deregisters the dataplane first (its goodbye), so callers drop it at once;
this covers crashes: an ADS stream that closes while its Dataplane is still registered. Two
rules, both only for streams this replica saw connected (a restarted control plane knows no
stream, so it never marks anything; one that is stopping ignores its streams closing):

* **at once**, when each of the dataplane's services keeps another ready, connected instance:
  callers stop sending to a killed sidecar within a push (milliseconds), and a live sidecar
  that only reconnects loses nothing, its traffic goes to the others meanwhile;
* **after** ``offline_after`` seconds in any case: the last instance of a service is kept
  that long, because leaving it out changes nothing for a crash (callers fail either way)
  but would fail every request during a live sidecar's reconnect.

A reconnect puts the endpoints back at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from meshline.core.dataplane import DataplaneSpec
from meshline.core.resource import Resource
from meshline.xds import names
from meshline.xds.status import StatusRegistry

if TYPE_CHECKING:
    from meshline.controlplane.reconciler import Reconciler


def gone(
    dataplanes: Mapping[str, Resource], lost: Mapping[str, float], now: float, after: float
) -> frozenset[str]:
    """Which dataplanes to leave out of callers' endpoints. ``lost``: name -> when its stream
    closed (without a goodbye: it is still registered). Pure; tested directly."""
    lost = {n: t for n, t in lost.items() if n in dataplanes}
    out = {n for n, t in lost.items() if now - t > after}
    serving: dict[str, set[str]] = {}  # service -> its ready instances still connected
    for name, dp in dataplanes.items():
        spec = dp.spec
        assert isinstance(spec, DataplaneSpec)
        if spec.ready and name not in lost:
            for service in spec.services():
                serving.setdefault(service, set()).add(name)
    for name in lost.keys() - out:
        spec = dataplanes[name].spec
        assert isinstance(spec, DataplaneSpec)
        if all(serving.get(service) for service in spec.services()):
            out.add(name)
    return frozenset(out)


class OfflineTracker:
    def __init__(self, status: StatusRegistry, after: float) -> None:
        self.status = status
        self.after = after
        self._offline: dict[str, frozenset[str]] = {}
        self._lost: dict[str, frozenset[str]] = {}  # mesh -> its lost dataplanes at the last check
        self._pending: set[str] = set()  # meshes to check again once this loop iteration ends
        self._task: asyncio.Task[None] | None = None
        self._reconciler: Reconciler | None = None
        self._stopping = False

    def offline_in(self, mesh: str) -> frozenset[str]:
        return self._offline.get(mesh, frozenset())

    def connected(self, node: str) -> None:
        mesh = self._mesh_of(node)
        if mesh is not None and self._lost.get(mesh):  # a fresh replica's connect storm costs nothing
            self._check_soon(mesh)

    def disconnected(self, node: str) -> None:
        """A stream ended: act on it now, not at the next tick."""
        mesh = self._mesh_of(node)
        if mesh is not None:
            self._check_soon(mesh)

    def _mesh_of(self, node: str) -> str | None:
        if self._stopping or self._reconciler is None:
            return None
        try:
            return names.parse_node_id(node)[0]
        except ValueError:
            return None

    def _check_soon(self, mesh: str) -> None:
        """Streams often end in bursts (a host down): one check per mesh for all of them."""
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._check_pending)
        self._pending.add(mesh)

    def _check_pending(self) -> None:
        meshes, self._pending = self._pending, set()
        if not self._stopping:
            now = time.time()
            for mesh in meshes:
                self.check_mesh(mesh, now)

    def start(self, reconciler: Reconciler) -> None:
        self._reconciler = reconciler
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="offline-tracker")

    def stop(self) -> None:
        """Called first when the control plane stops: its streams closing then are its own doing."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.after / 2))
            self.check(time.time())

    def check(self, now: float) -> None:
        assert self._reconciler is not None
        for mesh in self._reconciler.model.mesh_names():
            self.check_mesh(mesh, now)

    def check_mesh(self, mesh: str, now: float) -> None:
        assert self._reconciler is not None
        dataplanes = {r.name: r for r in self._reconciler.model.of_kind(mesh, "Dataplane")}
        lost: dict[str, float] = {}
        for name in dataplanes:
            st = self.status.find(names.node_id(mesh, name))
            # Only dataplanes seen connected by this replica and then lost count; one
            # never seen may be connected to another replica.
            if st is not None and not st.connected:
                lost[name] = st.disconnected_at
        self._lost[mesh] = frozenset(lost)
        offline = gone(dataplanes, lost, now, self.after)
        if offline != self._offline.get(mesh, frozenset()):
            self._offline[mesh] = offline
            self._reconciler.touch_mesh(mesh)
