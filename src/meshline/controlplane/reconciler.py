"""Store changes -> debounce -> render affected dataplanes -> snapshot cache.

Keeps every resource in memory (the store is the source of truth; this is its
read model), so a change costs one render per affected dataplane and no store
reads. Each flush builds the mesh's new snapshot from the previous one and asks
it what changed (:meth:`MeshSnapshot.changes`); the dataplanes a change affects:

* the Mesh, or a policy whose destinations may select any service: all of them;
* a policy selecting services S: those with an inbound or outbound of a service in S;
* a Dataplane: itself, and those whose last config read the endpoints of a service
  whose endpoints (or protocol) changed: callers, including callers that reach the
  service only through a route's backend;
* those whose last render failed (a change may have fixed them).

Sections nothing changed under are carried from the previous snapshot, so a
re-render mostly reassembles. Rendering yields to the event loop every few
milliseconds, so the first pushes leave while the rest of a big change renders.
Versions are content hashes, so a re-render that produces the same config pushes
nothing; the filter above only saves render time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from meshline.core.dataplane import DataplaneSpec
from meshline.core.resource import Resource, ResourceKey
from meshline.render.mesh_snapshot import ANY_SERVICE, NOT_CARRIED, Changes, MeshSnapshot
from meshline.render.plugins import Plugin
from meshline.render.render import RenderResult, render
from meshline.store.base import Resync, Store, WatchEvent
from meshline.xds import names
from meshline.xds.cache import SnapshotCache

log = logging.getLogger("meshline.reconciler")
YIELD_EVERY = 0.01  # seconds of rendering between turns of the event loop (pushes, ACKs, API)
# Young-generation collections every 100,000 allocations instead of 700. A control plane holds
# millions of long-lived objects (configs, streams); with the default, full collections ran
# every few seconds under load and each stopped everything for 0.5-1 s with 5,000 streams
# (measured: benchmarks/README.md). Short-lived objects die by reference count anyway.
GC_THRESHOLDS = (100_000, 20, 10)


def tune_gc() -> None:
    """Collect garbage cycles less often (see GC_THRESHOLDS); idempotent."""
    gc.set_threshold(*GC_THRESHOLDS)


@dataclass
class _Pending:
    meshes: set[str] = field(default_factory=set)  # meshes with a change to look at
    first_change_at: float = 0.0


class Reconciler:
    def __init__(
        self,
        store: Store,
        cache: SnapshotCache,
        plugins: Sequence[Plugin],
        debounce: float = 0.01,
        offline: Callable[[str], frozenset[str]] | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.plugins = list(plugins)  # in the order they run
        self.debounce = debounce
        self.offline = offline or (lambda mesh: frozenset())
        self.resources: dict[str, dict[ResourceKey, Resource]] = defaultdict(dict)  # mesh -> key -> res
        self.meshes: dict[str, Resource] = {}
        self.revision = 0
        # Every change up to this store revision is rendered and in the cache (`apply --wait`
        # waits for it before comparing versions).
        self.settled_revision = 0
        self.results: dict[str, RenderResult] = {}  # node id -> last render
        self.errors: dict[str, str] = {}  # node id -> render error
        self.snapshots: dict[str, MeshSnapshot] = {}
        self._pending = _Pending()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.listeners: list[Callable[[str, list[str], float], None]] = []  # (mesh, nodes, change time)

    async def start(self) -> None:
        tune_gc()
        self._unsubscribe = await self.store.watch(self._on_event)  # the first Resync fills the model
        self._pending.first_change_at = 0.0  # start-up is not a change to time pushes from
        # The first render runs in the loop's task, not here: start-up goes on to open the
        # xDS and API ports meanwhile (after a restart every sidecar is reconnecting; a stream
        # that connects before its config is rendered gets it the moment it is).
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="reconciler")

    async def stop(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- inputs --------------------------------------------------------------------
    def _apply(self, key: ResourceKey, res: Resource | None) -> Resource | None:
        """Replace what the model holds for ``key`` (the store's watch delivers in order:
        the last event for a key is the newest, nothing here compares versions)."""
        if key.kind == "Mesh":
            prior = self.meshes.pop(key.name, None)
            if res is not None:
                self.meshes[key.name] = res
            return prior
        bucket = self.resources[key.mesh]
        prior = bucket.pop(key, None)
        if res is not None:
            bucket[key] = res
        return prior

    def _on_event(self, event: WatchEvent) -> None:
        if isinstance(event, Resync):
            self._resync(event)
        else:
            prior = self._apply(event.key, event.resource)
            self.revision = event.revision
            self.mark(event.key, prior, event.resource)

    def _resync(self, event: Resync) -> None:
        """Everything as of ``event.revision``: what is gone is deleted, the rest replaced."""
        fresh = {r.key: r for r in event.resources}
        held = [ResourceKey("Mesh", "", name) for name in self.meshes]
        held += [key for bucket in self.resources.values() for key in bucket]
        for key in held:
            if key not in fresh:
                self.mark(key, self._apply(key, None), None)
        for key, res in fresh.items():
            prior = self._apply(key, res)
            if prior != res:
                self.mark(key, prior, res)
        self.revision = event.revision

    def mark(self, key: ResourceKey, prior: Resource | None, current: Resource | None) -> None:
        p = self._pending
        if not p.first_change_at:
            p.first_change_at = time.monotonic()
        if key.kind == "Mesh":
            p.meshes.add(key.name)
            if current is None:
                for dp in [r for r in self.resources.get(key.name, {}).values() if r.kind == "Dataplane"]:
                    self.cache.clear(names.node_id(key.name, dp.name))
        else:
            p.meshes.add(key.mesh)
            if key.kind == "Dataplane" and current is None:
                node = names.node_id(key.mesh, key.name)
                self.cache.clear(node)
                self.results.pop(node, None)
                self.errors.pop(node, None)
        self._wake.set()

    def mesh_resources(self, mesh: str) -> Mapping[ResourceKey, Resource]:
        """Every resource of ``mesh`` the model holds (the Mesh itself aside), read-only."""
        return MappingProxyType(self.resources.get(mesh, {}))

    def touch_mesh(self, mesh: str) -> None:
        """Look at a mesh again (e.g. a dataplane went offline: its endpoints change)."""
        self._pending.meshes.add(mesh)
        if not self._pending.first_change_at:
            self._pending.first_change_at = time.monotonic()
        self._wake.set()

    # -- the loop ------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.debounce)
            self._wake.clear()
            try:
                await self._flush()
            except Exception:
                log.exception("reconcile failed")

    def mesh_snapshot(self, mesh: str) -> MeshSnapshot | None:
        if mesh not in self.meshes:
            return None
        snap = self.snapshots.get(mesh)
        if snap is None:
            snap = self.snapshots[mesh] = self._build(mesh, None)
        return snap

    def _build(self, mesh: str, previous: MeshSnapshot | None) -> MeshSnapshot:
        return MeshSnapshot.build(
            self.meshes[mesh],
            list(self.resources.get(mesh, {}).values()),
            self.revision,
            self.offline(mesh),
            previous=previous,
        )

    def _affected(self, mesh: str, dp: Resource, changes: Changes | None) -> bool:
        """Whether ``dp``'s config may differ from its last render (see the module docstring)."""
        node = names.node_id(mesh, dp.name)
        last = self.results.get(node)
        if changes is None or changes.everything or last is None or node in self.errors:
            return True
        if dp.name in changes.dataplanes:
            return True
        reads = last.reads
        if changes.services and (
            ANY_SERVICE in reads or NOT_CARRIED in reads or not reads.isdisjoint(changes.services)
        ):
            return True
        if changes.dataplanes and NOT_CARRIED in reads:
            return True
        if changes.policy_services:
            spec = dp.spec
            assert isinstance(spec, DataplaneSpec)
            if any(i.service in changes.policy_services for i in spec.inbound) or any(
                o.service in changes.policy_services for o in spec.outbound
            ):
                return True
        return False

    async def _flush(self) -> None:
        pending, self._pending = self._pending, _Pending()
        revision = self.revision
        try:
            await self._render_pending(pending)
        finally:
            self.settled_revision = max(self.settled_revision, revision)

    async def _render_pending(self, pending: _Pending) -> None:
        for mesh in pending.meshes:
            if mesh not in self.meshes:
                self.snapshots.pop(mesh, None)
                continue
            previous = self.snapshots.get(mesh)
            snap = self.snapshots[mesh] = self._build(mesh, previous)
            changes = snap.since_previous
            targets = [dp for dp in snap.dataplanes.values() if self._affected(mesh, dp, changes)]
            pushed = []
            turn = time.monotonic()
            live = self.resources.get(mesh, {})
            for dp in targets:
                if time.monotonic() - turn > YIELD_EVERY:
                    await asyncio.sleep(0)  # let streams push what is rendered, and read ACKs
                    turn = time.monotonic()
                if dp.key not in live:
                    continue  # deleted while we yielded: its cache entry is gone, keep it so
                node = names.node_id(mesh, dp.name)
                try:
                    result = render(dp, snap, self.plugins, previous=self.results.get(node))
                except Exception as err:  # keep the last good config; show why
                    self.errors[node] = str(err)
                    log.error("cannot render %s: %s", node, err)
                    continue
                self.errors.pop(node, None)
                self.results[node] = result
                if self.cache.set(node, result.snapshot):
                    pushed.append(node)
            for listener in self.listeners:
                listener(mesh, pushed, pending.first_change_at)
