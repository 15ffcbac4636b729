"""REST routes of rollouts (the CLI's ``meshline rollout`` and the dashboard call them):

* ``GET /api/v1/meshes/{mesh}/rollouts/{name}/status``: the stored state (phase, step,
  weights, each check's measured values and verdict, history) and both versions' signals now;
* ``POST /api/v1/meshes/{mesh}/rollouts/{name}/{action}`` (promote, pause, resume, abort):
  queues the command in the store, where the driving replica picks it up on its next tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from meshline.api.routes import Route
from meshline.api.server import principal
from meshline.controlplane.context import ControlPlaneContext
from meshline.core.errors import FieldProblem, ValidationError
from meshline.core.resource import ResourceKey
from meshline.rollouts import machine as m
from meshline.rollouts.api import RolloutSpec
from meshline.rollouts.controller import MAX_REQUESTS, REQUESTS_PART, STATE_PART, VersionSignals, signal_of
from meshline.rollouts.routing import route_name

SIGNALS_WINDOW = 60  # seconds of both versions' signals shown beside the state


class RolloutApi:
    def __init__(self, ctx: Callable[[], ControlPlaneContext], signals: Callable[[], VersionSignals | None]) -> None:
        self.ctx = ctx
        self.signals = signals

    async def _rollout(self, request: web.Request) -> tuple[Any, dict[str, Any]]:
        mesh, name = request.match_info["mesh"], request.match_info["name"]
        key = ResourceKey("Rollout", mesh, name)
        ctx = self.ctx()
        res = await ctx.store.get(key)  # NotFound -> 404
        status = (await ctx.store.list_status("Rollout", mesh, name)).get(key, {})
        return res, status

    async def _status(self, request: web.Request) -> web.Response:
        principal(request).check_read(request.match_info["mesh"])
        res, status = await self._rollout(request)
        spec = res.spec
        assert isinstance(spec, RolloutSpec)
        window = max((round(c.window.total_seconds()) for c in spec.analysis.checks), default=SIGNALS_WINDOW)
        signals: dict[str, Any] = {}
        source = self.signals()
        if source is not None:
            for side, version in (("stable", spec.stable.version), ("candidate", spec.candidate.version)):
                s = signal_of(source.version_summary(res.mesh, spec.service, version, window))
                signals[side] = {"version": version, "requests": s.requests, "failures": s.failures,
                                 "successRate": s.success_pct, "p50": s.p50, "p99": s.p99}  # fmt: skip
        return web.json_response({
            "rollout": res.to_json(), "state": status.get(STATE_PART), "route": route_name(res.name),
            "signals": {"windowSeconds": window, **signals}, "at": time.time(),
        })  # fmt: skip

    async def _command(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        mesh = request.match_info["mesh"]
        principal(request).check_write(mesh, "Rollout")
        if action not in m.COMMANDS:
            raise ValidationError([FieldProblem("action", f"'{action}' is not a command; use {', '.join(m.COMMANDS)}")])
        res, status = await self._rollout(request)
        queued = list(status.get(REQUESTS_PART, ()))
        state = status.get(STATE_PART) or {}
        last = max([int(state.get("handled", 0)), *(int(q.get("id", 0)) for q in queued)])
        entry = {"id": last + 1, "action": action, "at": time.time(), "by": principal(request).name}
        queued = [*queued, entry][-MAX_REQUESTS:]
        await self.ctx().store.put_status({res.key: {REQUESTS_PART: queued}})
        return web.json_response({"queued": entry, "phase": state.get("phase")})

    def routes(self) -> list[Route]:
        base = "/api/v1/meshes/{mesh}/rollouts/{name}"
        return [
            Route("GET", base + "/status", self._status,
                  "A rollout's state: phase, step, weights, checks with their measured values, history", codes=(404,)),
            Route("POST", base + "/{action}", self._command,
                  "Send a rollout a command: promote (end the current step), pause, resume or abort",
                  codes=(404, 422)),
        ]  # fmt: skip

