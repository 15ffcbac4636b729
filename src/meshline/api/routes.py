"""A route a subsystem adds to the REST API, declared as data: registered by
:func:`meshline.api.server.build_app` and documented in the OpenAPI document from the same
declaration (so the document cannot miss a route or describe one that does not exist)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str  # "GET", "POST", ...
    path: str  # aiohttp pattern: /api/v1/meshes/{mesh}/stats
    handler: Handler
    summary: str = ""  # the OpenAPI summary; "" leaves it out (e.g. the dashboard's static files)
    query: tuple[dict[str, Any], ...] = ()  # OpenAPI query parameters (see query_param)
    body: dict[str, Any] | None = None  # the JSON request body's schema
    codes: tuple[int, ...] = ()  # status codes it returns besides 200, 401 and 403

    def __post_init__(self) -> None:
        if self.path.startswith("/api/") and not self.summary:
            raise ValueError(f"API route {self.method} {self.path} needs a summary for the OpenAPI document")


def query_param(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        out["description"] = description
    return out


OPTIONAL_STRING = {"type": ["string", "null"]}  # null or "": not given
WHOLE_NUMBER = {"type": "string", "pattern": "^[0-9]{0,4}$"}  # a query's whole number; empty: the default
