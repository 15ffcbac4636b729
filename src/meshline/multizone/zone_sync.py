"""A zone's end of the sync: it pulls global's changes, keeps its inventory, pushes it up.

Three tasks, each retried forever with a backoff, none ever blocking the zone's own work:

* **down**: long-polls global with ``since`` = the last global revision applied (kept in
  ``<data dir>/zone-sync.json``, so a restart resumes too); writes what arrives into the
  zone's own store (in one transaction), deletes what global deleted.
* **inventory**: after each render of a mesh, the zone's healthy local instances per service
  and its ingress address become ``ZoneService`` records in the zone's store (written only
  when they change).
* **up**: sends the zone's own ``ZoneService`` records changed since global's position.

When global is unreachable nothing here touches what the zone serves: the store keeps the last
synced state, registrations go on locally, and each task catches up by itself on reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx

from meshline.controlplane.context import ControlPlaneContext
from meshline.controlplane.reconciler import Reconciler
from meshline.controlplane.settings import Settings
from meshline.core.datadir import write_private
from meshline.core.errors import MeshlineError, NotFound
from meshline.core.ratelog import RateLimitedLog
from meshline.core.resource import Resource, ResourceKey
from meshline.core.tasks import stop_tasks, wait_set
from meshline.core.zones import ZONE_SERVICE, ZoneServiceSpec
from meshline.multizone import ca_transfer
from meshline.multizone.protocol import (
    LocalEndpoint,
    Report,
    for_zone,
    ingress_of,
    inventory,
    key_from,
    report_delta,
    synced_down,
    up_batch,
)
from meshline.store.base import Change

log = logging.getLogger("meshline.multizone.zone")
STATE_FILE = "zone-sync.json"
MAX_BACKOFF = 5.0
UP_HEARTBEAT = 5.0  # seconds between up batches when nothing changed (global sees the zone alive)
MAX_ERRORS = 20


class SyncError(MeshlineError):
    pass


def _client(settings: Settings, token: str, poll: float) -> httpx.AsyncClient:
    verify: ssl.SSLContext | bool = True
    if settings.global_ca_file is not None:
        verify = ssl.create_default_context(cafile=str(settings.global_ca_file))
    return httpx.AsyncClient(
        base_url=settings.global_url.rstrip("/"), verify=verify,
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(poll + 10.0, connect=5.0),
    )  # fmt: skip


def _message(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:300]
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)[:500]
    return str(body)[:300]


class ZoneSync:
    def __init__(self, ctx: ControlPlaneContext, reconciler: Reconciler, settings: Settings, poll: float,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.ctx = ctx
        self.reconciler = reconciler
        self.settings = settings
        self.zone = settings.zone
        self.poll = poll
        self.clock = clock
        self.box = ca_transfer.ZoneBox()
        self.state_path = settings.data_dir / STATE_FILE
        self.applied = 0  # the global revision this zone's store holds
        self.uploaded = 0  # the zone revision global holds our inventory as of
        self.connected = False
        self.last_sync = 0.0
        self.global_revision = 0
        self.errors: deque[str] = deque(maxlen=MAX_ERRORS)  # what went wrong applying global's changes
        self.link_error: str | None = None
        self._deleted: deque[tuple[int, ResourceKey]] = deque(maxlen=10_000)
        self._up_floor = 0
        self._dirty: set[str] = set()
        # (global revision, zone store revision it was written at): which global revision the
        # zone's rendering has reached (for `apply --wait` at global)
        self._marks: deque[tuple[int, int]] = deque(maxlen=1000)
        self._settled_global = 0
        self._sent_report: Report | None = None  # what global holds of our rollout report
        self._global_epoch = ""  # global's process: a new one holds no report of ours
        self._inventory_wake = asyncio.Event()
        self._up_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._log = RateLimitedLog(log)

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        token_file = self.settings.zone_token_file
        assert token_file is not None
        try:
            token = token_file.read_text().strip()
        except OSError as err:
            raise MeshlineError(f"cannot read --zone-token-file {token_file}: {err.strerror}") from None
        if not token:
            raise MeshlineError(f"--zone-token-file {token_file} is empty; put the zone token issued at global in it")
        self._load_state()
        self._client = _client(self.settings, token, self.poll)
        self._up_floor = await self.ctx.store.revision()
        self._marks.append((self.applied, self._up_floor))
        self._unsubscribe = self.ctx.store.subscribe(self._on_change)
        self.reconciler.listeners.append(self._rendered)
        self.ctx.status.listeners.append(self._acked)
        self._dirty.update(self.ctx.model.mesh_names())
        self._inventory_wake.set()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._down_loop(), name="zone-sync-down"),
                       loop.create_task(self._inventory_loop(), name="zone-inventory"),
                       loop.create_task(self._up_loop(), name="zone-sync-up")]  # fmt: skip
        log.info("zone %s: syncing with global at %s from revision %d", self.zone, self.settings.global_url, self.applied)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        with contextlib.suppress(ValueError):
            self.reconciler.listeners.remove(self._rendered)
        with contextlib.suppress(ValueError):
            self.ctx.status.listeners.remove(self._acked)
        await stop_tasks(self._tasks)
        self._tasks = []
        if self._client is not None:
            await self._client.aclose()

    def _load_state(self) -> None:
        try:
            raw = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(raw, dict) and raw.get("zone") == self.zone and raw.get("global") == self.settings.global_url:
            self.applied = int(raw.get("applied", 0))
            self.uploaded = int(raw.get("uploaded", 0))

    def _save_state(self) -> None:
        write_private(self.state_path, json.dumps({"zone": self.zone, "global": self.settings.global_url,
                                                   "applied": self.applied, "uploaded": self.uploaded}))  # fmt: skip

    def _on_change(self, change: Change) -> None:
        if change.key.kind != ZONE_SERVICE:
            return
        if change.op == "delete":
            self._deleted.append((change.revision, change.key))
        self._up_wake.set()

    def _rendered(self, mesh: str, nodes: list[str], changed_at: float) -> None:
        self._dirty.add(mesh)
        self._inventory_wake.set()
        self._up_wake.set()  # global learns how far rendering got

    def _acked(self, node: str) -> None:
        self._up_wake.set()  # an ACK or NACK: global's `apply --wait` is waiting for it

    def settled_global(self) -> int:
        """The newest global revision whose changes this zone has rendered."""
        settled = self.reconciler.settled_revision
        while self._marks and self._marks[0][1] <= settled:
            self._settled_global = max(self._settled_global, self._marks.popleft()[0])
        return self._settled_global

    async def report(self) -> Report:
        """Per mesh: how far rendering got, in global revisions, and every dataplane's versions and ACKs."""
        settled = self.settled_global()
        return {mesh: {"settledRevision": settled, "dataplanes": {d["name"]: d for d in await self.ctx.sync_report(mesh)}}
                for mesh in sorted(self.ctx.model.mesh_names())}  # fmt: skip

    async def _backoff(self, delay: float) -> float:
        await asyncio.sleep(delay)
        return min(delay * 2, MAX_BACKOFF)

    # -- down: global -> zone -------------------------------------------------------
    async def _model_ready(self) -> None:
        """The render loop starts after the subsystems: wait until its model holds the store."""
        while self.ctx.model.revision < self._up_floor:
            await asyncio.sleep(0.05)

    async def _down_loop(self) -> None:
        await self._model_ready()
        delay = 0.2
        while True:
            try:
                await self._down_once()
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as err:  # global away, refused, or a bad batch: keep serving, retry
                self.connected = False
                self.link_error = str(err) or type(err).__name__
                self._log.warning("down", "zone %s: sync from global failed (%s); retrying", self.zone, self.link_error)
                delay = await self._backoff(delay)

    async def _down_once(self) -> None:
        assert self._client is not None
        r = await self._client.get(f"/api/v1/zones/{self.zone}/sync/down",
                                   params={"since": self.applied, "wait": int(self.poll), "box": self.box.public})  # fmt: skip
        if r.status_code != 200:
            raise SyncError(f"global refused the sync ({r.status_code}): {_message(r)}")
        batch = r.json()
        await self.apply_down(batch)
        self.connected = True
        self.link_error = None
        self.last_sync = self.clock()

    async def apply_down(self, batch: dict[str, Any]) -> int:
        """Write one down batch into the zone's store; returns how many resources it changed."""
        revision = int(batch["revision"])
        puts: list[tuple[Resource, int | None]] = []
        for doc in batch.get("put") or []:
            try:
                res = self._incoming(doc)
            except Exception as err:  # one bad document must not stop the others
                self.errors.append(f"{doc.get('kind')} {doc.get('mesh', '')}/{doc.get('name')}: {err}")
                continue
            prior = self.ctx.model.get(res.key)
            res = self.ctx.for_storage(res, prior)  # a provided CA key sealed with this zone's KEK
            if prior is not None and (prior.spec, dict(prior.labels)) == (res.spec, dict(res.labels)):
                continue
            puts.append((res, None))
        if puts:
            await self.ctx.store.put_all(puts)
        deletes = [key_from(k) for k in batch.get("delete") or []]
        if "keys" in batch:
            keep = {key_from(k) for k in batch["keys"]}
            deletes += [key for key in self._held_from_global() if key not in keep]
        for key in sorted(set(deletes), key=lambda k: (k.kind == "Mesh", k.mesh, k.kind, k.name)):
            if key.kind == ZONE_SERVICE and self._own(self.ctx.model.get(key)):
                continue
            with contextlib.suppress(NotFound):
                await self.ctx.store.delete(key)
        self.global_revision = revision
        self._marks.append((revision, await self.ctx.store.revision()))
        if revision != self.applied:
            self.applied = revision
            self._save_state()
            self._up_wake.set()  # global learns how far we are
        return len(puts) + len(deletes)

    def _incoming(self, doc: dict[str, Any]) -> Resource:
        doc = dict(doc)
        ca = doc.pop("ca", None)
        if doc.get("kind") == "Mesh" and isinstance(ca, dict):
            key_pem = self.box.open(str(ca["key"]), ca_transfer.purpose(self.zone, str(doc.get("name")))).decode()
            spec = dict(doc.get("spec") or {})
            mtls = dict(spec.get("mtls") or {})
            mtls["ca"] = {"type": "provided", "cert": ca["cert"], "key": key_pem}
            spec["mtls"] = mtls
            doc["spec"] = spec
        labels = doc.pop("labels", None)
        res = self.ctx.kinds.decode(doc)
        if not for_zone(self.ctx.kinds, res, self.zone):
            raise SyncError(f"global sent a {res.kind}, which a zone keeps for itself")
        return res.with_labels(labels if isinstance(labels, dict) else {})

    def _own(self, r: Resource | None) -> bool:
        return r is not None and isinstance(r.spec, ZoneServiceSpec) and r.spec.zone == self.zone

    def _held_from_global(self) -> list[ResourceKey]:
        model = self.ctx.model
        out = [ResourceKey("Mesh", "", m) for m in model.mesh_names()]
        for mesh in model.mesh_names():
            for r in model.resources(mesh).values():
                if synced_down(self.ctx.kinds, r.kind) or (r.kind == ZONE_SERVICE and not self._own(r)):
                    out.append(r.key)
        return out

    # -- the inventory -----------------------------------------------------------------
    async def _inventory_loop(self) -> None:
        await self._model_ready()
        while True:
            await self._inventory_wake.wait()
            self._inventory_wake.clear()
            dirty, self._dirty = self._dirty, set()
            for mesh in sorted(dirty):
                try:
                    await self._publish_inventory(mesh)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self._dirty.add(mesh)
                    log.exception("zone %s: cannot write the inventory of mesh %s", self.zone, mesh)
                    await asyncio.sleep(1.0)
                    self._inventory_wake.set()

    async def _publish_inventory(self, mesh: str) -> None:
        snap = self.reconciler.mesh_snapshot(mesh)
        current = {r.name: r for r in self.ctx.model.of_kind(mesh, ZONE_SERVICE) if self._own(r)}
        wanted = {}
        if snap is not None:
            endpoints = [LocalEndpoint(service, e.tags, e.healthy)
                         for service, eps in snap.endpoints.items() for e in eps if not e.remote]  # fmt: skip
            protocols = {s: snap.service_protocol(s) for s in {e.service for e in endpoints}}
            wanted = inventory(self.zone, endpoints, protocols, ingress_of(snap.dataplanes.values(), snap.offline))
        writes: list[tuple[Resource, int | None]] = []
        for name, spec in wanted.items():
            prior = current.get(name)
            if prior is not None and prior.spec == spec:
                continue
            writes.append((self.ctx.store.stamped(Resource(kind=ZONE_SERVICE, name=name, mesh=mesh, spec=spec)), None))
        if writes:
            await self.ctx.store.put_all(writes)
        for name in current.keys() - wanted.keys():
            with contextlib.suppress(NotFound):
                await self.ctx.store.delete(ResourceKey(ZONE_SERVICE, mesh, name))

    # -- up: zone -> global -----------------------------------------------------------
    async def _up_loop(self) -> None:
        await self._model_ready()
        delay = 0.2
        resync = self.uploaded < self._up_floor  # deletions before this process started are unknown
        while True:
            await wait_set(self._up_wake, UP_HEARTBEAT)
            self._up_wake.clear()
            try:
                resync = await self._up_once(resync)
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self._log.warning("up", "zone %s: sync to global failed (%s); retrying", self.zone, err)
                delay = await self._backoff(delay)
                self._up_wake.set()

    async def _up_once(self, resync: bool) -> bool:
        """One batch (two when global's position differs); returns whether the next must resync."""
        assert self._client is not None
        for _ in range(2):
            own = [r for m in self.ctx.model.mesh_names() for r in self.ctx.model.of_kind(m, ZONE_SERVICE) if self._own(r)]
            revision = self.ctx.model.revision
            batch = up_batch(self.uploaded, revision, own, self._deleted, self.applied, list(self.errors), resync)
            body = batch.to_json()
            report = await self.report()
            delta = report_delta(self._sent_report, report)
            if delta is not None:  # only what changed: one ACK is one dataplane's entry
                body["meshes"] = delta
            r = await self._client.post(f"/api/v1/zones/{self.zone}/sync/up", json=body)
            if r.status_code == 200:
                self.uploaded = revision
                epoch = str(r.json().get("epoch", ""))
                if epoch == self._global_epoch or self._sent_report is None:
                    self._sent_report = report  # global holds it (a first report is whole)
                else:  # a global process that never saw our earlier reports: send it whole
                    self._sent_report = None
                    self._up_wake.set()
                self._global_epoch = epoch
                self._save_state()
                return False
            if r.status_code != 409:
                raise SyncError(f"global refused the inventory ({r.status_code}): {_message(r)}")
            held = int(r.json().get("inventoryRevision", 0))
            resync = held > revision or held < self._up_floor  # we never had, or cannot diff from, that point
            self.uploaded = held
        raise SyncError("global's position kept changing; retrying")

    # -- status -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {"mode": "zone", "items": [{
            "name": self.zone,
            "global": self.settings.global_url,
            "connected": self.connected,
            "lastSync": self.last_sync or None,
            "appliedRevision": self.applied,
            "globalRevision": self.global_revision,
            "versionsBehind": max(0, self.global_revision - self.applied) if self.connected else None,
            "inventoryRevision": self.uploaded,
            "errors": [*([self.link_error] if self.link_error else []), *self.errors],
        }]}  # fmt: skip
