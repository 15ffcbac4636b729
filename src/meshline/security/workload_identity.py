"""The agent side of workload identity: a local key, a CSR, a certificate, renewals.

:class:`WorkloadIdentity` generates the workload's P-256 private key on this host
(it is never sent anywhere), sends a CSR to ``POST /api/v1/meshes/{mesh}/certificates``
with the dataplane token, and hands the result to a callback (the SDS server). It
renews with a fresh key at a random point between 50% and 66% of the certificate's
lifetime, and at once when the mesh's signing CA changes; it long-polls the trust
bundle so a new root reaches Envoy before any peer presents a certificate it signed.

:class:`SdsService` puts both together as one of the agent's local services
(started after registration, before Envoy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from meshline.core.errors import MeshlineError, Unavailable
from meshline.core.tasks import wait_set
from meshline.security import crypto
from meshline.security.sds import IdentityMaterial, SdsServer

if TYPE_CHECKING:
    from meshline.agent.config import AgentConfig

log = logging.getLogger("meshline.security.identity")

RENEW_FROM = 0.50
RENEW_TO = 0.66
BUNDLE_WAIT = 30.0  # seconds per trust-bundle long poll
RETRY_MIN = 0.5
RETRY_MAX = 30.0


class Api(Protocol):
    """The part of :class:`meshline.api.client.AsyncApiClient` used here."""

    url: str

    async def request(self, method: str, path: str, **kw: Any) -> Any: ...


def make_csr(key: crypto.PrivateKey, identity: str | None = None) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if identity:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


class WorkloadIdentity:
    def __init__(
        self,
        api: Api,
        mesh: str,
        service: str,
        dataplane: str | None,
        on_update: Callable[[IdentityMaterial], None],
        *,
        report: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        bundle_wait: float = BUNDLE_WAIT,
    ) -> None:
        self.api = api
        self.mesh = mesh
        self.service = service
        self.dataplane = dataplane
        self.on_update = on_update
        self.report = report or (lambda msg: log.info("%s", msg))
        self.clock = clock
        self.bundle_wait = bundle_wait
        self.material: IdentityMaterial | None = None
        self.renewals = 0
        self._renew_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- one certificate -------------------------------------------------------------
    async def fetch(self) -> IdentityMaterial:
        """Make a key and a CSR, get the certificate. Raises MeshlineError (Unavailable: retry)."""
        key = crypto.new_ec_key()
        body = {"csr": make_csr(key), "service": self.service}
        if self.dataplane:
            body["dataplane"] = self.dataplane
        now = self.clock()
        data = await self.api.request("POST", f"/api/v1/meshes/{self.mesh}/certificates", json=body)
        return IdentityMaterial(
            identity=str(data["identity"]),
            key_pem=crypto.key_pem(key),
            cert_chain_pem=str(data["certChain"]),
            trust_bundle_pem=str(data["trustBundle"]),
            expires_at=float(data["expiresAt"]),
            issued_at=now,
            ca_id=str(data.get("caId", "")),
            bundle_version=str(data.get("trustBundleVersion", "")),
        )

    def _set(self, material: IdentityMaterial) -> None:
        self.material = material
        self.on_update(material)

    def renew_at(self, m: IdentityMaterial) -> float:
        lifetime = max(0.0, m.expires_at - m.issued_at)
        return m.issued_at + lifetime * random.uniform(RENEW_FROM, RENEW_TO)

    # -- lifecycle -------------------------------------------------------------------
    async def start(self, timeout: float = 30.0) -> IdentityMaterial:
        """Get the first certificate (retrying while the control plane is unreachable for
        up to ``timeout`` s; any other error is final), then keep it fresh in the background."""
        deadline = self.clock() + timeout
        delay = RETRY_MIN
        while True:
            try:
                material = await self.fetch()
                break
            except Unavailable as err:
                if self.clock() + delay > deadline:
                    raise Unavailable(f"cannot get a certificate for {self.service}: {err}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
        self._set(material)
        self._tasks = [
            asyncio.create_task(self._renew_loop(), name="identity-renew"),
            asyncio.create_task(self._bundle_loop(), name="identity-bundle"),
        ]
        return material

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def renew_soon(self) -> None:
        self._renew_now.set()

    async def _renew_loop(self) -> None:
        while True:
            m = self.material
            assert m is not None
            wait = max(0.0, self.renew_at(m) - self.clock())
            await wait_set(self._renew_now, wait)
            self._renew_now.clear()
            await self._renew()

    async def _renew(self) -> None:
        delay = RETRY_MIN
        said = False
        while True:
            try:
                material = await self.fetch()
            except MeshlineError as err:
                m = self.material
                left = (m.expires_at - self.clock()) if m else 0.0
                if not said or left <= 0:
                    self.report(
                        f"cannot renew the certificate of {self.service} ({err});"
                        f" retrying, the current one expires in {max(0.0, left):.0f}s"
                    )
                    said = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            self.renewals += 1
            self._set(material)
            log.info("renewed the certificate of %s (expires %s)", material.identity, crypto.iso(material.expires_at))
            return

    async def _bundle_loop(self) -> None:
        """Long-poll the trust bundle: a new root goes to Envoy at once; a new signing CA
        means our certificate is from the old one, so renew."""
        delay = RETRY_MIN
        while True:
            m = self.material
            assert m is not None
            try:
                data = await self.api.request(
                    "GET",
                    f"/api/v1/ca/{self.mesh}/trust-bundle",
                    params={"version": m.bundle_version, "wait": str(self.bundle_wait)},
                    timeout=self.bundle_wait + 15,
                )
            except MeshlineError as err:
                log.debug("trust bundle poll failed: %s", err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_MIN
            m = self.material
            assert m is not None
            version = str(data.get("version", ""))
            if version == m.bundle_version:
                continue
            bundle = str(data.get("trustBundle", ""))
            if bundle and bundle != m.trust_bundle_pem:
                log.info("trust bundle of mesh %s changed (%s roots)", self.mesh, data.get("roots"))
            updated = IdentityMaterial(
                identity=m.identity,
                key_pem=m.key_pem,
                cert_chain_pem=m.cert_chain_pem,
                trust_bundle_pem=bundle or m.trust_bundle_pem,
                expires_at=m.expires_at,
                issued_at=m.issued_at,
                ca_id=m.ca_id,
                bundle_version=version,
            )
            self._set(updated)
            ca_id = str(data.get("caId", ""))
            if ca_id and ca_id != m.ca_id:
                # a short random delay spreads the renewals of a whole mesh
                await asyncio.sleep(random.uniform(0.0, 0.5))
                self.renew_soon()


class SdsService:
    """The agent's ``LocalService`` for workload identity: certificate + SDS socket."""

    name = "sds"

    def __init__(self, start_timeout: float = 30.0) -> None:
        self.start_timeout = start_timeout
        self.server: SdsServer | None = None
        self.identity: WorkloadIdentity | None = None
        self.certificates: Any = None  # a gateway's CertificateFiles
        self.stored: Any = None  # and its StoredCertificates
        self._api: Any = None

    async def start(self, config: AgentConfig) -> None:
        from meshline.api.client import AsyncApiClient

        verify: bool | str = str(config.ca_file) if config.ca_file else True
        self._api = AsyncApiClient(config.api_url, token=config.token or "", timeout=10.0, verify=verify)
        self.server = SdsServer(config.sds_path)
        self.identity = WorkloadIdentity(self._api, config.mesh, config.service, config.name, self.server.update)
        material = await self.identity.start(self.start_timeout)
        log.info("certificate for %s, expires %s", material.identity, crypto.iso(material.expires_at))
        if config.proxy == "gateway":  # its listener certificates, served by the same SDS
            await self._gateway_certificates(config)
        await self.server.start()

    async def _gateway_certificates(self, config: AgentConfig) -> None:
        """Files in --certs-dir, and the GatewayCertificates stored in the control plane (a file
        wins over a stored certificate of the same name: the host's operator chose it)."""
        from meshline.security.gateway_certs import CertificateFiles, StoredCertificates

        assert self.server is not None
        server = self.server
        parts: dict[str, dict[str, Any]] = {"stored": {}, "files": {}}

        def publish(part: str) -> Callable[[dict[str, Any]], None]:
            def update(secrets: dict[str, Any]) -> None:
                parts[part] = secrets
                server.update_extra({**parts["stored"], **parts["files"]})

            return update

        self.stored = StoredCertificates(self._api, config.mesh, config.service, publish("stored"))
        await self.stored.start()
        if config.certs_dir is not None:
            self.certificates = CertificateFiles(config.certs_dir, publish("files"))
            await self.certificates.start()

    async def stop(self) -> None:
        for part in (self.certificates, self.stored):
            if part is not None:
                await part.stop()
        if self.identity is not None:
            await self.identity.stop()
        if self.server is not None:
            await self.server.stop()
        if self._api is not None:
            await self._api.close()
            self._api = None
