"""Gives every service of a mesh a virtual IP, kept in the store as a ``Service`` resource.

The API writes a new service's record in the same transaction as the Dataplane that first
names it (:func:`new_services`). The allocator watches the store for the rest: whenever a Dataplane names a service that has no ``Service`` yet (or a
mesh's VIP range changes, or two records claim one address after two replicas raced), it
writes what is missing. Each replica runs one; they agree because allocation is a pure
function of the service name and the addresses already stored (:func:`core.service.allocate`)
and a create that loses a race is a ``Conflict`` that changes nothing. Records are never
deleted with their last instance: a service that comes back keeps its VIP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from meshline.core.dataplane import DataplaneSpec
from meshline.core.errors import Conflict, MeshlineError, NotFound
from meshline.core.external_service import ExternalServiceSpec
from meshline.core.mesh import MeshSpec
from meshline.core.resource import Resource, ResourceKey
from meshline.core.service import RangeFull, ServiceSpec, allocate, duplicates, in_range, vip_table
from meshline.store.base import Change, Resync, Store, WatchEvent

log = logging.getLogger("meshline.vips")
KIND = "Service"
RELEVANT = frozenset({"Mesh", "Dataplane", "ExternalService", KIND})


def wanted_services(r: Resource) -> set[str]:
    """The services ``r`` needs a VIP for: a Dataplane's inbound services; an ExternalService
    with a host (mesh DNS answers the host with it; an address or CIDR is dialled as it is)."""
    if r.kind == "Dataplane" and isinstance(r.spec, DataplaneSpec):
        return {i.service for i in r.spec.inbound}
    if r.kind == "ExternalService" and isinstance(r.spec, ExternalServiceSpec) and r.spec.host is not None:
        return {r.name}
    return set()


async def new_services(store: Store, writes: Sequence[Resource]) -> list[Resource]:
    """The Service records the Dataplanes in ``writes`` need and the store lacks, to be written in
    the same transaction (so a new service has its VIP in the revision that adds it; the
    allocator below catches whatever this misses: a lost race, a range change)."""
    by_mesh: dict[str, set[str]] = {}
    for r in writes:
        if wanted := wanted_services(r):
            by_mesh.setdefault(r.mesh, set()).update(wanted)
    out: list[Resource] = []
    for mesh, services in sorted(by_mesh.items()):
        try:
            mesh_res = await store.get(ResourceKey("Mesh", "", mesh))
        except NotFound:
            continue
        assert isinstance(mesh_res.spec, MeshSpec)
        cidr = mesh_res.spec.transparent_proxy.vip_range
        records = {r.name: r for r in await store.list(kind=KIND, mesh=mesh)}
        table = in_range(vip_table(records.values()), cidr)
        for service in sorted(services - records.keys()):
            try:
                vip = allocate(service, cidr, table.values())
            except RangeFull:
                continue  # the allocator logs it
            table[service] = vip
            out.append(Resource(kind=KIND, mesh=mesh, name=service, spec=ServiceSpec(vip=vip)))
    return out


class VipAllocator:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cancel: Callable[[], None] | None = None

    async def start(self) -> None:
        self._cancel = await self.store.watch(self._on_event)
        self._task = asyncio.create_task(self._run(), name="vip-allocator")

    async def stop(self) -> None:
        if self._cancel is not None:
            self._cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_event(self, event: WatchEvent) -> None:
        if isinstance(event, Resync):
            self._dirty |= {r.mesh or r.name for r in event.resources if r.kind in RELEVANT}
        elif isinstance(event, Change) and event.key.kind in RELEVANT:
            self._dirty.add(event.key.mesh or event.key.name)
        else:
            return
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            meshes, self._dirty = self._dirty, set()
            for mesh in sorted(meshes):
                try:
                    await self.allocate_mesh(mesh)
                except Conflict:
                    self._dirty.add(mesh)  # another replica wrote first: look again
                    self._wake.set()
                except (MeshlineError, RangeFull) as err:
                    log.warning("cannot allocate service VIPs in mesh %s: %s", mesh, err)

    async def allocate_mesh(self, mesh: str) -> list[Resource]:
        """Write the Service records ``mesh`` lacks; returns what it wrote."""
        try:
            mesh_res = await self.store.get(ResourceKey("Mesh", "", mesh))
        except NotFound:
            return []
        assert isinstance(mesh_res.spec, MeshSpec)
        cidr = mesh_res.spec.transparent_proxy.vip_range
        resources = await self.store.list(mesh=mesh)
        wanted = {s for r in resources for s in wanted_services(r)}
        records = {r.name: r for r in resources if r.kind == KIND}
        table = in_range(vip_table(records.values()), cidr)
        # outside the range (it changed), or holding an address an older record has
        stale = {name for name in records if name not in table} | set(duplicates(records.values()))
        written: list[Resource] = []
        for service in sorted((wanted - records.keys()) | stale):
            vip = allocate(service, cidr, table.values())
            table[service] = vip
            prior = records.get(service)
            res = Resource(kind=KIND, mesh=mesh, name=service, spec=ServiceSpec(vip=vip))
            if prior is None:
                written.append(await self.store.create(res))
            else:
                written.append(await self.store.update(res, expected_version=prior.version))
            log.info("service %s/%s: VIP %s", mesh, service, vip)
        return written
