"""ADS over TLS, and who may open an ADS stream as which dataplane.

TLS: a control-plane CA (P-256, 10 years; ``ControlPlaneKey`` ``xds-ca``, sealed in
the store, shared by replicas) signs each replica's server certificate at start
(DNS ``localhost`` + host name, IPs 127.0.0.1/::1, the xDS listen address, and
``MESHLINE_XDS_CERT_SANS``). Its certificate is written to ``<data_dir>/cp-ca.pem``;
agents pin it (``--cp-ca-file`` / ``MESHLINE_CP_CA_FILE``).

Token: the agent's xDS proxy, which Envoy reaches the control plane through, sends the
dataplane token as gRPC metadata (``authorization: Bearer ...``; Envoy itself holds no
credential, see ``meshline.agent.xds_proxy``). A stream for node ``<mesh>.<name>`` is
accepted when the token is valid and:

* admin: any node; mesh: any node of its mesh; readonly: never;
* dataplane: its mesh; its dataplane name, if the token names one; and the
  registered Dataplane ``<name>`` exists and serves only the token's service.

Refusals end the stream with PERMISSION_DENIED (UNAUTHENTICATED for a missing or bad
token) and a message that says why.

Every other service on the xDS port (rate limits, access logs, any added later) goes
through the same :class:`DataplaneAuthenticator`: the server's interceptor
(:class:`~meshline.xds.server.AuthenticatingInterceptor`) runs it on every call, and the
services ask the :class:`DataplaneCaller` it returns what the caller may speak for. Envoy
sends the token on every stream to the control plane (the bootstrap's xDS cluster adds it).
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshline.api.common import CP_CA_FILE
from meshline.core.callbacks import KeyedCallbacks
from meshline.core.dataplane import DataplaneSpec
from meshline.core.errors import Conflict, NotFound, Unauthorized
from meshline.core.ratelog import RateLimitedLog
from meshline.core.resource import Resource, ResourceKey
from meshline.security import crypto
from meshline.security.authn import bearer
from meshline.security.kinds import ControlPlaneKeySpec
from meshline.security.tokens import Claims, TokenService
from meshline.store.base import Store
from meshline.xds import names
from meshline.xds.server import Grant, StreamRefused, current_caller

log = logging.getLogger("meshline.security.xds")

CP_CA_NAME = "xds-ca"
SERVER_CERT_LIFETIME = dt.timedelta(days=730)
SANS_ENV = "MESHLINE_XDS_CERT_SANS"


class XdsRefused(StreamRefused):
    """An xDS stream refused for its token; the stream ends with this status and message."""


@dataclass(frozen=True)
class ServerTLS:
    ca_pem: str
    cert_chain_pem: str
    key_pem: str

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key_pem.encode(), self.cert_chain_pem.encode())])


async def control_plane_ca(store: Store, kek: crypto.KeyEncryptor) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ref = ResourceKey("ControlPlaneKey", "", CP_CA_NAME)
    purpose = "control-plane-key:" + CP_CA_NAME
    for _ in range(3):
        try:
            r = await store.get(ref)
        except NotFound:
            key = crypto.new_ec_key()
            cert = crypto.new_root("Meshline control plane CA", key)
            spec = ControlPlaneKeySpec(
                key=kek.seal(crypto.key_pem(key).encode(), purpose),
                cert=crypto.cert_pem(cert),
                created_at=cert.not_valid_before_utc.timestamp(),
            )
            try:
                await store.create(Resource(kind="ControlPlaneKey", name=CP_CA_NAME, spec=spec))
            except Conflict:
                continue
            log.info("created the control-plane CA (agents pin it to verify xDS)")
            return cert, key
        assert isinstance(r.spec, ControlPlaneKeySpec) and r.spec.cert
        loaded = crypto.load_key(kek.open(r.spec.key, purpose))
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        return crypto.load_certs(r.spec.cert)[0], loaded
    raise Conflict("cannot create the control-plane CA; retry")


def server_names(listen_host: str) -> tuple[list[str], list[str]]:
    dns = ["localhost"]
    ips = ["127.0.0.1", "::1"]
    host = socket.gethostname()
    if host and host not in dns:
        dns.append(host)
    extra = [s.strip() for s in os.environ.get(SANS_ENV, "").split(",") if s.strip()]
    for name in [listen_host, *extra]:
        if not name or name in ("0.0.0.0", "::"):
            continue
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if name not in dns:
                dns.append(name)
        else:
            if name not in ips:
                ips.append(name)
    return dns, ips


def server_tls(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, listen_host: str) -> ServerTLS:
    key = crypto.new_ec_key()
    dns, ips = server_names(listen_host)
    now = crypto.utcnow()
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshline-control-plane")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + SERVER_CERT_LIFETIME, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(crypto.leaf_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, crypto.signature_hash(ca_key))
    )
    return ServerTLS(crypto.cert_pem(ca_cert), crypto.cert_pem(cert), crypto.key_pem(key))


def api_ssl_context(tls: ServerTLS, data_dir: Path) -> ssl.SSLContext:
    """An HTTPS context for the REST API with the control plane's server certificate.

    ``ssl`` loads keys only from files: the key goes through an anonymous in-memory file
    (``memfd``), so it is never written to disk; where there is none (not Linux), a 0600
    file in the 0700 data dir, removed once loaded."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    pem = (tls.key_pem + tls.cert_chain_pem).encode()
    stale = data_dir / "api-tls.pem"  # where versions before the memfd kept it
    stale.unlink(missing_ok=True)
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("meshline-api-tls", 0)
        try:
            os.write(fd, pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return ctx
    crypto.write_private(stale, pem.decode())
    try:
        ctx.load_cert_chain(stale)
    finally:
        stale.unlink(missing_ok=True)
    return ctx


def write_ca_file(data_dir: Path, ca_pem: str) -> Path:
    path = data_dir / CP_CA_FILE
    if not path.exists() or path.read_text() != ca_pem:
        crypto.write_private(path, ca_pem)  # public, but the data dir's files are all 0600
    return path


# -- who may stream as which node -----------------------------------------------------


def check_node(claims: Claims, node: str, lookup: Callable[[str, str], Resource | None]) -> str | None:
    """Why ``claims`` may not stream as ``node`` (None: it may). Pure; tested directly."""
    try:
        mesh, name = names.parse_node_id(node)
    except ValueError as err:
        return str(err)
    if claims.kind == "admin":
        return None
    if claims.kind == "readonly":
        return f"{claims.describe()} is read-only; it cannot connect a sidecar"
    if claims.mesh != mesh:
        return f"{claims.describe()} is for mesh '{claims.mesh}', not '{mesh}'"
    if claims.kind == "mesh":
        return None
    if claims.dataplane is not None and claims.dataplane != name:
        return f"{claims.describe()} is for dataplane '{claims.dataplane}', not '{name}'"
    dp = lookup(mesh, name)
    if dp is None:
        return f"dataplane '{name}' is not registered in mesh '{mesh}'; the agent registers it before starting Envoy"
    assert isinstance(dp.spec, DataplaneSpec)
    services = dp.spec.services()
    if any(s != claims.service for s in services):
        return (
            f"{claims.describe()} is for service '{claims.service}', but dataplane '{name}' serves"
            f" {', '.join(services)}"
        )
    return None


@dataclass(frozen=True)
class DataplaneCaller:
    """A :class:`~meshline.xds.server.Caller` proven by a token (admin, mesh or dataplane)."""

    claims: Claims
    tokens: TokenService
    lookup: Callable[[str, str], Resource | None]

    @property
    def mesh(self) -> str | None:
        return self.claims.mesh

    @property
    def service(self) -> str | None:
        return self.claims.service

    def describe(self) -> str:
        return self.claims.describe()

    def refusal_for(self, node: str) -> str | None:
        return check_node(self.claims, node, self.lookup)

    def lapsed(self) -> str | None:
        if self.tokens.is_revoked(self.claims.id):
            return f"{self.claims.describe()} was revoked; issue a new dataplane token and restart the agent with it"
        if self.claims.expires_at <= self.tokens.clock():
            return f"{self.claims.describe()} expired; issue a new dataplane token and restart the agent with it"
        return None


NO_TOKEN = (
    "no token: the agent must send its dataplane token (authorization: Bearer ...) on every"
    " call to the control plane (the bootstrap's xDS cluster adds it)"
)


class DataplaneAuthenticator:
    """``Extensions.grpc_authenticate``: who a call on the xDS port comes from, from its
    ``authorization: Bearer <token>`` metadata. Run on every call of every service there
    (ADS included) before its handler; read-only tokens are refused outright."""

    def __init__(self, tokens: TokenService, lookup: Callable[[str, str], Resource | None]) -> None:
        self.tokens = tokens
        self.lookup = lookup
        self._log = RateLimitedLog(log)  # a flood of refused calls is a few lines, not one each

    def __call__(self, context: grpc.aio.ServicerContext) -> DataplaneCaller:
        metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        raw = metadata.get("authorization")
        token = bearer(raw if isinstance(raw, str) else None)
        if token is None:
            raise self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, "no-token", NO_TOKEN)
        try:
            claims = self.tokens.verify(token)
        except Unauthorized as err:
            raise self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, "bad-token", str(err)) from None
        if claims.kind == "readonly":
            why = f"{claims.describe()} is read-only; it cannot connect a sidecar"
            raise self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "read-only", why)
        return DataplaneCaller(claims, self.tokens, self.lookup)

    def _refuse(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, kind: str, why: str) -> XdsRefused:
        self._log.warning(kind, "call on the xDS port from %s refused: %s", context.peer(), why)
        return XdsRefused(code, why)


