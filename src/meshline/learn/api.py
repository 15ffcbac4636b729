"""REST routes of learning from traffic:

* ``GET /api/v1/meshes/{mesh}/permissions/suggest?since=1h&l7=&mode=&includeDenied=&collapseAt=``:
  TrafficPermissions allowing exactly the observed edges, as YAML with comments (and as JSON);
* ``GET /api/v1/meshes/{mesh}/permissions/report?since=1h``: requests refused, or that a dry-run
  permission would have refused, per policy, caller, callee, method and path;
* ``GET /api/v1/meshes/{mesh}/record?service=&version=&duration=&sample=&maxBody=&redact=&max=``:
  writes a TrafficRecording for the time of the stream, streams each captured request as a JSON
  line (the first line confirms the recording is on) and deletes the recording when the stream
  ends, however it ends. Needs write rights (it changes what sidecars do); subscribed to the
  telemetry intake the way a tap is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

import pydantic
from aiohttp import web

from meshline.api.routes import WHOLE_NUMBER, Route, query_param
from meshline.api.server import principal
from meshline.controlplane.context import ControlPlaneContext
from meshline.core.errors import FieldProblem, NotFound, Unavailable, ValidationError
from meshline.core.resource import Resource, ResourceKey
from meshline.core.schema import parse_duration
from meshline.core.selectors import TagSelector
from meshline.learn.recording import DEFAULT_MAX_BODY, KIND, TrafficRecordingSpec
from meshline.learn.suggest import Edge, SeenPath, suggest, to_yaml
from meshline.telemetry.intake import Subscription, TapFilter, TelemetryIntake

MAX_SINCE_S = 3600  # the per-edge signals keep an hour (telemetry.series)
MAX_RECORD_S = 3600
MAX_RECORDED = 100_000
GRACE_S = 30  # a recording outlives its stream by at most this (the janitor's margin)
QUERY_OF = {"samplePercent": "sample", "maxBodyBytes": "maxBody", "redactHeaders": "redact",
            "destinations": "service"}  # spec field -> the query parameter that set it


class Running(Protocol):
    def __call__(self) -> ControlPlaneContext: ...


def _since(request: web.Request, default: str = "1h") -> int:
    raw = request.query.get("since", "") or default
    try:
        seconds = parse_duration(raw).total_seconds()
    except ValueError as err:
        raise ValidationError([FieldProblem("since", str(err))]) from None
    if not 1 <= seconds <= MAX_SINCE_S:
        raise ValidationError([FieldProblem(
            "since", f"must be from 1s to 1h: the control plane keeps the last hour of per-edge signals (got {raw})")])
    return int(seconds)


def _span(seconds: int) -> str:
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes", "on")


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


class LearnApi:
    def __init__(self, running: Running, intake: Callable[[], TelemetryIntake | None]) -> None:
        self.running = running
        self.intake = intake

    def _telemetry(self, mesh: str, read: web.Request, write: bool = False) -> TelemetryIntake:
        ctx = self.running()
        who = principal(read)
        if write:
            who.check_write(mesh, KIND.kind)
        else:
            who.check_read(mesh)
        if ctx.model.mesh(mesh) is None:
            raise NotFound(f"mesh '{mesh}' does not exist; `meshline get meshes` lists what exists")
        intake = self.intake()
        if intake is None:
            raise Unavailable("telemetry is not running on this control plane")
        return intake

    async def _suggest(self, request: web.Request) -> web.StreamResponse:
        mesh = request.match_info["mesh"]
        intake = self._telemetry(mesh, request)
        await intake.settled(mesh, timeout=5.0)  # the sidecars' counters include the requests their entries showed
        since = _since(request)
        mode = request.query.get("mode", "") or "enforce"
        if mode not in ("enforce", "dry-run"):
            raise ValidationError([FieldProblem("mode", f"'{mode}' must be enforce or dry-run")])
        raw_collapse = request.query.get("collapseAt", "") or "3"
        if not raw_collapse.isdigit() or not 2 <= int(raw_collapse) <= 1000:
            raise ValidationError([FieldProblem("collapseAt", "must be a whole number from 2 to 1000")])
        only = {tuple(p.split("->", 1)) for p in request.query.get("only", "").replace(" ", "").split(",") if p}
        if any(len(p) != 2 for p in only):
            raise ValidationError([FieldProblem("only", "edges as CALLER->SERVICE, comma-separated (e.g. web->orders)")])
        edges = [Edge(e["source"], e["destination"], e["requests"], e["denied"], e["lastSeen"], e["protocol"])
                 for e in intake.observed_edges(mesh, since)
                 if not only or (e["source"], e["destination"]) in only]
        paths = None
        if _flag(request, "l7"):
            paths = {(e.source, e.destination): [SeenPath(p["method"], p["path"], p["prefix"], p["requests"],
                                                          p["lastSeen"])
                                                 for p in intake.observed_paths(mesh, (e.source, e.destination), since)]
                     for e in edges}
            if _flag(request, "includeDenied"):  # what was refused is not among the paths seen: add it
                for d in intake.denied(mesh, since):
                    if d["mode"] == "enforced" and (d["source"], d["destination"]) in paths:
                        paths[(d["source"], d["destination"])].append(
                            SeenPath(d["method"], d["path"], False, d["requests"], d["lastSeen"]))
        s = suggest(mesh, edges, paths, mode=mode, collapse_at=int(raw_collapse),
                    include_denied=_flag(request, "includeDenied"), deny_rest=not only)
        header = [f"TrafficPermissions learned from the traffic of mesh {mesh} in the last {_span(since)}"
                  f" ({sum(e.requests for e in edges)} requests on {len(edges)} edges)."
                  " Review, then `meshline apply -f` this file."]
        if mode == "dry-run":
            header.append("mode dry-run: nothing is refused; `meshline permissions report` shows what would be.")
        body = {"mesh": mesh, "since": since, "yaml": to_yaml(s, header), "documents": s.docs, "skipped": s.skipped}
        return web.Response(body=_dumps(body), content_type="application/json")

    async def _report(self, request: web.Request) -> web.StreamResponse:
        mesh = request.match_info["mesh"]
        intake = self._telemetry(mesh, request)
        since = _since(request)
        rows = intake.denied(mesh, since)
        return web.Response(body=_dumps({"mesh": mesh, "since": since, "denials": rows}),
                            content_type="application/json")

    async def _record(self, request: web.Request) -> web.StreamResponse:
        mesh = request.match_info["mesh"]
        intake = self._telemetry(mesh, request, write=True)
        ctx = self.running()
        q = request.query
        service = q.get("service", "")
        if not service:
            raise ValidationError([FieldProblem("service", "name the service to record, e.g. service=orders")])
        try:
            duration = parse_duration(q.get("duration", "") or "60s").total_seconds()
        except ValueError as err:
            raise ValidationError([FieldProblem("duration", str(err))]) from None
        if not 0 < duration <= MAX_RECORD_S:
            raise ValidationError([FieldProblem("duration", "must be more than 0 and at most 1h")])
        limit = int(q["max"]) if q.get("max", "").isdigit() else 0
        if limit > MAX_RECORDED:
            raise ValidationError([FieldProblem("max", f"at most {MAX_RECORDED}")])
        match = {"service": service, **({"version": q["version"]} if q.get("version") else {})}
        try:
            spec = TrafficRecordingSpec(
                destinations=[TagSelector(match=match)],
                samplePercent=float(q.get("sample", "") or 100),
                maxBodyBytes=int(q.get("maxBody", "") or DEFAULT_MAX_BODY),
                redactHeaders=[h for h in q.get("redact", "").split(",") if h.strip()],
                until=time.time() + duration + GRACE_S,
            )
        except pydantic.ValidationError as err:
            raise ValidationError([FieldProblem(QUERY_OF.get(str(e["loc"][0]) if e["loc"] else "", ""), e["msg"])
                                   for e in err.errors()]) from None
        except ValueError as err:
            raise ValidationError([FieldProblem("sample", f"{err}: sample and maxBody are numbers")]) from None
        # a name of its own even when two recorders of one service start in the same millisecond
        name = f"record-{service}-{int(time.time() * 1000)}-{secrets.token_hex(2)}"
        res = Resource(kind=KIND.kind, mesh=mesh, name=name, spec=spec, labels=dict(ctx.store.stamp_labels))
        sub = intake.subscribe(mesh, TapFilter(service=service, captures=True, version=q.get("version", "")))
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
        try:
            await ctx.validate_in_context(res)
            await ctx.store.put(res)
            await resp.prepare(request)
            await resp.write(_dumps({"recording": {"mesh": mesh, "name": name, "service": service,
                                                   "version": q.get("version", ""), "duration": duration,
                                                   "redacted": list(spec.redacted()),
                                                   "samplePercent": spec.samplePercent,
                                                   "maxBodyBytes": spec.maxBodyBytes}}))
            await self._stream(request, resp, sub, time.monotonic() + duration, limit)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            intake.unsubscribe(sub)
            with contextlib.suppress(NotFound):
                await ctx.store.delete(ResourceKey(KIND.kind, mesh, name))
        return resp

    async def _stream(self, request: web.Request, resp: web.StreamResponse, sub: Subscription,
                      deadline: float, limit: int) -> None:
        queue, sent = sub.queue, 0
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = await asyncio.wait_for(queue.get(), min(1.0, left))
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    return
                await resp.write(b"\n")  # keeps the stream alive while nothing is recorded
                continue
            if item is None:
                return
            await resp.write(_dumps(item.to_json()))
            sent += 1
            if limit and sent >= limit:
                break
        lost = f"; {sub.dropped} more missed: the recorder read too slowly" if sub.dropped else ""
        await resp.write(_dumps({"end": f"recorded {sent} request(s){lost}", "dropped": sub.dropped}))

    def routes(self) -> list[Route]:
        text = {"type": "string"}
        since = query_param("since", text, "how far back, e.g. 10m (at most 1h)")
        return [
            Route("GET", "/api/v1/meshes/{mesh}/permissions/suggest", self._suggest,
                  "TrafficPermissions that allow exactly the service-to-service traffic observed",
                  query=(since, query_param("l7", text, "true: methods and path prefixes per edge"),
                         query_param("mode", {"enum": ["enforce", "dry-run"]}),
                         query_param("includeDenied", text, "true: also edges whose requests were all refused"),
                         query_param("collapseAt", WHOLE_NUMBER, "siblings that collapse into their prefix"),
                         query_param("only", text, "only these edges, CALLER->SERVICE comma-separated; no deny of the rest")),
                  codes=(404, 422)),
            Route("GET", "/api/v1/meshes/{mesh}/permissions/report", self._report,
                  "Requests refused, or that dry-run TrafficPermissions would refuse, per policy and caller",
                  query=(since,), codes=(404, 422)),
            Route("GET", "/api/v1/meshes/{mesh}/record", self._record,
                  "Record a service's requests and answers (headers, bodies) as JSON lines for a while",
                  query=(query_param("service", text), query_param("version", text),
                         query_param("duration", text, "e.g. 60s (at most 1h)"),
                         query_param("sample", text, "percent of requests, default 100"),
                         query_param("maxBody", text, f"bytes kept per body, default {DEFAULT_MAX_BODY}"),
                         query_param("redact", text, "more headers to redact, comma-separated"),
                         query_param("max", text, "stop after this many requests")),
                  codes=(404, 409, 422)),
        ]  # fmt: skip
