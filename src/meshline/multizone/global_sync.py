"""Global's end of the sync: the zones' two streams as API routes, and `meshline get zones`.

* ``GET /api/v1/zones/{zone}/sync/down?since=N&wait=S&box=K``: a long poll. Answers at once
  with the changes for the zone above ``since`` (protocol.DownFeed), or when one arrives, or
  after ``wait`` seconds with an empty batch (a heartbeat: the zone knows global is there).
  ``since`` doubles as the zone's acknowledgement: global knows what each zone applied.
* ``POST /api/v1/zones/{zone}/sync/up``: a batch of the zone's ``ZoneService`` records,
  applied in one store transaction with the zone's new position (the ``Zone`` record) if
  ``base`` is where global is; else 409 with global's position, from which the zone resends.
* ``GET /api/v1/zones``: every zone: connected, last sync, versions behind, errors.

A zone token (``meshline token issue --kind zone --zone NAME``) admits only its own zone's
sync routes (security.authn); an admin token may call them too (operators, tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from meshline.api.auth import Principal
from meshline.api.request_input import json_body
from meshline.api.routes import Route, query_param
from meshline.api.server import principal
from meshline.controlplane.context import ControlPlaneContext
from meshline.core import labels
from meshline.core.errors import FieldProblem, Forbidden, NotFound, ValidationError
from meshline.core.resource import Resource, ResourceKey
from meshline.core.schema import NAME_HINT, NAME_RE
from meshline.core.tasks import wait_set
from meshline.core.zones import ZONE, ZONE_SERVICE, ZoneServiceSpec, ZoneSpec
from meshline.multizone import ca_transfer
from meshline.multizone.protocol import DownFeed, Report, for_zone, key_from, merge_report
from meshline.store.base import Change

log = logging.getLogger("meshline.multizone.global")

MAX_WAIT = 60.0  # seconds a down poll may be held open
CONNECTED_GRACE = 10.0  # a zone that polled this recently (beyond its wait) counts as connected
MAX_UP_BYTES = 8 << 20
MAX_ERRORS = 20
MAX_MESHES = 1000
MAX_DATAPLANES = 100_000  # per zone and mesh, in a rollout report


@dataclass
class ZoneLink:
    """What this global replica saw of one zone's streams (in memory)."""

    polls: int = 0  # down polls open now
    last_seen: float = 0.0  # last request of either stream ended or began
    last_down: float = 0.0  # last down batch with changes delivered
    applied: int = 0  # the global revision the zone said it applied
    last_up: float = 0.0
    errors: tuple[str, ...] = ()
    remote: str = ""
    # mesh -> the zone's rollout report: {"settledRevision": global revision rendered, "dataplanes": {name: ...}}
    meshes: Report = field(default_factory=dict)

    def connected(self, now: float) -> bool:
        return self.polls > 0 or bool(self.last_seen and now - self.last_seen < CONNECTED_GRACE)


def _is_admin(p: Principal) -> bool:
    return p.mesh is None and not p.read_only and p.service is None and p.zone is None


def check_zone_caller(p: Principal, zone: str) -> None:
    if not NAME_RE.match(zone):
        raise ValidationError([FieldProblem("zone", NAME_HINT)])
    if p.zone is not None and p.zone != zone:
        raise Forbidden(f"token '{p.name}' is for zone '{p.zone}', not '{zone}'; issue one for this zone")
    if p.zone is None and not _is_admin(p):
        raise Forbidden(f"token '{p.name}' cannot sync a zone; use the zone's token (`meshline token issue --kind zone`)")


