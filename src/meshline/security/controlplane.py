"""Wires the security subsystem into a control plane through its ``Extensions``.

``install(ext, settings)`` (called by ``server.factory``) adds:

* always: the per-mesh CA (``CAManager``), the CSR / trust-bundle / CA endpoints, the
  token endpoints, a validator for ``spec.mtls.ca`` of Mesh resources, a validator
  refusing the internal kinds in ``apply``, ``certExpiresAt`` in dataplane status and
  certificate-expiry metrics;
* with ``Settings.auth`` (the default): token authentication of the API, the xDS port over
  TLS with a token on every call (ADS, rate limits, access logs), and ``<data_dir>/admin.token`` + ``<data_dir>/cp-ca.pem``.
  Without it the API lets everyone in as admin and ADS is plaintext (local demo, tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshline.api.routes import Route
from meshline.controlplane.context import XDS_CA_PEM, ContextValidator, ControlPlaneContext
from meshline.controlplane.settings import Settings, split_address
from meshline.core.errors import Conflict, FieldProblem, ValidationError
from meshline.core.mesh import MeshSpec
from meshline.core.resource import Resource, ResourceKey
from meshline.extensions import Extensions
from meshline.security import crypto, gateway_certificates, provided_key
from meshline.security.authn import TokenAuthenticator, redact_ca_keys, write_admin_token
from meshline.security.ca import DEFAULT_PROPAGATION, CAManager, parse_provided
from meshline.security.kinds import INTERNAL
from meshline.security.routes import SecurityApi
from meshline.security.tokens import TokenService
from meshline.security.xds_auth import (
    CP_CA_FILE,
    DataplaneAuthenticator,
    XdsAuthorizer,
    api_ssl_context,
    control_plane_ca,
    server_tls,
    write_ca_file,
)
from meshline.store.base import Store

log = logging.getLogger("meshline.security")

PROPAGATION_ENV = "MESHLINE_CA_PROPAGATION"
HOUSEKEEPING_INTERVAL = 600.0


@dataclass
class SecurityOptions:
    # Seconds between a new CA root entering trust bundles and that CA signing.
    propagation: float = field(
        default_factory=lambda: float(os.environ.get(PROPAGATION_ENV, DEFAULT_PROPAGATION))
    )
    kek_file: Path | None = field(
        default_factory=lambda: Path(os.environ[crypto.KEK_ENV]) if os.environ.get(crypto.KEK_ENV) else None
    )


# -- validators (ControlPlaneContext.validators) --------------------------------------


def mesh_ca_validator(kek: crypto.KeyEncryptor) -> ContextValidator:
    def validate_mesh_ca(res: Resource, ctx: ControlPlaneContext, pending: Sequence[Resource]) -> None:
        if res.kind != "Mesh":
            return
        spec = res.spec
        assert isinstance(spec, MeshSpec)
        ca = spec.mtls.ca
        if ca.type == "provided":
            parse_provided(ca.cert, provided_key.open_key(kek, res.name, ca.key))
        elif ca.cert or ca.key:
            raise ValidationError(
                [
                    FieldProblem(
                        "spec.mtls.ca.cert" if ca.cert else "spec.mtls.ca.key",
                        "is only used with type: provided; remove it, or set spec.mtls.ca.type: provided",
                    )
                ]
            )

    return validate_mesh_ca


async def seal_stored_keys(store: Store, kek: crypto.KeyEncryptor) -> None:
    """Seal provided CA keys that a version before sealing stored in clear."""
    for res in await store.list("Mesh"):
        assert isinstance(res.spec, MeshSpec)
        key = res.spec.mtls.ca.key
        if key and not provided_key.is_sealed(key):
            try:
                await store.update(provided_key.seal_mesh(kek, res, None), res.version)
            except Conflict:
                continue  # changed meanwhile (another replica sealed it, or a new apply): sealed by that write
            log.warning(
                "mesh %s: its provided CA key was stored in clear; sealed it now. Copies made before"
                " (backups, old database pages) still hold it: treat that key as exposed and rotate the CA",
                res.name,
            )


def refuse_internal_kinds(res: Resource, ctx: ControlPlaneContext, pending: Sequence[Resource]) -> None:
    if res.kind in INTERNAL:
        raise ValidationError(
            [
                FieldProblem(
                    "kind",
                    f"{res.kind} is managed by the control plane; use `meshline token` and the CA endpoints",
                )
            ]
        )


def _chain(existing: Any, mine: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Compose with a provider another subsystem may have set already."""
    if not callable(existing):
        return mine

    def both(*args: Any) -> dict[str, Any]:
        return {**existing(*args), **mine(*args)}

    return both


