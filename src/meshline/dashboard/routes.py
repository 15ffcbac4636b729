"""Serves the dashboard's static files, with headers that keep the page from being framed,
sniffed, or made to run anything but its own scripts.

Routes: ``/`` (the page), ``/dashboard/{file}`` (its modules and stylesheet). Only files in
:data:`STATIC_DIR` with a known type are served; anything else is a 404, so no path can
reach outside the folder. The API's auth middleware lets every path outside ``/api/``
through, which is why these need no token while every API call the page makes does.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from meshline.api.routes import Route

STATIC_DIR = Path(__file__).parent / "static"
PREFIX = "/dashboard/"
TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.[a-z]+$")

# The page runs only its own modules and talks only to its own origin (the API). Styles
# are set as classes or through the CSSOM, so no inline style or script is needed.
CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    # revalidate every time (cheap: ETag / Last-Modified), so an upgrade shows at once
    "Cache-Control": "no-cache",
}


def _serve(name: str) -> web.StreamResponse:
    path = STATIC_DIR / name
    kind = TYPES.get(path.suffix)
    if not _NAME.match(name) or kind is None or not path.is_file():
        raise web.HTTPNotFound(text=f"no dashboard file '{name}'", headers=SECURITY_HEADERS)
    return web.FileResponse(path, headers={**SECURITY_HEADERS, "Content-Type": f"{kind}; charset=utf-8"})


async def index(request: web.Request) -> web.StreamResponse:
    return _serve("index.html")


async def asset(request: web.Request) -> web.StreamResponse:
    return _serve(request.match_info["name"])


def routes() -> list[Route]:
    """Static files: not part of the API document."""
    return [Route("GET", "/", index), Route("GET", PREFIX, index), Route("GET", PREFIX + "{name}", asset)]


def dashboard_url(api_url: str, token: str | None = None) -> str:
    """The page's address; with a token in the fragment, which browsers never send to a server
    (the page moves it to session storage and removes it from the address bar)."""
    url = api_url.rstrip("/") + "/"
    return f"{url}#token={quote(token, safe='')}" if token else url
