"""The render loop: store changes -> debounce -> render affected dataplanes -> snapshot cache.

Feeds the read model (:mod:`.read_model`: every resource in memory, so a change costs
one render per affected dataplane and no store reads) and the results registry
(:mod:`.results`: last render and render error per dataplane, snapshot per mesh). Each flush builds the mesh's new snapshot from the previous one and asks
it what changed (:meth:`MeshSnapshot.changes`); the dataplanes a change affects:

* the Mesh, or a policy whose destinations may select any service: all of them;
* a policy selecting services S: those with an inbound or outbound of a service in S, and
  every transparent dataplane (it reaches every service);
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from meshline.controlplane.read_model import ReadModel
from meshline.controlplane.results import RenderResults
from meshline.core.dataplane import DataplaneSpec
from meshline.core.resource import Resource, ResourceKey
from meshline.render import external
from meshline.render.mesh_snapshot import ANY_SERVICE, NOT_CARRIED, Changes, MeshSnapshot
from meshline.render.plugins import Plugin
from meshline.render.render import render
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


MAX_KNOWN_PROTOCOLS = 10_000  # services remembered per mesh (Reconciler.known_protocols)
PROTOCOLS_PART = "protocols"  # the Mesh status part that keeps them


class Reconciler:
    def __init__(
        self,
        store: Store,
        cache: SnapshotCache,
        plugins: Sequence[Plugin],
        debounce: float = 0.01,
        offline: Callable[[str], frozenset[str]] | None = None,
        zone: str | None = None,
    ) -> None:
        self.store = store
        self.zone = zone  # zone mode: the zone served (MeshSnapshot.build's ``zone``); None: standalone
        self.cache = cache
        self.plugins = list(plugins)  # in the order they run
        self.debounce = debounce
        self.offline = offline or (lambda mesh: frozenset())
        self.model = ReadModel()
        self.results = RenderResults()
        # Every change up to this store revision is rendered and in the cache (`apply --wait`
        # waits for it before comparing versions).
        self.settled_revision = 0
        # mesh -> service -> the protocol its instances said when it last had some: a service
        # whose instances are all gone (a redeploy) keeps it (MeshSnapshot.service_protocol).
        # Kept in the Mesh's status (part "protocols") so a restart or another replica renders
        # the same; bounded (least recently seen services go first).
        self.known_protocols: dict[str, dict[str, str]] = {}
        self._protocols_changed: set[str] = set()  # meshes whose known protocols to store
        self._pending = _Pending()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.listeners: list[Callable[[str, list[str], float], None]] = []  # (mesh, nodes, change time)
        # mesh -> the services live taps watch (MeshSnapshot.watched; not in the store: this
        # replica's taps see only its sidecars' entries), and who waits for them to be rendered
        self.watched: dict[str, frozenset[str]] = {}
        self._watch_turn: dict[str, int] = {}
        self._watch_waiters: list[tuple[str, int, asyncio.Future[list[str]]]] = []

    async def start(self) -> None:
        tune_gc()
        for key, status in (await self.store.list_status("Mesh")).items():
            stored = status.get(PROTOCOLS_PART)
            if isinstance(stored, dict):
                self.known_protocols[key.name] = {str(k): str(v) for k, v in stored.items()}
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

    @property
    def revision(self) -> int:
        """The store revision the read model is at."""
        return self.model.revision

    # -- inputs --------------------------------------------------------------------
    def _on_event(self, event: WatchEvent) -> None:
        if isinstance(event, Resync):
            self._resync(event)
        else:
            prior = self.model.replace(event.key, event.resource)
            self.model.advance(event.revision)
            self.mark(event.key, prior, event.resource)

    def _resync(self, event: Resync) -> None:
        """Everything as of ``event.revision``: what is gone is deleted, the rest replaced."""
        fresh = {r.key: r for r in event.resources}
        for key in self.model.held():
            if key not in fresh:
                self.mark(key, self.model.replace(key, None), None)
        for key, res in fresh.items():
            prior = self.model.replace(key, res)
            if prior != res:
                self.mark(key, prior, res)
        self.model.advance(event.revision)

    def mark(self, key: ResourceKey, prior: Resource | None, current: Resource | None) -> None:
        p = self._pending
        if not p.first_change_at:
            p.first_change_at = time.monotonic()
        if key.kind == "Mesh":
            p.meshes.add(key.name)
            if current is None:
                for dp in self.model.of_kind(key.name, "Dataplane"):
                    self.cache.clear(names.node_id(key.name, dp.name))
        else:
            p.meshes.add(key.mesh)
            if key.kind == "Dataplane" and current is None:
                node = names.node_id(key.mesh, key.name)
                self.cache.clear(node)
                self.results.forget(node)
        self._wake.set()

    def touch_mesh(self, mesh: str) -> None:
        """Look at a mesh again (e.g. a dataplane went offline: its endpoints change)."""
        self._pending.meshes.add(mesh)
        if not self._pending.first_change_at:
            self._pending.first_change_at = time.monotonic()
        self._wake.set()

    def set_watched(self, mesh: str, services: frozenset[str]) -> asyncio.Future[list[str]]:
        """Render the mesh with these services watched; the future gives the nodes whose
        config changed for it, once they are in the cache (pushed to connected sidecars)."""
        fut: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        if self.watched.get(mesh, frozenset()) == services:
            fut.set_result([])
            return fut
        self.watched[mesh] = services
        if not services:
            del self.watched[mesh]
        turn = self._watch_turn[mesh] = self._watch_turn.get(mesh, 0) + 1
        self._watch_waiters.append((mesh, turn, fut))
        self.touch_mesh(mesh)
        return fut

    def _watch_rendered(self, mesh: str, turn: int, pushed: list[str]) -> None:
        waiting = []
        for m, t, fut in self._watch_waiters:
            if m == mesh and t <= turn:
                if not fut.done():
                    fut.set_result(pushed)
            else:
                waiting.append((m, t, fut))
        self._watch_waiters = waiting

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
        """The mesh's snapshot as last rendered (built now if it never was)."""
        if self.model.mesh(mesh) is None:
            return None
        snap = self.results.snapshot(mesh)
        if snap is None:
            snap = self._build(mesh, None)
            self.results.set_snapshot(mesh, snap)
        return snap

    def _build(self, mesh: str, previous: MeshSnapshot | None) -> MeshSnapshot:
        mesh_res = self.model.mesh(mesh)
        assert mesh_res is not None
        known = self.known_protocols.setdefault(mesh, {})
        snap = MeshSnapshot.build(
            mesh_res,
            list(self.model.resources(mesh).values()),
            self.revision,
            self.offline(mesh),
            previous=previous,
            known_protocols=dict(known),
            watched=self.watched.get(mesh, frozenset()),
            zone=self.zone,
        )
        for service, protocol in snap.instance_protocols().items():
            if known.get(service) != protocol:
                self._protocols_changed.add(mesh)
            known.pop(service, None)
            known[service] = protocol
        while len(known) > MAX_KNOWN_PROTOCOLS:
            del known[next(iter(known))]
        return snap

    async def _store_known_protocols(self) -> None:
        changed, self._protocols_changed = self._protocols_changed, set()
        parts = {ResourceKey("Mesh", "", m): {PROTOCOLS_PART: dict(self.known_protocols[m])}
                 for m in changed if m in self.known_protocols}  # fmt: skip
        if parts:
            try:
                await self.store.put_status(parts)
            except Exception:  # rendering goes on; written again with the next change
                log.exception("cannot store the known protocols of %s", ", ".join(sorted(changed)))
                self._protocols_changed |= changed

    def _affected(self, mesh: str, dp: Resource, changes: Changes | None, snap: MeshSnapshot | None = None) -> bool:
        """Whether ``dp``'s config may differ from its last render (see the module docstring)."""
        node = names.node_id(mesh, dp.name)
        last = self.results.get(node)
        if changes is None or changes.everything or last is None or self.results.error(node) is not None:
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
            # it reaches every service of the mesh (an egress gateway: every ExternalService,
            # which TrafficPermissions guard there)
            if spec.transparent is not None or spec.proxy in ("gateway", "egress-gateway"):
                return True
            if any(i.service in changes.policy_services for i in spec.inbound) or any(
                _destination(snap, o.service) in changes.policy_services for o in spec.outbound
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
        await self._store_known_protocols()

    async def _render_pending(self, pending: _Pending) -> None:
        for mesh in pending.meshes:
            watch_turn = self._watch_turn.get(mesh, 0)
            if self.model.mesh(mesh) is None:
                self.results.drop_snapshot(mesh)
                self.known_protocols.pop(mesh, None)
                self._watch_rendered(mesh, watch_turn, [])
                continue
            previous = self.results.snapshot(mesh)
            snap = self._build(mesh, previous)
            self.results.set_snapshot(mesh, snap)
            changes = snap.since_previous
            targets = [dp for dp in snap.dataplanes.values() if self._affected(mesh, dp, changes, snap)]
            pushed = []
            turn = time.monotonic()
            live = self.model.resources(mesh)
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
                    self.results.failed(node, str(err))
                    log.error("cannot render %s: %s", node, err)
                    continue
                self.results.rendered(node, result)
                if self.cache.set(node, result.snapshot):
                    pushed.append(node)
            for listener in self.listeners:
                listener(mesh, pushed, pending.first_change_at)
            self._watch_rendered(mesh, watch_turn, pushed)


def _destination(snap: MeshSnapshot | None, service: str) -> str:
    """The service an outbound's policies select: an outbound by host (``--upstream
    api.example.com=PORT``) is its ExternalService's."""
    return (external.resolve(snap, service) if snap is not None else None) or service
