"""API authentication: ``Authorization: Bearer <token>`` -> :class:`Principal`.

Every ``/api/`` route needs a token except ``/api/v1/health`` (and ``/openapi.json``,
outside ``/api/``); the API's auth middleware decides that, this class decides who
the caller is. 401: no token, a malformed or foreign token, expired, revoked.
403 (raised by the handlers through :class:`Principal`): a valid token out of scope.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from meshline.api.auth import Principal
from meshline.api.server import principal
from meshline.core.errors import Forbidden, Unauthorized
from meshline.security import crypto
from meshline.security.tokens import TokenService, principal_for

log = logging.getLogger("meshline.security.authn")

ADMIN_TOKEN_FILE = "admin.token"
ADMIN_TOKEN_TTL = 365 * 86400.0
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MISSING = (
    "this API needs a token: send `Authorization: Bearer <token>`. The CLI uses --token,"
    " MESHLINE_TOKEN, MESHLINE_TOKEN_FILE, or its context's token file (`meshline context list`);"
    " issue tokens with `meshline token issue`"
)


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def is_admin(p: Principal) -> bool:
    return p.mesh is None and not p.read_only and p.service is None


def require_admin(p: Principal, what: str) -> None:
    if not is_admin(p):
        raise Forbidden(f"token '{p.name}' cannot {what}; this needs an admin token")


class TokenAuthenticator:
    """The :class:`~meshline.api.auth.Authenticator` used when ``Settings.auth`` is on."""

    def __init__(self, tokens: TokenService) -> None:
        self.tokens = tokens

    async def authenticate(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization")
        token = bearer(header)
        if token is None:
            log.info("API %s %s from %s refused: no bearer token", request.method, request.path, request.remote)
            if header:
                raise Unauthorized("the Authorization header must be `Bearer <token>`")
            raise Unauthorized(MISSING)
        try:
            claims = self.tokens.verify(token)
        except Unauthorized as err:
            log.warning("API %s %s from %s refused: %s", request.method, request.path, request.remote, err)
            raise
        p = principal_for(claims)
        if p.read_only and request.method not in READ_METHODS:
            raise Forbidden(f"token '{p.name}' is read-only; use an admin or mesh token to change resources")
        return p


def ensure_admin_token_file(path: Path, tokens: TokenService) -> bool:
    """Is the token in ``path`` still good? (Caller issues a new one if not.)"""
    if not path.exists():
        return False
    try:
        claims = tokens.verify(path.read_text().strip())
    except (Unauthorized, OSError):
        return False
    # renew well before it expires
    return claims.kind == "admin" and claims.expires_at - tokens.clock() > 30 * 86400


async def write_admin_token(data_dir: Path, tokens: TokenService) -> Path:
    """On start: make sure ``<data_dir>/admin.token`` (0600) holds a valid admin token."""
    path = data_dir / ADMIN_TOKEN_FILE
    if ensure_admin_token_file(path, tokens):
        log.info("admin token: %s", path)
        return path
    issued = await tokens.issue("admin", ttl=ADMIN_TOKEN_TTL, description=f"local admin ({path})", issued_by="control-plane")
    crypto.write_private(path, issued.token + "\n")
    log.info("wrote an admin token to %s (mode 0600)", path)
    return path


# -- the provided CA's private key is for admins only ---------------------------------

_MESH_PATH = re.compile(r"^/api/v1/meshes(/[^/]+)?/?$")
_GATEWAY_CERT_PATH = re.compile(r"^/api/v1/meshes/[^/]+/gatewaycertificates(/[^/]+)?/?$")
REDACTED = "(redacted: only admin tokens can read it)"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _redact(doc: object) -> bool:
    if not isinstance(doc, dict):
        return False
    if doc.get("kind") == "GatewayCertificate" and isinstance(doc.get("spec"), dict):
        if doc["spec"].get("privateKey"):
            doc["spec"]["privateKey"] = REDACTED
            return True
        return False
    ca = doc.get("spec", {}).get("mtls", {}).get("ca", {}) if isinstance(doc.get("spec"), dict) else {}
    if isinstance(ca, dict) and ca.get("key"):
        ca["key"] = REDACTED
        return True
    return False


@web.middleware
async def redact_ca_keys(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Mesh resources carry a provided CA's private key, GatewayCertificates a listener's key;
    only admins get them back (sealed)."""
    resp = await handler(request)
    if not (_MESH_PATH.match(request.path) or _GATEWAY_CERT_PATH.match(request.path)) or not isinstance(resp, web.Response) or resp.body is None:
        return resp
    try:
        p: Principal | None = principal(request)
    except (KeyError, AssertionError):  # a route without authentication
        p = None
    if p is not None and is_admin(p):
        return resp
    try:
        data = json.loads(resp.body)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return resp
    changed = _redact(data)
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        for item in data["items"]:
            changed = _redact(item) or changed
    if not changed:
        return resp
    return web.json_response(data, status=resp.status)
