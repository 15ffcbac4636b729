"""REST endpoints of the security subsystem (added to the API through ``Extensions.routes``).

* ``POST /api/v1/tokens``, ``GET /api/v1/tokens``, ``POST /api/v1/tokens/{id}/revoke``: admin only.
* ``POST /api/v1/meshes/{mesh}/certificates`` ``{csr, service?, dataplane?}``: sign a workload
  CSR. A dataplane token gets only its own service's identity.
* ``GET /api/v1/ca/{mesh}/trust-bundle?version=V&wait=S``: the mesh's trust bundle; with
  ``version`` it long-polls until the bundle (or the signing CA) differs from ``V``.
* ``GET /api/v1/ca/{mesh}``: the mesh's CAs and their state; ``POST /api/v1/ca/{mesh}/rotate``
  starts a builtin CA rotation.

(The CA's GET routes live under ``/api/v1/ca/`` because ``/api/v1/meshes/{mesh}/{plural}``
already routes every GET of that shape to a resource kind.)
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from meshline.api.auth import Principal
from meshline.api.request_input import json_body
from meshline.api.routes import OPTIONAL_STRING, Route, query_param
from meshline.api.server import principal
from meshline.controlplane.context import ControlPlaneContext
from meshline.controlplane.shared_status import CERTIFICATE_PART
from meshline.core.dataplane import DataplaneSpec
from meshline.core.errors import FieldProblem, Forbidden, MeshlineError, NotFound, ValidationError
from meshline.core.mesh import MeshSpec
from meshline.core.resource import ResourceKey
from meshline.core.schema import NAME_HINT, NAME_RE, parse_duration
from meshline.security import crypto
from meshline.security.authn import require_admin
from meshline.security.ca import CAManager, check_csr, spiffe_id
from meshline.security.tokens import DEFAULT_TTL, TokenService, record_json

log = logging.getLogger("meshline.security.api")
MAX_WAIT = 60.0


def _principal(request: web.Request) -> Principal:
    return principal(request)  # set by the API's auth middleware


async def _body(request: web.Request) -> dict[str, Any]:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ValidationError([FieldProblem("", "request body must be a JSON object")])
    return body


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValidationError([FieldProblem(key, "must be a string")])
    return value


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


TOKEN_BODY = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["admin", "mesh", "readonly", "dataplane", "zone"]}, "zone": OPTIONAL_STRING,
        "mesh": OPTIONAL_STRING, "service": OPTIONAL_STRING, "dataplane": OPTIONAL_STRING,
        "ttl": {"type": ["string", "null"], "examples": ["24h", "720h"]}, "description": OPTIONAL_STRING,
    },
    "required": ["kind"],
}  # fmt: skip
CSR_BODY = {
    "type": "object",
    "properties": {"csr": {"type": "string"}, "service": OPTIONAL_STRING, "dataplane": OPTIONAL_STRING},
    "required": ["csr"],
}


class SecurityApi:
    def __init__(self, ctx: ControlPlaneContext, tokens: TokenService | None, ca: CAManager) -> None:
        self.ctx = ctx
        self.tokens = tokens
        self.ca = ca

    def routes(self) -> list[Route]:
        wait = query_param("wait", {"type": "number", "minimum": 0}, "seconds to wait for a change (at most 30 are waited)")
        return [
            Route("POST", "/api/v1/tokens", self.issue_token, "Issue a token (admin)", body=TOKEN_BODY, codes=(404, 422)),
            Route("GET", "/api/v1/tokens", self.list_tokens, "Issued tokens (admin)",
                  query=(query_param("all", {"type": "string"}),)),
            Route("POST", "/api/v1/tokens/{id}/revoke", self.revoke_token, "Revoke a token (admin)", codes=(404,)),
            Route("POST", "/api/v1/meshes/{mesh}/certificates", self.sign_certificate,
                  "Sign a workload CSR for the token's service (dataplane token)", body=CSR_BODY, codes=(404, 422)),
            Route("GET", "/api/v1/ca/{mesh}", self.ca_status, "The mesh's certificate authorities and their state",
                  codes=(404,)),
            Route("GET", "/api/v1/ca/{mesh}/trust-bundle", self.trust_bundle,
                  "The mesh's trust bundle (long-polled by agents)",
                  query=(query_param("version", {"type": "string"}), wait), codes=(404, 422)),
            Route("POST", "/api/v1/ca/{mesh}/rotate", self.rotate_ca,
                  "Rotate a builtin CA: new root trusted first, signing later", codes=(404, 409)),
        ]  # fmt: skip

    # -- tokens ----------------------------------------------------------------------
    def _tokens(self) -> TokenService:
        if self.tokens is None:
            raise NotFound("tokens are not enabled on this control plane")
        return self.tokens

    async def issue_token(self, request: web.Request) -> web.Response:
        p = _principal(request)
        require_admin(p, "issue tokens")
        body = await _body(request)
        ttl_raw = body.get("ttl")
        try:
            ttl = DEFAULT_TTL if ttl_raw in (None, "") else parse_duration(ttl_raw).total_seconds()
        except ValueError as err:
            raise ValidationError([FieldProblem("ttl", str(err))]) from None
        kind = _opt_str(body, "kind")
        if kind is None:
            raise ValidationError([FieldProblem("kind", "is required: admin, mesh, readonly or dataplane")])
        issued = await self._tokens().issue(
            kind,
            mesh=_opt_str(body, "mesh"),
            service=_opt_str(body, "service"),
            dataplane=_opt_str(body, "dataplane") or _opt_str(body, "name"),
            ttl=ttl,
            description=_opt_str(body, "description"),
            issued_by=p.name,
            zone=_opt_str(body, "zone"),
        )
        c = issued.claims
        return _json(
            {
                "id": c.id,
                "token": issued.token,
                "kind": c.kind,
                "mesh": c.mesh,
                "service": c.service,
                "dataplane": c.dataplane,
                **({"zone": c.zone} if c.zone else {}),
                "issuedAt": c.issued_at,
                "expiresAt": c.expires_at,
            },
            status=201,
        )

    async def list_tokens(self, request: web.Request) -> web.Response:
        require_admin(_principal(request), "list tokens")
        now = time.time()
        items = [record_json(r, now) for r in await self._tokens().records()]
        items.sort(key=lambda i: i["issuedAt"])
        return _json({"items": items})

    async def revoke_token(self, request: web.Request) -> web.Response:
        p = _principal(request)
        require_admin(p, "revoke tokens")
        stored = await self._tokens().revoke(request.match_info["id"], by=p.name)
        return _json(record_json(stored))

    # -- certificates ----------------------------------------------------------------
    async def sign_certificate(self, request: web.Request) -> web.Response:
        mesh = request.match_info["mesh"]
        p = _principal(request)
        try:
            return await self._sign(request, mesh, p)
        except MeshlineError as err:
            log.warning(
                "certificate for mesh %s refused (token %s, from %s): %s", mesh, p.name, request.remote, err
            )
            raise

    async def _sign(self, request: web.Request, mesh: str, p: Principal) -> web.Response:
        p.check_read(mesh)
        if p.read_only:
            raise Forbidden(f"token '{p.name}' is read-only; it cannot get certificates")
        body = await _body(request)
        service = _opt_str(body, "service")
        dataplane = _opt_str(body, "dataplane")
        if p.service is not None:
            if service is not None and service != p.service:
                raise Forbidden(
                    f"dataplane token '{p.name}' is for service '{p.service}', not '{service}';"
                    " issue a token for this service with `meshline token issue`"
                )
            service = p.service
            if p.dataplane is not None:
                if dataplane is not None and dataplane != p.dataplane:
                    raise Forbidden(f"dataplane token '{p.name}' is for dataplane '{p.dataplane}', not '{dataplane}'")
                dataplane = p.dataplane
        if service is None:
            raise ValidationError([FieldProblem("service", "is required: the service to issue an identity for")])
        for field, value in (("service", service), ("dataplane", dataplane)):
            if value is not None and not NAME_RE.match(value):
                raise ValidationError([FieldProblem(field, NAME_HINT)])
        mesh_res = self.ctx.model.mesh(mesh)
        if mesh_res is None:
            try:
                mesh_res = await self.ctx.store.get(ResourceKey("Mesh", "", mesh))
            except NotFound:
                raise NotFound(f"mesh '{mesh}' does not exist") from None
        spec = mesh_res.spec
        assert isinstance(spec, MeshSpec)
        identity = spiffe_id(spec.trust_domain, mesh, service)
        csr = check_csr(body.get("csr"), identity)
        if dataplane is not None:
            await self._check_dataplane(mesh, dataplane, service)
        issued = await self.ca.sign(mesh, csr, identity, spec.mtls.cert_lifetime, dataplane)
        if dataplane is not None and self.ctx.publisher is not None:  # so that every replica shows it
            signed = self.ca.signed.get((mesh, dataplane))
            if signed is not None:
                key = ResourceKey("Dataplane", mesh, dataplane)
                self.ctx.publisher.publish(key, CERTIFICATE_PART, signed.to_status())
        log.info(
            "signed %s for dataplane %s (token %s), expires %s",
            identity,
            dataplane or "-",
            p.name,
            crypto.iso(issued.expires_at),
        )
        _, version, _ = await self.ca.bundle(mesh)
        return _json(
            {
                "identity": identity,
                "certChain": issued.cert_chain,
                "trustBundle": issued.trust_bundle,
                "trustBundleVersion": version,
                "expiresAt": issued.expires_at,
                "caId": issued.ca_id,
            }
        )

    async def _check_dataplane(self, mesh: str, name: str, service: str) -> None:
        """A registered dataplane of that name must serve ``service`` (else the status would lie)."""
        try:
            dp = await self.ctx.store.get(ResourceKey("Dataplane", mesh, name))
        except NotFound:
            return
        assert isinstance(dp.spec, DataplaneSpec)
        services = dp.spec.services()
        if service not in services:
            raise Forbidden(
                f"dataplane '{name}' serves {', '.join(services)}, not '{service}'; a certificate for"
                f" {service} cannot be recorded against it"
            )

    # -- CA --------------------------------------------------------------------------
    async def trust_bundle(self, request: web.Request) -> web.Response:
        mesh = request.match_info["mesh"]
        _principal(request).check_read(mesh)
        version = request.query.get("version", "")
        try:
            wait = float(request.query.get("wait", "0"))
        except ValueError:
            wait = -1.0
        if not wait >= 0:  # negative, NaN
            raise ValidationError([FieldProblem("wait", "must be a number of seconds from 0 (at most 30 are waited)")])
        wait = min(MAX_WAIT, wait)
        if version and wait > 0:
            roots, current, signer = await self.ca.wait_bundle(mesh, version, wait)
        else:
            roots, current, signer = await self.ca.bundle(mesh)
        return _json({"mesh": mesh, "trustBundle": "".join(roots), "roots": len(roots), "version": current, "caId": signer})

    async def ca_status(self, request: web.Request) -> web.Response:
        mesh = request.match_info["mesh"]
        _principal(request).check_read(mesh)
        await self.ca.ensure(mesh)
        return _json(self.ca.status(mesh))

    async def rotate_ca(self, request: web.Request) -> web.Response:
        mesh = request.match_info["mesh"]
        _principal(request).check_write(mesh, "Mesh")
        entry = await self.ca.rotate(mesh)
        return _json({**self.ca.status(mesh), "rotating": {"id": entry.id, "activeFrom": entry.active_from}})
