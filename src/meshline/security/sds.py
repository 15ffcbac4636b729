"""The agent's SDS server: serves the workload's certificate and the mesh's trust bundle
to its Envoy (``SecretDiscoveryService``, state of the world) on a Unix socket.

Two secrets, named in :mod:`meshline.xds.names`: ``identity_cert`` (a
``tls_certificate``: chain + private key) and ``mesh_trust_bundle`` (a
``validation_context`` with the mesh's roots). The socket is created mode 0600 in
the agent's work dir (0700): only the agent's user can fetch the private key.

The protocol (nonces, ACK/NACK, answering only open requests, by-name subscriptions)
is :class:`meshline.xds.stream.AdsStream`, the same state machine as ADS: SDS
secrets are just one more by-name type in a :class:`~meshline.xds.snapshot.Snapshot`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from meshline.core.unix_sockets import serve_grpc
from meshline.xds import names
from meshline.xds.snapshot import SECRET, Snapshot, pack
from meshline.xds.stream import AdsStream, Nack

log = logging.getLogger("meshline.security.sds")
GATEWAY_CERT_PREFIX = names.GATEWAY_CERT_PREFIX
MAX_MISSING_TOLD = 256  # certificate names remembered as told (Envoy asks only for its listeners')


@dataclass(frozen=True)
class IdentityMaterial:
    """What the agent holds for its workload: never leaves the host (the key was made here)."""

    identity: str
    key_pem: str
    cert_chain_pem: str
    trust_bundle_pem: str
    expires_at: float
    issued_at: float
    ca_id: str
    bundle_version: str


def identity_secret(m: IdentityMaterial) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=names.IDENTITY_SECRET,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=m.cert_chain_pem.encode()),
            private_key=base_pb2.DataSource(inline_bytes=m.key_pem.encode()),
        ),
    )


def bundle_secret(m: IdentityMaterial) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=names.TRUST_BUNDLE_SECRET,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=m.trust_bundle_pem.encode())
        ),
    )


def secrets_snapshot(m: IdentityMaterial) -> Snapshot:
    return Snapshot.build(
        {SECRET: [pack(names.IDENTITY_SECRET, identity_secret(m)), pack(names.TRUST_BUNDLE_SECRET, bundle_secret(m))]}
    )


class SdsServer(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.snapshot: Snapshot | None = None
        self.material: IdentityMaterial | None = None
        self._watchers: set[Callable[[Snapshot], None]] = set()
        self._server: grpc.aio.Server | None = None
        self.last_nack: str = ""
        self.streams = 0
        # Secrets besides the workload's (a gateway's listener certificates), by name.
        self.extra: dict[str, secret_pb2.Secret] = {}
        self._missing_told: set[str] = set()  # gateway certificates Envoy asked for that nobody had

    # -- content ---------------------------------------------------------------------
    def update(self, material: IdentityMaterial) -> None:
        """Serve new secrets; every open stream gets the ones that changed."""
        self.material = material
        self._publish()

    def update_extra(self, secrets: dict[str, secret_pb2.Secret]) -> None:
        """Serve these secrets too (a gateway's certificates); a changed one reaches Envoy at once,
        which uses it for new TLS handshakes and keeps the open connections."""
        self.extra = dict(secrets)
        self._missing_told -= set(secrets)  # provided now: say so again if it goes missing
        if self.material is not None:
            self._publish()

    def _publish(self) -> None:
        assert self.material is not None
        base = secrets_snapshot(self.material).slot(SECRET).resources.values()
        extra = [pack(n, s) for n, s in sorted(self.extra.items())]
        self.snapshot = Snapshot.build({SECRET: [*base, *extra]})
        for notify in list(self._watchers):
            notify(self.snapshot)

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        server = grpc.aio.server()
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(self, server)
        await serve_grpc(server, self.socket_path)
        self._server = server
        log.debug("SDS listening on %s", self.socket_path)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=0.2)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    # -- gRPC ------------------------------------------------------------------------
    async def StreamSecrets(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream = AdsStream()
        inbox: asyncio.Queue[discovery_pb2.DiscoveryRequest | Snapshot | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for req in request_iterator:
                    inbox.put_nowait(req)
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                pass
            finally:
                inbox.put_nowait(None)

        reader = asyncio.create_task(read())
        self._watchers.add(inbox.put_nowait)
        self.streams += 1
        try:
            if self.snapshot is not None:
                stream.update(self.snapshot)
            while True:
                item = await inbox.get()
                if item is None:
                    return
                if not isinstance(item, Snapshot):
                    self._say_missing(item.resource_names)
                out = stream.update(item) if isinstance(item, Snapshot) else stream.receive(item)
                for ev in out.events:
                    if isinstance(ev, Nack):
                        self.last_nack = ev.message
                        log.warning("Envoy rejected its secrets (version %s): %s", ev.version, ev.message)
                for resp in out.responses:
                    yield resp
        finally:
            self.streams -= 1
            self._watchers.discard(inbox.put_nowait)
            reader.cancel()

    def _say_missing(self, requested: Iterable[str]) -> None:
        """A gateway listener names a certificate nobody provides: Envoy waits for it without
        a word and the listener never serves, so say which and how to provide it (once each)."""
        have = set(self.snapshot.slot(SECRET).resources) if self.snapshot is not None else set()
        for name in requested:
            if not name.startswith(GATEWAY_CERT_PREFIX) or name in have or name in self._missing_told:
                continue
            if len(self._missing_told) >= MAX_MISSING_TOLD:
                return
            self._missing_told.add(name)
            cert = name[len(GATEWAY_CERT_PREFIX):]
            log.warning("gateway certificate %s is named by a listener but nothing provides it: put %s/tls.crt and"
                        " tls.key in --certs-dir, or apply a GatewayCertificate named %s; until then that"
                        " listener does not serve", cert, cert, cert)  # fmt: skip

    async def FetchSecrets(
        self, request: discovery_pb2.DiscoveryRequest, context: grpc.aio.ServicerContext
    ) -> discovery_pb2.DiscoveryResponse:
        if self.snapshot is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no certificate yet")
        assert self.snapshot is not None
        slot = self.snapshot.slot(SECRET)
        resp = discovery_pb2.DiscoveryResponse(version_info=slot.version, type_url=SECRET)
        resp.resources.extend(slot.subset(sorted(request.resource_names)))
        return resp
