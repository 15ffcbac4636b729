"""GatewayCertificate on the control plane: its private key sealed before it reaches the store,
hidden from non-admins on the way out, and handed in clear only to the gateway that uses it.

* ``seal_certificate`` (a sealer, as for a Mesh's provided CA key): ``spec.privateKey`` becomes
  ``kek1:...`` (AES-256-GCM with the KEK, bound to the mesh and the certificate's name); an
  unchanged key keeps the stored sealed text, so applying the same document changes nothing.
* ``authn.redact_ca_keys`` (the API middleware): a GatewayCertificate read with a non-admin token
  shows ``(redacted: ...)`` for the key; admins see the sealed text.
* ``GET /api/v1/meshes/{mesh}/gateways/{gateway}/certificates``: the certificates the gateway's
  listeners name, keys opened, for a dataplane token of service ``gateway`` (or an admin). The
  gateway's agent polls it and serves them to its Envoy over SDS (a new version reaches new
  handshakes, open connections keep theirs).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from meshline.api.auth import Principal
from meshline.controlplane.context import ControlPlaneContext
from meshline.core.errors import FieldProblem, Forbidden, NotFound, ValidationError
from meshline.core.resource import Resource, ResourceKey
from meshline.core.tls_pair import CertificateProblem, check_pair
from meshline.security import crypto
from meshline.security.authn import is_admin

KIND = "GatewayCertificate"
PLURAL = "gatewaycertificates"
KEY_PATH = "spec.privateKey"


def purpose(mesh: str, name: str) -> str:
    return f"gateway-certificate:{mesh}/{name}"


def _key(res: Resource) -> str:
    return str(getattr(res.spec, "private_key", ""))


def _with_key(res: Resource, key: str) -> Resource:
    spec = res.spec.model_copy(update={"private_key": key})
    return Resource(res.kind, res.name, spec, res.mesh, res.version, res.created_at, res.updated_at)


def open_key(kek: crypto.KeyEncryptor, res: Resource) -> str:
    key = _key(res)
    if not key.startswith(crypto.KeyEncryptor.PREFIX):
        return key
    try:
        return kek.open(key, purpose(res.mesh or "", res.name)).decode()
    except (crypto.SecretError, ValueError):
        raise ValidationError([FieldProblem(KEY_PATH, f"is sealed, but not for {res.mesh}/{res.name} with this"
                                            " control plane's key-encryption key; paste the private key (PEM)")]) from None  # fmt: skip


def seal_certificate(kek: crypto.KeyEncryptor, res: Resource, prior: Resource | None) -> Resource:
    if res.kind != KIND:
        return res
    plain = open_key(kek, res)
    try:  # a sealed key from a read-back document is checked against the certificate here
        check_pair(res.name, str(getattr(res.spec, "certificate", "")).encode(), plain.encode())
    except CertificateProblem as err:
        raise ValidationError([FieldProblem(KEY_PATH, str(err).replace(f"{res.name}/tls.key", "the private key")
                                            .replace(f"{res.name}/tls.crt", "the certificate"))]) from None  # fmt: skip
    if prior is not None and prior.kind == KIND:
        old = _key(prior)
        if old.startswith(crypto.KeyEncryptor.PREFIX):
            try:
                if open_key(kek, prior) == plain:
                    return _with_key(res, old)
            except ValidationError:
                pass
    if _key(res).startswith(crypto.KeyEncryptor.PREFIX):
        return res
    return _with_key(res, kek.seal(plain.encode(), purpose(res.mesh or "", res.name)))


class GatewayCertificatesApi:
    def __init__(self, ctx: ControlPlaneContext, kek: crypto.KeyEncryptor) -> None:
        self.ctx = ctx
        self.kek = kek

    async def for_gateway(self, request: web.Request) -> web.Response:
        from meshline.api.server import principal

        mesh, gateway = request.match_info["mesh"], request.match_info["gateway"]
        p: Principal = principal(request)
        p.check_read(mesh)
        if not is_admin(p) and p.service != gateway:
            raise Forbidden(f"token '{p.name}' is not for gateway '{gateway}'; only that gateway's dataplane"
                            " token (or an admin) gets its certificates")  # fmt: skip
        gw = self.ctx.model.get(ResourceKey("MeshGateway", mesh, gateway))
        if gw is None:
            raise NotFound(f"no MeshGateway (or Gateway) '{gateway}' in mesh {mesh}")
        wanted = sorted({c for lst in getattr(gw.spec, "listeners", []) if lst.tls for c in lst.tls.certificates})
        items: list[dict[str, Any]] = []
        for name in wanted:
            res = self.ctx.model.get(ResourceKey(KIND, mesh, name))
            if res is None:
                continue  # maybe a file in the gateway's --certs-dir
            items.append({"name": name, "version": res.version, "certificate": getattr(res.spec, "certificate", ""),
                          "privateKey": open_key(self.kek, res)})  # fmt: skip
        return web.json_response({"items": items})
