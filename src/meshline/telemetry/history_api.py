"""REST routes of what the intake remembers over time, for the dashboard's service page:

* ``GET /api/v1/meshes/{mesh}/services/{service}/series?span=5m|15m|1h``: the service's
  golden signals in 10 s buckets (:mod:`.series`), per version and per edge in and out;
* ``GET /api/v1/meshes/{mesh}/failures?service=&limit=N``: its recent failed requests
  (newest first) with their explanation, from the records ``explain`` and the tap read;
* ``GET /api/v1/meshes/{mesh}/dataplanes/{name}/requests?limit=N``: the recent requests a
  dataplane's sidecar sent, and those its callers' sidecars sent to it (newest first); asking
  makes its service watched for a while, like a tap, so successes show beside the failures.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from meshline.api.routes import WHOLE_NUMBER, Route, query_param
from meshline.api.server import principal
from meshline.core.errors import FieldProblem, NotFound, ValidationError
from meshline.telemetry.intake import TapFilter, TelemetryIntake
from meshline.telemetry.record import is_counted
from meshline.telemetry.series import BUCKETS, SPANS, STEP_S

MAX_FAILURES = 200


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def json_response(data: Any) -> web.Response:
    return web.json_response(data, dumps=_dumps)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit") or "20"
    if not raw.isdigit() or not 0 < int(raw) <= MAX_FAILURES:
        raise ValidationError([FieldProblem("limit", f"must be a whole number from 1 to {MAX_FAILURES}")])
    return int(raw)


class HistoryApi:
    def __init__(
        self,
        intake: TelemetryIntake,
        mesh_exists: Callable[[str], bool] = lambda _: True,
        services_of: Callable[[str, str], frozenset[str] | None] = lambda _m, _d: None,
    ) -> None:
        self.intake = intake
        self.mesh_exists = mesh_exists
        self.services_of = services_of

    def _mesh(self, request: web.Request) -> str:
        mesh = request.match_info["mesh"]
        principal(request).check_read(mesh)
        if not self.mesh_exists(mesh):
            raise NotFound(f"mesh '{mesh}' does not exist; `meshline get meshes` lists what exists")
        return mesh

    async def series(self, request: web.Request) -> web.StreamResponse:
        mesh = self._mesh(request)
        span = request.query.get("span") or "15m"
        if span not in SPANS:
            raise ValidationError([FieldProblem("span", f"'{span}' is not a span; use {', '.join(SPANS)}")])
        now = self.intake.clock()
        seen = self.intake.meshes.get(mesh)  # reading never adds a mesh
        name = request.match_info["service"]
        data = (seen.series.service_json(name, now, SPANS[span]) if seen
                else {"service": "[]", "versions": "{}", "inbound": "{}", "outbound": "{}"})
        # {"mesh", "service": its points, "span", "stepSeconds", "keptSeconds", "at", "versions",
        # "inbound", "outbound"}, assembled from each bucket's remembered JSON
        head = {"mesh": mesh, "service": None, "span": span, "stepSeconds": STEP_S, "keptSeconds": STEP_S * BUCKETS,
                "at": now}
        parts = [f"{_dumps(k)}:{data['service'] if k == 'service' else _dumps(v)}" for k, v in head.items()]
        parts += [f'"{k}":{data[k]}' for k in ("versions", "inbound", "outbound")]
        return web.Response(text="{" + ",".join(parts) + "}", content_type="application/json")

    async def failures(self, request: web.Request) -> web.StreamResponse:
        mesh = self._mesh(request)
        flt = TapFilter(service=request.query.get("service", ""), status="failed,4xx")
        records = self.intake.recent(mesh, flt, _limit(request))
        return json_response({"mesh": mesh, "items": [r.to_json() for r in reversed(records)]})

    async def dataplane_requests(self, request: web.Request) -> web.StreamResponse:
        mesh = self._mesh(request)
        name = request.match_info["name"]
        limit = _limit(request)
        # while someone looks, its sidecar and its callers' stream every success (not a sample)
        self.intake.view(mesh, self.services_of(mesh, name) or ())
        seen = self.intake.meshes.get(mesh)
        newest = (r for r, _ in reversed(seen.recent) if is_counted(r)
                  and name in (r.dataplane, r.destination_instance)) if seen else iter(())
        return json_response({"mesh": mesh, "dataplane": name,
                              "items": [r.to_json() for r in itertools.islice(newest, limit)]})

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/api/v1/meshes/{mesh}/services/{service}/series", self.series,
                  f"A service's golden signals over the last hour in {STEP_S} s buckets (per version and edge)",
                  query=(query_param("span", {"enum": list(SPANS)}, "how far back (default 15m)"),),
                  codes=(404, 422)),
            Route("GET", "/api/v1/meshes/{mesh}/failures", self.failures,
                  "Recent failed requests (5xx, 4xx, no response), newest first, with their explanation",
                  query=(query_param("service", {"type": "string"}),
                         query_param("limit", WHOLE_NUMBER, f"at most this many (1-{MAX_FAILURES}, default 20)")),
                  codes=(404, 422)),
            Route("GET", "/api/v1/meshes/{mesh}/dataplanes/{name}/requests", self.dataplane_requests,
                  "Recent requests a dataplane sent or was sent, newest first, failures explained",
                  query=(query_param("limit", WHOLE_NUMBER, f"at most this many (1-{MAX_FAILURES}, default 20)"),),
                  codes=(404, 422)),
        ]  # fmt: skip