class Security:
    def __init__(self, settings: Settings, ext: Extensions, options: SecurityOptions | None = None) -> None:
        self.settings = settings
        self.ext = ext
        self.options = options or SecurityOptions()
        self.ca: CAManager | None = None
        self.tokens: TokenService | None = None
        self.api: SecurityApi | None = None
        self.gateway_certificates: gateway_certificates.GatewayCertificatesApi | None = None
        self.admin_token_path: Path | None = None
        self.cp_ca_path: Path | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, ctx: ControlPlaneContext) -> None:
        data_dir = self.settings.data_dir
        kek = crypto.KeyEncryptor.load_or_create(self.options.kek_file or data_dir / "kek")
        self.ca = CAManager(
            ctx.store, kek, self.options.propagation, meshes=ctx.model.mesh
        )
        await self.ca.start()
        self.tokens = TokenService(ctx.store, kek)
        await self.tokens.start()
        ctx.validators.append(mesh_ca_validator(kek))
        ctx.sealers.append(lambda res, prior: provided_key.seal_mesh(kek, res, prior))
        ctx.sealers.append(lambda res, prior: gateway_certificates.seal_certificate(kek, res, prior))
        await seal_stored_keys(ctx.store, kek)
        ctx.validators.append(refuse_internal_kinds)
        ctx.services["ca"] = self.ca
        ctx.services["tokens"] = self.tokens
        ctx.services["dataplane_status_extra"] = _chain(ctx.services.get("dataplane_status_extra"), self.status_extra)
        ctx.services["metrics_extra"] = _chain(ctx.services.get("metrics_extra"), self.metrics)
        self.api = SecurityApi(ctx, self.tokens, self.ca)
        self.gateway_certificates = gateway_certificates.GatewayCertificatesApi(ctx, kek)
        if self.settings.auth:
            self.ext.authenticator = TokenAuthenticator(self.tokens)
            self.ext.grpc_authenticate = DataplaneAuthenticator(
                self.tokens, lambda mesh, name: self._dataplane(ctx, mesh, name)
            )  # every call on the xDS port: ADS, rate limits, access logs
            self.ext.xds_authorize = XdsAuthorizer(self.tokens)
            ca_cert, ca_key = await control_plane_ca(ctx.store, kek)
            host, _ = split_address(self.settings.xds_address, "xDS address")
            tls = server_tls(ca_cert, ca_key, host)
            self.ext.xds_credentials = tls.credentials()
            self.cp_ca_path = write_ca_file(data_dir, tls.ca_pem)
            ctx.services[XDS_CA_PEM] = tls.ca_pem  # served to agents by GET /api/v1/xds
            if self.settings.api_tls_enabled():
                api_host, _ = split_address(self.settings.api_address, "API address")
                self.ext.api_ssl = api_ssl_context(server_tls(ca_cert, ca_key, api_host), data_dir)
                log.info("the API is served over HTTPS; clients verify it with %s", self.cp_ca_path)
            self.admin_token_path = await write_admin_token(data_dir, self.tokens)
            log.info("xDS is served over TLS; agents verify it with %s", self.cp_ca_path)
        else:
            # no TLS on xDS: a CA file left by an earlier run would make local agents try TLS
            (data_dir / CP_CA_FILE).unlink(missing_ok=True)
            log.warning("authentication is off (MESHLINE_AUTH=off): every API caller is admin, xDS is plaintext")
        self._task = asyncio.get_running_loop().create_task(self._housekeeping(ctx), name="security-housekeeping")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.ca is not None:
            await self.ca.stop()
        if self.tokens is not None:
            await self.tokens.stop()

    def _gateway_api(self) -> gateway_certificates.GatewayCertificatesApi:
        assert self.gateway_certificates is not None
        return self.gateway_certificates

    def routes(self) -> list[Route]:
        assert self.api is not None, "routes are asked for after on_start"
        return [*self.api.routes(), Route(
            "GET", "/api/v1/meshes/{mesh}/gateways/{gateway}/certificates", self._gateway_api().for_gateway,
            "The certificates a gateway's listeners name, keys included (that gateway's dataplane token, or admin)",
            codes=(404,))]  # fmt: skip

    @staticmethod
    def _dataplane(ctx: ControlPlaneContext, mesh: str, name: str) -> Resource | None:
        return ctx.model.get(ResourceKey("Dataplane", mesh, name))

    async def _housekeeping(self, ctx: ControlPlaneContext) -> None:
        """Drop retired CAs and long-expired token records."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            try:
                assert self.ca is not None and self.tokens is not None
                for mesh in ctx.model.mesh_names():
                    await self.ca.prune(mesh)
                await self.tokens.prune()
            except Exception:
                log.exception("security housekeeping failed")

    # -- status and metrics ----------------------------------------------------------
    def status_extra(self, r: Resource) -> dict[str, Any]:
        if self.ca is None:
            return {}
        cert = self.ca.signed.get((r.mesh, r.name))
        if cert is None:
            return {}
        return cert.to_status()

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.ca is None:
            return out
        for (mesh, name), cert in sorted(self.ca.signed.items()):
            out[f'meshline_certificate_expiry_timestamp_seconds{{mesh="{mesh}",dataplane="{name}"}}'] = cert.expires_at
        return out


DEMO_TOKEN_TTL = 30 * 86400.0


def demo_token(settings: Settings, ctx: ControlPlaneContext, service: str, mesh: str = "default") -> str | None:
    """A dataplane token for one demo service (`meshline up`); None when auth is off."""
    tokens = ctx.services.get("tokens")
    if not settings.auth or not isinstance(tokens, TokenService):
        return None
    return tokens.issue_nowait(
        "dataplane", mesh=mesh, service=service, ttl=DEMO_TOKEN_TTL, description="meshline up demo"
    ).token


def install(ext: Extensions, settings: Settings, options: SecurityOptions | None = None) -> Security:
    sec = Security(settings, ext, options)
    ext.on_start.append(sec.start)
    ext.on_stop.append(sec.stop)
    ext.routes.append(sec.routes)
    ext.middlewares.append(redact_ca_keys)
    return sec
