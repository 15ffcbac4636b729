"""A route a subsystem adds to the REST API, declared as data: registered by
:func:`meshline.api.server.build_app` and documented in the OpenAPI document from the same
declaration (so the document cannot miss a route or describe one that does not exist)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str  # "GET", "POST", ...
    path: str  # aiohttp pattern: /api/v1/meshes/{mesh}/stats
    handler: Handler
    summary: str = ""  # the OpenAPI summary; "" leaves it out (e.g. the dashboard's static files)

    def __post_init__(self) -> None:
        if self.path.startswith("/api/") and not self.summary:
            raise ValueError(f"API route {self.method} {self.path} needs a summary for the OpenAPI document")
