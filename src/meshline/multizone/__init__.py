"""Multi-zone: a global control plane where meshes and policies are authored, and zone
control planes that serve their dataplanes and sync with it (docs/multi-zone.md).

``install(ext, settings)`` (server.factory) adds, by ``Settings.mode``:

* ``global``: the zones' sync routes and ``GET /api/v1/zones`` (global_sync.py); Dataplanes
  are refused (global never talks to dataplanes);
* ``zone``: the sync client (zone_sync.py) and ``GET /api/v1/zones`` (this zone's link);
  Meshes and policies are refused with a pointer to global (zone-scoped kinds: Dataplane,
  Service);
* ``standalone``: nothing but the refusal of ``ZoneService`` writes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import replace

from aiohttp import web

from meshline.api.routes import Handler, Route
from meshline.api.server import principal
from meshline.controlplane.context import ControlPlaneContext
from meshline.controlplane.settings import Settings
from meshline.core.dataplane import DataplaneSpec
from meshline.core.errors import FieldProblem, Forbidden, ValidationError
from meshline.core.resource import Resource
from meshline.core.zones import ZONE, ZONE_SERVICE
from meshline.extensions import Extensions
from meshline.multizone.global_sync import GlobalSync
from meshline.multizone.protocol import synced_down
from meshline.multizone.zone_sync import ZoneSync

POLL_ENV = "MESHLINE_ZONE_POLL_S"  # seconds a zone's down poll waits at global (default 20)
ZONE_SCOPED = ("Dataplane", "Service")  # what a zone keeps for itself (the rest comes from global)
_DELETE_PATH = re.compile(r"^/api/v1/meshes/(?P<mesh>[^/]+)(/(?P<plural>[^/]+)/(?P<name>[^/]+))?/?$")


def refuse_control_plane_kinds(res: Resource, ctx: ControlPlaneContext, pending: Sequence[Resource]) -> None:
    if res.kind in (ZONE_SERVICE, ZONE):
        raise ValidationError([FieldProblem("kind", f"{res.kind} records are written by zone control planes")])


def refuse_dataplanes(res: Resource, ctx: ControlPlaneContext, pending: Sequence[Resource]) -> None:
    if res.kind == "Dataplane":
        raise ValidationError([FieldProblem("kind", "a global control plane never talks to dataplanes; register"
                                            " them with their zone's control plane (--mode zone)")])  # fmt: skip


def zone_tagger(zone: str) -> Callable[[Resource, Resource | None], Resource]:
    """A zone's Dataplanes carry its ``zone`` tag on every inbound (stamped at registration), so
    locality (caller and endpoint zones), `LoadBalancer` failover orders and the ``source_zone``
    and ``destination_zone`` metric labels all see where each workload runs."""

    def tag(res: Resource, prior: Resource | None) -> Resource:
        spec = res.spec
        if res.kind != "Dataplane" or not isinstance(spec, DataplaneSpec):
            return res
        if all(i.tags.get("zone") for i in spec.inbound):
            return res
        inbound = [i.model_copy(update={"tags": {**i.tags, "zone": i.tags.get("zone") or zone}}) for i in spec.inbound]
        return replace(res, spec=spec.model_copy(update={"inbound": inbound}))

    return tag


def refuse_other_zones(zone: str) -> Callable[[Resource, ControlPlaneContext, Sequence[Resource]], None]:
    def check(res: Resource, ctx: ControlPlaneContext, pending: Sequence[Resource]) -> None:
        spec = res.spec
        if res.kind != "Dataplane" or not isinstance(spec, DataplaneSpec):
            return
        for n, i in enumerate(spec.inbound):
            if i.tags.get("zone") not in (None, "", zone):
                raise ValidationError([FieldProblem(f"spec.inbound[{n}].tags.zone", f"this control plane serves zone"
                                                    f" '{zone}'; register the dataplane with its own zone's control plane,"
                                                    " or remove the tag")])  # fmt: skip

    return check


def authored_at_global(global_url: str) -> str:
    return (f"is authored at the global control plane ({global_url}): apply it there"
            f" (`meshline --api {global_url} apply -f ...`); a zone keeps only {', '.join(ZONE_SCOPED)} itself")


class ZoneRefusals:
    """On a zone: what global authors is refused, with a pointer there (writes and deletes)."""

    def __init__(self, global_url: str) -> None:
        self.global_url = global_url
        self.ctx: ControlPlaneContext | None = None  # set on start

    def validate(self, res: Resource, ctx: ControlPlaneContext, pending: Sequence[Resource]) -> None:
        if synced_down(ctx.kinds, res.kind):
            raise ValidationError([FieldProblem("kind", f"{res.kind} {authored_at_global(self.global_url)}")])

    @web.middleware
    async def refuse_deletes(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        m = _DELETE_PATH.match(request.path) if request.method == "DELETE" else None
        if m is not None and self.ctx is not None:
            plural = m.group("plural")
            info = self.ctx.kinds.find(plural) if plural else self.ctx.kinds.find("Mesh")
            if info is not None and (info.kind == ZONE_SERVICE or synced_down(self.ctx.kinds, info.kind)):
                raise Forbidden(f"{info.kind} {authored_at_global(self.global_url)}; delete it there")
        return await handler(request)


def install(ext: Extensions, settings: Settings) -> GlobalSync | ZoneSync | None:
    settings.check_mode()
    holder: dict[str, GlobalSync | ZoneSync] = {}

    def validators(ctx: ControlPlaneContext) -> None:
        ctx.validators.append(refuse_control_plane_kinds)

    ext.on_start.append(validators)
    if settings.mode == "global":

        async def start_global(ctx: ControlPlaneContext) -> None:
            ctx.validators.append(refuse_dataplanes)
            sync = holder["sync"] = GlobalSync(ctx)
            await sync.start()

        async def stop_global() -> None:
            if "sync" in holder:
                await holder["sync"].stop()

        ext.on_start.append(start_global)
        ext.on_stop.append(stop_global)
        def global_routes() -> list[Route]:
            sync = holder.get("sync")
            return sync.routes() if isinstance(sync, GlobalSync) else []

        ext.routes.append(global_routes)
    elif settings.mode == "zone":
        settings.create_default_mesh = False  # a zone's meshes come from global
        refusals = ZoneRefusals(settings.global_url)
        poll = float(os.environ.get(POLL_ENV, "20"))

        async def start_zone(ctx: ControlPlaneContext) -> None:
            refusals.ctx = ctx
            ctx.validators.append(refusals.validate)
            ctx.validators.append(refuse_other_zones(settings.zone))
            ctx.sealers.append(zone_tagger(settings.zone))
            sync = holder["sync"] = ZoneSync(ctx, ctx.reconciler, settings, poll)
            ctx.services["zone_sync"] = sync
            await sync.start()

        async def stop_zone() -> None:
            if "sync" in holder:
                await holder["sync"].stop()

        async def zone_status(request: web.Request) -> web.Response:
            principal(request).check_read(None)
            sync = holder["sync"]
            assert isinstance(sync, ZoneSync)
            return web.json_response(sync.status())

        ext.on_start.append(start_zone)
        ext.on_stop.append(stop_zone)
        ext.routes.append(lambda: [Route("GET", "/api/v1/zones", zone_status, "This zone's link to global")])
        ext.middlewares.append(refusals.refuse_deletes)
    return None