class XdsAuthorizer:
    """``Extensions.xds_authorize``: called with the node id on a stream's first request, after
    the port's :class:`DataplaneAuthenticator` admitted the call. A stream lives as long as
    its token: revoking the token ends the streams opened with it (Envoy reconnects, and is
    refused)."""

    def __init__(self, tokens: TokenService) -> None:
        self._streams: KeyedCallbacks[Callable[[str], None]] = KeyedCallbacks()  # token id -> end(reason)
        tokens.on_revoked.append(self._end_streams_of)

    def _end_streams_of(self, token_id: str) -> None:
        for end in self._streams.pop(token_id):
            end(f"token {token_id} was revoked; issue a new dataplane token and restart the agent with it")

    def __call__(self, node: str, context: grpc.aio.ServicerContext) -> Grant:
        caller = current_caller()
        if not isinstance(caller, DataplaneCaller):
            raise RuntimeError("XdsAuthorizer needs the xDS port's DataplaneAuthenticator (Extensions.grpc_authenticate)")
        why = caller.refusal_for(node)
        if why is not None:
            log.warning("xDS stream for %s from %s refused: %s", node, context.peer(), why)
            raise XdsRefused(grpc.StatusCode.PERMISSION_DENIED, why)
        return functools.partial(self._streams.add, caller.claims.id)
