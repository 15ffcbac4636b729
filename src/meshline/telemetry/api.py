"""REST routes of the telemetry intake:

* ``GET /api/v1/meshes/{mesh}/stats?window=1m|5m&service=&paths=N``: golden signals of
  services and edges (and the N busiest paths);
* ``GET /api/v1/meshes/{mesh}/tap?service=&path=&status=&replay=N``: a live stream of
  requests as JSON lines (``application/x-ndjson``); the first line confirms the tap is on;
* ``GET /api/v1/meshes/{mesh}/requests/{id}``: both halves of one request (by x-request-id,
  or every entry of a trace id) with the explanation;
* ``POST /api/v1/meshes/{mesh}/dataplanes/{name}/signals``: what a dataplane's agent reports
  of its Envoy's request counters (:mod:`.signals`), with the dataplane's own token.

Registered through ``Extensions.routes``, ahead of the API's generic resource routes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from meshline.api.routes import WHOLE_NUMBER, Route, query_param
from meshline.api.server import principal
from meshline.core.errors import FieldProblem, NotFound, ValidationError
from meshline.core.slices import Slices
from meshline.telemetry import signals
from meshline.telemetry.explain import explain_request
from meshline.telemetry.intake import EncodedRow, TapFilter, TelemetryIntake
from meshline.telemetry.record import LogRecord

KEEPALIVE_S = 10.0
MAX_REPLAY = 1000
# A tap with no request to show for this long ends (``idle=`` asks for less or more, up to
# MAX_IDLE_S): a forgotten tap does not hold a connection and a subscription forever.
IDLE_S = 300
MAX_IDLE_S = 3600



def _int(request: web.Request, name: str, default: int, high: int) -> int:
    raw = request.query.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) > high:
        raise ValidationError([FieldProblem(name, f"must be a whole number from 0 to {high}")])
    return int(raw)


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


async def _dumps_in_slices(data: dict[str, Any]) -> bytes:
    """:func:`_dumps` of a dict whose lists may be long (stats rows), a row at a time with the
    loop given back every few milliseconds."""
    slices = Slices()
    parts = []
    for key, value in data.items():
        if not isinstance(value, list):
            parts.append(f"{json.dumps(key)}:{json.dumps(value, separators=(',', ':'))}")
            continue
        rows = []
        for row in value:
            rows.append(row.json if isinstance(row, EncodedRow) else json.dumps(row, separators=(",", ":")))
            await slices.tick()
        parts.append(f"{json.dumps(key)}:[{','.join(rows)}]")
    return ("{" + ",".join(parts) + "}\n").encode()


# (mesh, dataplane) -> the services it serves (None: no such registered dataplane)
ServicesOf = Callable[[str, str], frozenset[str] | None]
NOT_ITS_SERVICE = "not-its-service"  # the access-log service's reason (telemetry.als)


class TelemetryApi:
    def __init__(self, intake: TelemetryIntake, mesh_exists: Callable[[str], bool] = lambda _: True,
                 services_of: ServicesOf = lambda mesh, dataplane: None) -> None:
        self.intake = intake
        self.mesh_exists = mesh_exists
        self.services_of = services_of

    def _check_mesh(self, mesh: str) -> None:
        if not self.mesh_exists(mesh):
            raise NotFound(f"mesh '{mesh}' does not exist; `meshline get meshes` lists what exists")

    async def stats(self, request: web.Request, mesh: str) -> web.StreamResponse:
        data = await self.intake.stats(
            mesh,
            window=request.query.get("window", "1m"),
            service=request.query.get("service", ""),
            paths=_int(request, "paths", 0, 1000),
        )
        return web.Response(body=await _dumps_in_slices(data), content_type="application/json")

    async def tap(self, request: web.Request, mesh: str) -> web.StreamResponse:
        flt = TapFilter(
            service=request.query.get("service", ""),
            path=request.query.get("path", ""),
            status=request.query.get("status", ""),
        )
        replay = _int(request, "replay", 0, MAX_REPLAY)
        idle = _int(request, "idle", IDLE_S, MAX_IDLE_S) or IDLE_S
        sub = self.intake.subscribe(mesh, flt)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
        try:
            # The sidecars of the tapped service stream every entry before the tap says it is on.
            await self.intake.watch_taps(mesh)
            await resp.prepare(request)
            await resp.write(_dumps({"tap": {"mesh": mesh, "service": flt.service, "path": flt.path,
                                              "status": flt.status}}))
            # A replayed failure may still wait for its callee's half (the intake holds it up to
            # its join window) and be published again then: show it once, now, not again later.
            replayed = set()
            for r in self.intake.recent(mesh, flt, replay):
                replayed.add(_entry_key(r))
                await resp.write(_dumps(r.to_json()))
            last_write = last_item = time.monotonic()
            while True:
                try:
                    item = await asyncio.wait_for(sub.queue.get(), 1.0)
                except TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        break  # the client went away
                    if time.monotonic() - last_item >= idle:
                        await resp.write(_dumps({"end": f"no request for {idle}s; tap again to go on"}))
                        break
                    if time.monotonic() - last_write >= KEEPALIVE_S:
                        await resp.write(b"\n")  # keeps proxies from closing an idle stream
                        last_write = time.monotonic()
                    continue
                if item is None:
                    break  # the control plane is stopping
                if replayed and _entry_key(item) in replayed:
                    replayed.discard(_entry_key(item))
                    continue
                await resp.write(_dumps(item.to_json()))
                last_write = last_item = time.monotonic()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.intake.unsubscribe(sub)
            self.intake.rewatch_later(mesh)  # back to failures and sampled successes
        return resp

    async def request(self, request: web.Request, mesh: str, request_id: str) -> web.StreamResponse:
        records = self.intake.request(mesh, request_id)
        if not records:
            kept = self.intake.limits.records
            raise NotFound(
                f"no request '{request_id}' among the last {kept} entries of mesh '{mesh}';"
                " find ids with `meshline tap` (entries are kept in the control plane's memory only)"
            )
        data = {"requestId": request_id, "explanation": explain_request(records),
                "records": [r.to_json() for r in records]}
        return web.Response(body=_dumps(data), content_type="application/json")

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        mesh = request.match_info["mesh"]
        principal(request).check_read(mesh)
        self._check_mesh(mesh)
        return await self.stats(request, mesh)

    async def _tap(self, request: web.Request) -> web.StreamResponse:
        mesh = request.match_info["mesh"]
        principal(request).check_read(mesh)
        self._check_mesh(mesh)
        return await self.tap(request, mesh)

    async def _request(self, request: web.Request) -> web.StreamResponse:
        mesh = request.match_info["mesh"]
        principal(request).check_read(mesh)
        self._check_mesh(mesh)
        return await self.request(request, mesh, request.match_info["id"])

    async def _signals(self, request: web.Request) -> web.StreamResponse:
        """A dataplane's counted requests since its last accepted post (see :mod:`.signals`)."""
        mesh, name = request.match_info["mesh"], request.match_info["name"]
        p = principal(request)
        p.check_read(mesh)
        self._check_mesh(mesh)
        services = self.services_of(mesh, name)
        # An agent deregisters before Envoy drains, and reports what Envoy counted last after
        # that: a dataplane token then speaks for its service, as it did while registered.
        p.check_write(mesh, "Dataplane", spec_services=sorted(services) if services is not None else None, name=name)
        if services is None and p.service is not None:
            services = frozenset({p.service})
        try:
            body = await request.json()
        except ValueError:
            raise ValidationError([FieldProblem("body", "must be JSON: {\"rows\": [...]}")]) from None
        rows = signals.rows_from_json(body)
        through = body.get("through") if isinstance(body, dict) else None
        if not isinstance(through, int | float) or isinstance(through, bool) or not 0 < through < 1e11:
            raise ValidationError([FieldProblem("through", "must be the Unix time the counters were read")])
        own = [r for r in rows if services is None or set(r.own_service.split(",")) <= services]
        if len(own) < len(rows):  # about another service's side: refused, like its access-log entries
            self.intake.note_dropped(mesh, NOT_ITS_SERVICE, sum(r.count for r in rows) - sum(r.count for r in own))
        self.intake.ingest_signals(mesh, own, dataplane=name, through=float(through))
        return web.Response(body=_dumps({"accepted": len(own)}), content_type="application/json")

    def routes(self) -> list[Route]:
        text = {"type": "string"}
        return [
            Route("GET", "/api/v1/meshes/{mesh}/stats", self._stats,
                  "Golden signals per service and edge over recent windows",
                  query=(query_param("window", {"enum": ["1m", "5m"]}), query_param("service", text),
                         query_param("paths", WHOLE_NUMBER)), codes=(404, 422)),
            Route("GET", "/api/v1/meshes/{mesh}/tap", self._tap,
                  f"Live requests as JSON lines, failures explained; ends after `idle` seconds (default {IDLE_S})"
                  " without one",
                  query=(query_param("service", text), query_param("path", text), query_param("status", text),
                         query_param("replay", WHOLE_NUMBER),
                         query_param("idle", WHOLE_NUMBER,
                                     f"seconds without a request before the tap ends (at most {MAX_IDLE_S})")),
                  codes=(404, 422)),
            Route("GET", "/api/v1/meshes/{mesh}/requests/{id}", self._request,
                  "One recent request (both halves) with its explanation", codes=(404,)),
            Route("POST", "/api/v1/meshes/{mesh}/dataplanes/{name}/signals", self._signals,
                  "A dataplane agent's report of its sidecar's request counters (the golden signals)",
                  body={"type": "object", "properties": {"rows": {"type": "array", "items": {"type": "object"}}}},
                  codes=(403, 404, 422)),
        ]  # fmt: skip


def _entry_key(r: LogRecord) -> tuple[str, str, str, float, str]:
    """One access-log entry, also when published as a copy with a longer explanation."""
    return (r.dataplane, r.direction, r.request_id, r.time, r.path)
