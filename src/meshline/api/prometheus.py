"""Prometheus HTTP service discovery: GET /api/v1/prometheus/targets lists every dataplane's
metrics endpoint (the groups are built by :func:`meshline.controlplane.metrics.prometheus_targets`)."""

from __future__ import annotations

from aiohttp import web

from meshline.api.server import CTX, principal
from meshline.controlplane.metrics import prometheus_targets

TARGETS_PATH = "/api/v1/prometheus/targets"


async def prometheus_targets_handler(request: web.Request) -> web.Response:
    """GET /api/v1/prometheus/targets[?mesh=NAME]: authenticated like the rest of the API;
    a token limited to one mesh sees that mesh's dataplanes only."""
    ctx = request.app[CTX]
    who = principal(request)
    mesh = request.query.get("mesh")
    principal(request).check_read(mesh)
    meshes = [mesh] if mesh else ([who.mesh] if who.mesh is not None else None)
    return web.json_response(prometheus_targets(ctx.reconciler, meshes))