class GlobalSync:
    def __init__(self, ctx: ControlPlaneContext, clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.clock = clock
        self.feed = DownFeed()
        self.links: dict[str, ZoneLink] = {}
        self._changed = asyncio.Event()
        self._unsubscribe: Callable[[], None] | None = None
        self.epoch = secrets.token_hex(8)  # this process: a zone whose report it does not hold resends it whole

    def mesh_sync(self, mesh: str) -> dict[str, Any]:
        """``GET /api/v1/meshes/{mesh}/sync`` at global (what `apply --wait` polls): every connected
        zone's dataplanes, named ``<zone>/<dataplane>``; rendering has reached the oldest global
        revision any of them rendered; disconnected zones are listed under ``unreachable``."""
        now = self.clock()
        settled: list[int] = []
        dataplanes: list[dict[str, Any]] = []
        unreachable: dict[str, str] = {}
        for zone, link in sorted(self.links.items()):
            if not link.connected(now):
                unreachable[zone] = f"zone {zone} is not connected to global (last seen {now - link.last_seen:.0f}s ago)"
                continue
            report = link.meshes.get(mesh)
            if not isinstance(report, dict):
                settled.append(0)  # connected, not reported yet: wait for it
                continue
            settled.append(int(report.get("settledRevision", 0)))
            for d in report["dataplanes"].values():
                dataplanes.append({**d, "name": f"{zone}/{d.get('name')}"})
        revision = self.ctx.model.revision
        return {"revision": revision, "settledRevision": min(settled) if settled else revision,
                "dataplanes": dataplanes, "unreachable": unreachable}  # fmt: skip

    async def start(self) -> None:
        self.ctx.services["mesh_sync"] = self.mesh_sync
        self.feed.floor = await self.ctx.store.revision()  # every deletion after this is seen
        self._unsubscribe = self.ctx.store.subscribe(self._on_change)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._changed.set()  # open polls answer now

    def _on_change(self, change: Change) -> None:
        synced = change.key.kind in ("Mesh", ZONE_SERVICE) or self._synced(change.key.kind)
        if change.op == "delete" and synced:  # only what zones hold counts against the log's bound
            self.feed.deleted(change.key, change.revision)
        if synced or change.key.kind == "MeshCA":
            event, self._changed = self._changed, asyncio.Event()
            event.set()

    def _synced(self, kind: str) -> bool:
        info = self.ctx.kinds.find(kind)
        return info is not None and info.is_policy

    def link(self, zone: str) -> ZoneLink:
        return self.links.setdefault(zone, ZoneLink())

    # -- what a zone gets -------------------------------------------------------------
    def _for(self, zone: str) -> tuple[list[Resource], dict[ResourceKey, int]]:
        model = self.ctx.model
        out: list[Resource] = []
        versions: dict[ResourceKey, int] = {}
        for name in model.mesh_names():
            mesh = model.mesh(name)
            assert mesh is not None
            out.append(mesh)
            ca = model.get(ResourceKey("MeshCA", "", name))
            if ca is not None:  # a new CA is a change of the Mesh the zone holds
                versions[mesh.key] = ca.version
            out.extend(r for r in model.resources(name).values() if for_zone(self.ctx.kinds, r, zone))
        return out, versions

    def behind(self, zone: str, since: int) -> int:
        held, versions = self._for(zone)
        b = self.feed.batch(since, self.ctx.model.revision, held, versions)
        return len(b.put) + len(b.delete)

    async def _ca_fields(self, zone: str, put: list[Resource], box: str | None) -> dict[str, dict[str, Any]]:
        export = self.ctx.services.get("mesh_ca_export")
        out: dict[str, dict[str, Any]] = {}
        for r in put:
            if r.kind != "Mesh" or not callable(export) or not box:
                continue
            got = await export(r.name)
            if got is None:
                continue
            chain, key_pem = got
            sealed = ca_transfer.seal_for(box, key_pem.encode(), ca_transfer.purpose(zone, r.name))
            out[str(r.key)] = {"ca": {"cert": chain, "key": sealed}}
        return out

    # -- routes -----------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [
            Route("GET", "/api/v1/zones", self.list_zones, "Every zone: connected, last sync, versions behind, errors"),
            Route("GET", "/api/v1/zones/{zone}/sync/down", self.down,
                  "A zone's stream from global: the changes above `since` (long-polled)",
                  query=(query_param("since", {"type": "string"}), query_param("wait", {"type": "string"}),
                         query_param("box", {"type": "string"})), codes=(422,)),
            Route("POST", "/api/v1/zones/{zone}/sync/up", self.up,
                  "A zone's stream to global: its services changed above `base`", codes=(409, 422)),
            Route("DELETE", "/api/v1/zones/{zone}", self.forget,
                  "Forget a zone that is gone for good: its services are no longer routed to (admin)", codes=(404,)),
        ]  # fmt: skip

    async def down(self, request: web.Request) -> web.Response:
        zone = request.match_info["zone"]
        check_zone_caller(principal(request), zone)
        since = _int(request.query.get("since", "0"), "since")
        wait = min(float(_int(request.query.get("wait", "0"), "wait")), MAX_WAIT)
        box = request.query.get("box") or None
        link = self.link(zone)
        link.polls += 1
        link.last_seen = self.clock()
        link.remote = request.remote or ""
        link.applied = max(since, 0) if since <= self.ctx.model.revision else 0
        try:
            deadline = asyncio.get_running_loop().time() + wait
            while True:
                changed = self._changed  # before computing: a change meanwhile wakes the wait
                held, versions = self._for(zone)
                batch = self.feed.batch(since, self.ctx.model.revision, held, versions)
                remaining = deadline - asyncio.get_running_loop().time()
                if not batch.empty or remaining <= 0 or request.transport is None:
                    break
                await wait_set(changed, remaining)
            body = batch.to_json(await self._ca_fields(zone, batch.put, box))
        finally:
            link.polls -= 1
            link.last_seen = self.clock()
        if not batch.empty:
            link.last_down = self.clock()
        return web.json_response(body)

    async def up(self, request: web.Request) -> web.Response:
        zone = request.match_info["zone"]
        check_zone_caller(principal(request), zone)
        body = await json_body(request, MAX_UP_BYTES, "zone sync")
        if not isinstance(body, dict):
            raise ValidationError([FieldProblem("", "must be a JSON object")])
        link = self.link(zone)
        link.last_seen = self.clock()
        record_key = ResourceKey(ZONE, "", zone)
        record = self.ctx.model.get(record_key) or await _get(self.ctx, record_key)
        stored = record.spec.inventory_revision if record is not None and isinstance(record.spec, ZoneSpec) else 0
        base = _int(str(body.get("base", "0")), "base")
        resync = bool(body.get("resync"))
        if not resync and base != stored:
            return web.json_response({"inventoryRevision": stored, "error": f"global holds zone {zone} as of"
                                      f" revision {stored}, not {base}: resend from {stored}"}, status=409)  # fmt: skip
        puts = [self._zone_service(zone, doc, i) for i, doc in enumerate(body.get("put") or [])]
        deletes = [key_from(k) for k in body.get("delete") or []]
        if resync:
            listed = {r.key for r in puts}
            deletes = [r.key for name in self.ctx.model.mesh_names()
                       for r in self.ctx.model.of_kind(name, ZONE_SERVICE)
                       if isinstance(r.spec, ZoneServiceSpec) and r.spec.zone == zone and r.key not in listed]  # fmt: skip
        for key in deletes:
            held = self.ctx.model.get(key)
            if key.kind != ZONE_SERVICE or (held is not None and getattr(held.spec, "zone", None) != zone):
                raise Forbidden(f"zone {zone} may delete only its own ZoneService records, not {key}")
        revision = _int(str(body.get("revision", "0")), "revision")
        zone_record = Resource(kind=ZONE, name=zone, spec=ZoneSpec(inventory_revision=revision))
        writes: list[tuple[Resource, int | None]] = [(self.ctx.store.stamped(r), None) for r in puts]
        writes.append((self.ctx.store.stamped(zone_record), record.version if record is not None else 0))
        await self.ctx.store.put_all(writes)  # the records and the new position, or nothing
        for key in deletes:
            with contextlib.suppress(Exception):  # already gone: fine
                await self.ctx.store.delete(key)
        link.last_up = self.clock()
        link.applied = max(link.applied, _int(str(body.get("applied", "0")), "applied"))
        link.errors = tuple(str(e)[:500] for e in (body.get("errors") or [])[:MAX_ERRORS])
        meshes = body.get("meshes")
        if isinstance(meshes, dict):
            merge_report(link.meshes, meshes, MAX_MESHES, MAX_DATAPLANES)
        return web.json_response({"inventoryRevision": revision, "epoch": self.epoch})

    def _zone_service(self, zone: str, doc: object, i: int) -> Resource:
        r = self.ctx.kinds.decode(doc)
        spec = r.spec
        if r.kind != ZONE_SERVICE or not isinstance(spec, ZoneServiceSpec) or spec.zone != zone:
            raise ValidationError([FieldProblem(f"put[{i}]", f"a zone sends only its own ZoneService records (zone {zone})")])
        if self.ctx.model.mesh(r.mesh) is None:
            raise ValidationError([FieldProblem(f"put[{i}].mesh", f"mesh '{r.mesh}' does not exist at global")])
        return r.with_labels({labels.ORIGIN: labels.LOCAL_ORIGIN, labels.ZONE: zone})

    async def forget(self, request: web.Request) -> web.Response:
        """A zone decommissioned (or lost): drop its ZoneService records, so other zones stop
        sending to its ingress, and its Zone record. If it comes back it resyncs by itself."""
        zone = request.match_info["zone"]
        p = principal(request)
        if not _is_admin(p):
            raise Forbidden(f"token '{p.name}' cannot forget a zone; this needs an admin token")
        record = self.ctx.model.get(ResourceKey(ZONE, "", zone))
        services = [r for m in self.ctx.model.mesh_names() for r in self.ctx.model.of_kind(m, ZONE_SERVICE)
                    if isinstance(r.spec, ZoneServiceSpec) and r.spec.zone == zone]  # fmt: skip
        if record is None and not services and zone not in self.links:
            raise NotFound(f"no zone '{zone}' is known here; see `meshline get zones`")
        for r in services:
            with contextlib.suppress(NotFound):
                await self.ctx.store.delete(r.key)
        if record is not None:
            with contextlib.suppress(NotFound):
                await self.ctx.store.delete(record.key)
        self.links.pop(zone, None)
        log.info("zone %s forgotten: %d services dropped", zone, len(services))
        return web.json_response({"zone": zone, "services": len(services)})

    async def list_zones(self, request: web.Request) -> web.Response:
        principal(request).check_read(None)
        now = self.clock()
        names = set(self.links)
        names |= {r.name for r in self.ctx.model.resources("").values() if r.kind == ZONE}
        items = []
        for name in sorted(names):
            link = self.link(name)
            record = self.ctx.model.get(ResourceKey(ZONE, "", name))
            services = sum(1 for m in self.ctx.model.mesh_names() for r in self.ctx.model.of_kind(m, ZONE_SERVICE)
                           if isinstance(r.spec, ZoneServiceSpec) and r.spec.zone == name)  # fmt: skip
            connected = link.connected(now)
            items.append({
                "name": name,
                "connected": bool(connected),
                "lastSeen": link.last_seen or None,
                "lastSync": max(link.last_down, link.last_up) or None,
                "appliedRevision": link.applied,
                "globalRevision": self.ctx.model.revision,
                "versionsBehind": self.behind(name, link.applied) if link.last_seen else None,
                "inventoryRevision": record.spec.inventory_revision
                if record is not None and isinstance(record.spec, ZoneSpec) else 0,
                "services": services,
                "errors": list(link.errors),
            })  # fmt: skip
        return web.json_response({"mode": "global", "items": items})


def _int(raw: str, name: str) -> int:
    if not raw.lstrip("-").isdigit():
        raise ValidationError([FieldProblem(name, "must be a whole number")])
    return int(raw)


async def _get(ctx: ControlPlaneContext, key: ResourceKey) -> Resource | None:
    try:
        return await ctx.store.get(key)
    except NotFound:
        return None
