"""The REST API (aiohttp). The CLI, the agent and the dashboard all use only this."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from google.protobuf import json_format

from meshline.api.auth import AllowAll, Authenticator, Principal
from meshline.api.openapi import openapi_document
from meshline.api.request_input import if_match, json_body
from meshline.api.routes import Handler, Route
from meshline.controlplane.context import ControlPlaneContext
from meshline.controlplane.preview import preview
from meshline.controlplane.removal import Peer, removal_report
from meshline.controlplane.unknown_services import known_services, warnings_for
from meshline.controlplane.vips import new_services
from meshline.core import versions as compat
from meshline.core.dataplane import DataplaneSpec
from meshline.core.errors import (
    ClientGone,
    Conflict,
    FieldProblem,
    Forbidden,
    MeshlineError,
    NotFound,
    TooLarge,
    ValidationError,
)
from meshline.core.resource import KindInfo, Resource, ResourceKey
from meshline.core.service import ServiceSpec
from meshline.core.slices import Slices
from meshline.render.sections import SectionId
from meshline.render.transparent import DETECTED
from meshline.xds import names

log = logging.getLogger("meshline.api")

CTX: web.AppKey[ControlPlaneContext] = web.AppKey("ctx", ControlPlaneContext)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
ROUTES: web.AppKey[list[Route]] = web.AppKey("routes", list)


# json.dumps(separators=...) makes a new encoder per call; a listing encodes hundreds of parts
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, separators=(",", ":")))


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    ctx = request.app[CTX]
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except MeshlineError as err:
        status = err.status
        if isinstance(err, ClientGone):
            log.info("API %s %s stopped: %s", request.method, request.path, err)
        return _json(err.to_json(), status=err.status)
    except web.HTTPException as err:
        status = err.status
        raise
    except Exception as err:
        log.exception("API %s %s failed", request.method, request.path)
        return _json({"error": "InternalError", "message": f"{type(err).__name__}: {err}"}, status=500)
    finally:
        ctx.metrics.api_request(
            request.method,
            request.match_info.route.resource.canonical
            if request.match_info.route.resource
            else request.path,
            status,
            time.perf_counter() - start,
        )


@web.middleware
async def version_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An agent outside the compatibility rule (core/versions.py) is refused whatever it asks,
    so it stops at registration with a message naming both versions."""
    agent = compat.agent_version_from_user_agent(request.headers.get("User-Agent"))
    if agent is not None:
        why = compat.refusal(request.app[CTX].version, agent)
        if why is not None:
            raise compat.IncompatibleVersion(why)
    return await handler(request)


def make_auth_middleware(auth: Authenticator) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/api/v1/health", "/openapi.json") or not request.path.startswith("/api/"):
            return await handler(request)
        request[PRINCIPAL] = await auth.authenticate(request)
        return await handler(request)

    return auth_middleware


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


async def _body(request: web.Request) -> Any:
    return await json_body(request)


def _dry_run(request: web.Request) -> bool:
    raw = request.query.get("dryRun", "").lower()
    if raw not in ("", "true", "false", "1", "0"):
        raise ValidationError([FieldProblem("dryRun", f"'{raw}' is not a boolean; use true or false")])
    return raw in ("true", "1")


def _client_gone(request: web.Request) -> bool:
    """The client hung up (aiohttp does not cancel a handler for it: we must look)."""
    return request.transport is None or request.transport.is_closing()


def section_json(section: SectionId | None, dataplane: Resource, known: Callable[[], set[str]]) -> dict[str, Any]:
    """An applied policy's section as data, for the dashboard (``target`` is the human label):
    its id's fields and, on an outbound section, the service it calls (the outbound of that
    port; a transparent section is named for its service, plus a detected protocol's suffix:
    the candidate that is one of the ``known`` services)."""
    if section is None:
        return {}
    out: dict[str, Any] = {"proxy": section.proxy, "role": section.role, "port": section.port}
    if section.name:
        out["name"] = section.name
    spec = dataplane.spec
    if section.role == "outbound" and isinstance(spec, DataplaneSpec):
        out["service"] = next((o.service for o in spec.outbound if o.port == section.port), "")
    elif section.role == "transparent-outbound" and section.name:
        candidates = [section.name] + [section.name.removesuffix(v.suffix) for v in DETECTED
                                       if v.suffix and section.name.endswith(v.suffix)]
        out["service"] = next((c for c in candidates if c in known()), section.name)
    return {"section": out}


class Api:
    def __init__(self, ctx: ControlPlaneContext) -> None:
        self.ctx = ctx
        # (kind, mesh) -> key -> (the read model's resource, its item's JSON without status):
        # a listing from the model re-encodes only what changed (rebuilt per listing, so it
        # holds at most what the store holds)
        self._encoded: dict[tuple[str, str], dict[ResourceKey, tuple[Resource, str]]] = {}

    @property
    def kinds(self) -> Any:
        return self.ctx.kinds

    def kind(self, plural: str, mesh_scoped: bool = True) -> KindInfo:
        info = self.kinds.find(plural)
        if info is None or info.mesh_scoped != mesh_scoped:
            known = ", ".join(sorted(k.plural for k in self.kinds.public() if k.mesh_scoped == mesh_scoped))
            raise NotFound(f"no resource type '{plural}'; known: {known}")
        return info

    # -- resources -----------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "revision": self.ctx.reconciler.revision, "version": self.ctx.version})

    async def list_kinds(self, request: web.Request) -> web.Response:
        return _json(
            {
                "items": [
                    {
                        "kind": k.kind,
                        "plural": k.plural,
                        "meshScoped": k.mesh_scoped,
                        "policy": k.is_policy,
                        "summary": k.summary,
                        "aliases": list(k.aliases),
                        "columns": list(k.columns),
                    }
                    for k in self.kinds.public()
                ]
            }
        )

    async def _items(self, resources: Sequence[Resource]) -> list[dict[str, Any]]:
        """Resources as the API shows them; dataplanes with the status every replica shares."""
        statuses = await self.ctx.dataplane_statuses([r for r in resources if r.kind == "Dataplane"])
        out = []
        for r in resources:
            item = r.to_json()
            info = self.kinds.find(r.kind)
            if info is not None and info.columns:
                item["columns"] = {h: get(r) for h, get in info.columns.items()}
            if r.key in statuses:
                item["status"] = statuses[r.key]
            out.append(item)
        return out

    async def _item(self, r: Resource) -> dict[str, Any]:
        return (await self._items([r]))[0]

    async def list_meshes(self, request: web.Request) -> web.Response:
        p = principal(request)
        items = [r for r in await self.ctx.store.list("Mesh") if p.mesh is None or r.name == p.mesh]
        return _json({"items": await self._items(items)})

    async def list_resources(self, request: web.Request) -> web.Response:
        mesh = request.match_info["mesh"]
        principal(request).check_read(mesh)
        info = self.kind(request.match_info["plural"])
        items, from_model = await self._listed(info.kind, mesh)
        if not from_model:
            return _json({"items": await self._items(items)})
        return web.Response(text=await self._encoded_items(info.kind, mesh, items), content_type="application/json")

    async def _encoded_items(self, kind: str, mesh: str, resources: Sequence[Resource]) -> str:
        """``_json({"items": await self._items(resources)})``'s text, byte for byte, with each
        resource's part remembered while the model holds the same resource object."""
        statuses = await self.ctx.dataplane_statuses([r for r in resources if r.kind == "Dataplane"])
        old = self._encoded.get((kind, mesh), {})
        new: dict[ResourceKey, tuple[Resource, str]] = {}
        parts = []
        for r in resources:
            key = r.key  # a new ResourceKey each time it is read
            held = old.get(key)
            if held is None or held[0] is not r:
                item = r.to_json()
                info = self.kinds.find(r.kind)
                if info is not None and info.columns:
                    item["columns"] = {h: get(r) for h, get in info.columns.items()}
                held = (r, _COMPACT.encode(item))
            new[key] = held
            status = statuses.get(key)
            parts.append(held[1] if status is None else f'{held[1][:-1]},"status":{_COMPACT.encode(status)}}}')
        self._encoded[(kind, mesh)] = new
        return '{"items":[' + ",".join(parts) + "]}"

    async def _listed(self, kind: str, mesh: str) -> tuple[list[Resource], bool]:
        """``store.list(kind, mesh)``, from the read model (then True) when it holds exactly
        that: it is at the store's revision and sorts as the store does (a dashboard lists every
        dataplane every 2 s; decoding 400 rows from the store costs ~15 ms of CPU, the model
        nothing)."""
        store, model = self.ctx.store, self.ctx.reconciler.model
        if store.lists_in_code_point_order and model.revision >= await store.revision():
            if model.mesh(mesh) is None:
                await self._mesh_exists(mesh)  # raises the store's NotFound
            return sorted(model.of_kind(mesh, kind), key=lambda r: r.name), True
        await self._mesh_exists(mesh)
        return await store.list(kind, mesh), False

    async def get_resource(self, request: web.Request) -> web.Response:
        key = self._key(request)
        principal(request).check_read(key.mesh or key.name)
        return _json(await self._item(await self.ctx.store.get(key)))

    def _key(self, request: web.Request) -> ResourceKey:
        if "plural" not in request.match_info:
            return ResourceKey("Mesh", "", request.match_info["mesh"])
        info = self.kind(request.match_info["plural"])
        return ResourceKey(info.kind, request.match_info["mesh"], request.match_info["name"])

    async def _mesh_exists(self, mesh: str, pending: set[str] | None = None) -> None:
        if pending and mesh in pending:
            return
        try:
            await self.ctx.store.get(ResourceKey("Mesh", "", mesh))
        except NotFound:
            raise NotFound(
                f"mesh '{mesh}' does not exist; create it first (kind: Mesh, name: {mesh})"
            ) from None

    async def _write(self, res: Resource, p: Principal, expected: int | None,
                     pending: Sequence[Resource] = ()) -> tuple[Resource, bool]:
        services = res.spec.services() if isinstance(res.spec, DataplaneSpec) else None
        p.check_write(res.mesh or None, res.kind, services, res.name)
        if res.mesh:
            await self._mesh_exists(res.mesh)
        await self.ctx.validate_in_context(res, pending)
        try:
            prior = await self.ctx.store.get(res.key)
        except NotFound:
            prior = None
        if prior is not None and isinstance(prior.spec, DataplaneSpec):
            # a dataplane token may replace only a dataplane of its own service
            p.check_write(res.mesh or None, res.kind, prior.spec.services(), res.name)
        res = self.ctx.store.stamped(self.ctx.for_storage(res, prior))  # e.g. a provided CA key sealed
        if prior is not None and (prior.spec, prior.labels) == (res.spec, res.labels) and expected in (None, prior.version):
            return prior, False  # unchanged: no new revision, no push
        vips = await new_services(self.ctx.store, [res])
        if vips:  # a new service gets its VIP in the same transaction
            try:
                stored = await self.ctx.store.put_all([(res, expected), *((v, 0) for v in vips)])
                return stored[0], prior is None
            except Conflict:
                pass  # another writer made the Service first: write the resource alone
        return await self.ctx.store.put(res, expected), prior is None

    async def put_resource(self, request: web.Request) -> web.Response:
        key = self._key(request)
        doc = await _body(request)
        if isinstance(doc, dict):
            doc.setdefault("kind", key.kind)
            doc.setdefault("name", key.name)
            if key.mesh:
                doc.setdefault("mesh", key.mesh)
        res = self.kinds.decode(doc)
        if res.key != key:
            raise ValidationError(
                [FieldProblem("", f"the body describes {res.key}, but the URL names {key}")]
            )
        stored, created = await self._write(res, principal(request), if_match(request))
        return _json(await self._item(stored), status=201 if created else 200)

    async def delete_resource(self, request: web.Request) -> web.Response:
        key = self._key(request)
        p = principal(request)
        current = await self.ctx.store.get(key)
        services = current.spec.services() if isinstance(current.spec, DataplaneSpec) else None
        p.check_write(key.mesh or None, key.kind, services, key.name)
        if key.kind == "Mesh":
            inside = [r for r in await self.ctx.store.list(mesh=key.name)]
            if inside:
                raise Conflict(
                    f"mesh '{key.name}' still has {len(inside)} resources; delete them first"
                    f" (e.g. {inside[0].key})"
                )
        await self.ctx.store.delete(key, if_match(request))
        return _json({"deleted": str(key)})

    async def apply(self, request: web.Request) -> web.Response:
        """Validate every document first, then write them all in one store transaction: all
        or nothing, also when the control plane dies halfway or the client goes away. With
        ``?dryRun=true`` nothing is written: the answer says what would be, and which dataplanes'
        configs would change (controlplane.preview)."""
        limits = self.ctx.apply_limits
        body = await json_body(request, limits.bytes, "apply")
        docs = body.get("resources") if isinstance(body, dict) else None
        if not isinstance(docs, list):
            raise ValidationError([FieldProblem("resources", "must be a list of resources")])
        if len(docs) > limits.documents:
            raise TooLarge(
                f"this apply has {len(docs)} documents; one apply takes at most {limits.documents}"
                " (MESHLINE_APPLY_MAX_DOCUMENTS): split it into several applies"
            )
        p = principal(request)
        decoded = await self._decode_all(request, docs)
        for r in decoded:  # refuse before writing anything, not halfway through
            services = r.spec.services() if isinstance(r.spec, DataplaneSpec) else None
            p.check_write(r.mesh or None, r.kind, services, r.name)
        results: list[dict[str, Any]] = []
        writes: list[tuple[Resource, int | None]] = []
        slices = Slices()
        for r in sorted(decoded, key=lambda r: r.kind != "Mesh"):
            prior = await self._prior(r.key)
            if prior is not None and isinstance(prior.spec, DataplaneSpec):
                p.check_write(r.mesh or None, r.kind, prior.spec.services(), r.name)
            res = self.ctx.store.stamped(self.ctx.for_storage(r, prior))
            if prior is not None and (prior.spec, prior.labels) == (res.spec, res.labels):
                results.append({"resource": str(r.key), "result": "configured", "version": prior.version})
            else:  # the version read must still be there at the write (0: must not exist yet)
                writes.append((res, prior.version if prior else 0))
                results.append({"resource": str(r.key), "result": "configured" if prior else "created"})
            await slices.tick()
            if _client_gone(request):
                raise ClientGone("the client went away before the apply was written; nothing was applied")
        if _dry_run(request):  # everything checked as for a real apply; nothing written
            affected = await preview(self.ctx.reconciler, [w for w, _ in writes])
            for r, item in zip(sorted(decoded, key=lambda r: r.kind != "Mesh"), results, strict=True):
                item["changed"] = any(w.key == r.key for w, _ in writes)
                warnings = self._unknown_services(r, decoded)
                if warnings:
                    item["warnings"] = warnings
            return _json({"dryRun": True, "items": results, "affected": affected})
        if len(writes) >= 100:
            log.info("apply: writing %d resources in one transaction", len(writes))
        vips = await new_services(self.ctx.store, [w for w, _ in writes])
        vips = [v for v in vips if all(w.key != v.key for w, _ in writes)]  # a Service applied wins
        try:
            try:
                stored = await self.ctx.store.put_all([*writes, *((v, 0) for v in vips)],
                                                      abandoned=lambda: _client_gone(request))  # fmt: skip
            except Conflict:
                if not vips:
                    raise
                stored = await self.ctx.store.put_all(writes, abandoned=lambda: _client_gone(request))
            stored = stored[: len(writes)]
        except (Conflict, NotFound) as err:
            raise Conflict(f"{err}; nothing was applied (another write came in between): apply again") from None
        versions = {str(s.key): s.version for s in stored}
        for item in results:
            item.setdefault("version", versions.get(item["resource"]))
        for r, item in zip(sorted(decoded, key=lambda r: r.kind != "Mesh"), results, strict=True):
            warnings = self._unknown_services(r, decoded)  # applied anyway: deploy order must not matter
            if warnings:
                item["warnings"] = warnings
        return _json({"items": results})

    async def _prior(self, key: ResourceKey) -> Resource | None:
        try:
            return await self.ctx.store.get(key)
        except NotFound:
            return None

    async def _decode_all(self, request: web.Request, docs: list[Any]) -> list[Resource]:
        """Every document decoded and checked (alone and against the others); a
        ValidationError listing every problem, with where it is, if any has one."""
        decoded: list[Resource] = []
        problems: list[FieldProblem] = []
        slices = Slices()
        for i, doc in enumerate(docs):
            try:
                for res in self.ctx.translate(doc):
                    decoded.append(res)
            except ValidationError as err:
                where = f"document {i + 1}"
                name = doc.get("name") if isinstance(doc, dict) else None
                kind = doc.get("kind") if isinstance(doc, dict) else None
                label = " ".join(str(x) for x in (kind if isinstance(kind, str) and kind else None, name) if x)
                if isinstance(name, str):
                    where += f" ({label})"
                problems.extend(
                    FieldProblem(f"{where}: {pr.path}" if pr.path else where, pr.message)
                    for pr in err.problems
                )
            await slices.tick()
        dupes = {k for k, n in Counter(r.key for r in decoded).items() if n > 1}
        for k in sorted(dupes):
            problems.append(FieldProblem(str(k), "appears more than once in this apply; keep one"))
        new_meshes = {r.name for r in decoded if r.kind == "Mesh"}
        for r in decoded:
            if r.mesh and r.mesh not in new_meshes:
                try:
                    await self._mesh_exists(r.mesh)
                except NotFound as err:
                    problems.append(FieldProblem(str(r.key), str(err)))
            try:
                await self.ctx.validate_in_context(r, pending=decoded)
            except ValidationError as err:
                problems.extend(FieldProblem(f"{r.key}: {pr.path}", pr.message) for pr in err.problems)
            await slices.tick()
            if _client_gone(request):
                raise ClientGone("the client went away during validation; nothing was applied")
        if problems:
            raise ValidationError(problems, context="nothing was applied")
        return decoded

    def _unknown_services(self, r: Resource, pending: Sequence[Resource] = ()) -> list[str]:
        known = known_services([*self.ctx.model.resources(r.mesh).values(),
                                *(x for x in pending if x.mesh == r.mesh)])  # fmt: skip
        return warnings_for(r, known)

    async def inspect_dataplane(self, request: web.Request) -> web.Response:
        mesh, name = request.match_info["mesh"], request.match_info["name"]
        principal(request).check_read(mesh)
        res = await self.ctx.store.get(ResourceKey("Dataplane", mesh, name))
        node = names.node_id(mesh, name)
        result = self.ctx.results.get(node)
        config: dict[str, list[dict[str, Any]]] = {}

        @functools.cache
        def known() -> set[str]:
            live = self.ctx.model.resources(mesh).values()
            return known_services(live) | {r.name for r in live if r.kind == "Service"}

        if result is not None and request.query.get("config", "1") != "0":
            for type_url, slot in result.snapshot.slots.items():
                short = type_url.rsplit(".", 1)[-1]
                config[short] = [
                    json_format.MessageToDict(p.any, preserving_proto_field_name=False)
                    for p in slot.resources.values()
                ]
        return _json(
            {
                "dataplane": await self._item(res),
                "renderError": self.ctx.results.error(node),
                "versions": result.snapshot.versions() if result else {},
                "policies": [{**a.to_json(), **section_json(a.section, res, known)} for a in result.applied]
                if result else [],
                "warnings": self._policy_warnings(mesh, result.applied if result else []),
                "config": config,
                "vips": self._vips(mesh, res),
            }
        )

    def _vips(self, mesh: str, dataplane: Resource) -> dict[str, str]:
        """The virtual IPs of this dataplane's own services (what `orders.mesh` resolves to)."""
        live = self.ctx.model.resources(mesh)
        spec = dataplane.spec
        services = spec.services() if isinstance(spec, DataplaneSpec) else []
        out = {}
        for service in services:
            record = live.get(ResourceKey("Service", mesh, service))
            if record is not None and isinstance(record.spec, ServiceSpec):
                out[service] = record.spec.vip
        return out

    def _policy_warnings(self, mesh: str, applied: Sequence[Any]) -> list[str]:
        """The unknown services named by the policies that apply to a dataplane."""
        live = self.ctx.model.resources(mesh)
        out: list[str] = []
        for a in applied:
            data = a.to_json()
            res = live.get(ResourceKey(data["kind"], mesh, data["name"]))
            if res is None:
                continue
            for w in self._unknown_services(res):
                line = f"{res.kind} {res.name}: {w}"
                if line not in out:
                    out.append(line)
        return out

    async def removal_status(self, request: web.Request) -> web.Response:
        """What a stopping agent (and `meshline drain`) polls after deregistering: whether every
        caller's sidecar has ACKed a configuration that no longer sends to ``address:port``."""
        mesh, name = request.match_info["mesh"], request.match_info["name"]
        q = request.query
        problems = [FieldProblem(f, "is required (the instance's service, address and inbound port)")
                    for f in ("service", "address", "port") if not q.get(f)]  # fmt: skip
        port = q.get("port", "")
        if port and (not port.isdigit() or not 0 < int(port) < 65536):
            problems.append(FieldProblem("port", "must be a port number (1-65535)"))
        if problems:
            raise ValidationError(problems, context="cannot check the removal")
        service = q["service"]
        p = principal(request)
        p.check_read(mesh)
        if (p.dataplane is not None and p.dataplane != name) or (p.service is not None and p.service != service):
            raise Forbidden(f"dataplane token '{p.name}' may only ask about its own dataplane")
        dataplanes = sorted(self.ctx.model.of_kind(mesh, "Dataplane"), key=lambda r: r.name)
        statuses = await self.ctx.dataplane_statuses(dataplanes)
        peers = [Peer(r.name, self.ctx.results.get(names.node_id(mesh, r.name)), statuses[r.key]) for r in dataplanes]
        report = removal_report(peers, name, service, q["address"], int(port))
        report["registered"] = any(r.name == name for r in dataplanes)
        return _json(report)

    async def sync_status(self, request: web.Request) -> web.Response:
        """What `meshline apply --wait` polls: how far rendering got, and per dataplane the
        versions it should run and what its sidecar has ACKed."""
        mesh = request.match_info["mesh"]
        principal(request).check_read(mesh)
        rec = self.ctx.reconciler
        items = []
        dataplanes = sorted(self.ctx.model.of_kind(mesh, "Dataplane"), key=lambda r: r.name)
        statuses = await self.ctx.dataplane_statuses(dataplanes)  # ACKs seen by any replica
        for r in dataplanes:
            node = names.node_id(mesh, r.name)
            result = self.ctx.results.get(node)
            st = statuses[r.key]
            items.append({
                "name": r.name,
                "versions": result.snapshot.versions_to_ack() if result else {},
                "acked": {t: v["acked"] for t, v in st.get("types", {}).items()},
                "state": st.get("state"),
                "lastNack": st.get("lastNack"),
                "renderError": st.get("renderError"),
            })  # fmt: skip
        return _json({"revision": rec.revision, "settledRevision": rec.settled_revision, "dataplanes": items})

    async def openapi(self, request: web.Request) -> web.Response:
        routes: list[Route] = request.app[ROUTES]
        return _json(openapi_document(self.kinds, routes))


def build_app(
    ctx: ControlPlaneContext,
    auth: Authenticator | None = None,
    routes: Sequence[Route] = (),
    middlewares: Sequence[Middleware] = (),
) -> web.Application:
    """The API app. ``routes`` (subsystems' routes) are added before the generic
    ``/meshes/{mesh}/{plural}`` routes, because aiohttp matches in registration order, and
    documented in /openapi.json; ``middlewares`` run inside authentication."""
    app = web.Application(
        middlewares=[errors_middleware, version_middleware, make_auth_middleware(auth or AllowAll()), *middlewares],
        client_max_size=8 * 1024 * 1024,
    )
    app[CTX] = ctx
    app[ROUTES] = list(routes)
    api = Api(ctx)
    r = app.router
    r.add_get("/api/v1/health", api.health)
    r.add_get("/api/v1/kinds", api.list_kinds)
    r.add_post("/api/v1/apply", api.apply)
    r.add_get("/api/v1/meshes", api.list_meshes)
    r.add_get("/api/v1/meshes/{mesh}", api.get_resource)
    r.add_put("/api/v1/meshes/{mesh}", api.put_resource)
    r.add_delete("/api/v1/meshes/{mesh}", api.delete_resource)
    r.add_get("/api/v1/meshes/{mesh}/dataplanes/{name}/inspect", api.inspect_dataplane)
    r.add_get("/api/v1/meshes/{mesh}/sync", api.sync_status)
    r.add_get("/api/v1/meshes/{mesh}/dataplanes/{name}/removal", api.removal_status)
    for route in routes:
        r.add_route(route.method, route.path, route.handler)
    r.add_get("/api/v1/meshes/{mesh}/{plural}", api.list_resources)
    r.add_get("/api/v1/meshes/{mesh}/{plural}/{name}", api.get_resource)
    r.add_put("/api/v1/meshes/{mesh}/{plural}/{name}", api.put_resource)
    r.add_delete("/api/v1/meshes/{mesh}/{plural}/{name}", api.delete_resource)
    r.add_get("/openapi.json", api.openapi)
    return app
