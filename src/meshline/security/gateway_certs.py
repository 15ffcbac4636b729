"""A gateway's listener certificates, read from files on its host and served by its SDS.

``meshline gateway --certs-dir DIR``: each certificate a MeshGateway listener names is
``DIR/<name>/tls.crt`` (the chain, leaf first) and ``DIR/<name>/tls.key`` (its private key),
the layout of a mounted Kubernetes TLS Secret. The agent checks each pair (the key matches the
leaf, the leaf is valid now) and serves the good ones as SDS secrets
(``names.gateway_certificate_secret``). It looks again every ``interval`` seconds; a pair whose
files changed is checked and served again, so replacing a certificate (write both files, or
swap the directory) takes effect for new handshakes while open connections keep theirs. A pair
that fails its check (a half-written replacement, a key of another certificate, an expired
certificate) is reported once and the last good one stays served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from meshline.core.tls_pair import (
    CERT_FILE,
    KEY_FILE,
    CertificatePair,
    CertificateProblem,
    check_pair,
    load_certs,
)
from meshline.xds import names

log = logging.getLogger("meshline.security.gateway_certs")

MAX_FILE = 1 << 20  # a certificate chain or key file larger than this is not one
MAX_CERTIFICATES = 1000


def secret(pair: CertificatePair) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=names.gateway_certificate_secret(pair.name),
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=pair.chain_pem),
            private_key=base_pb2.DataSource(inline_bytes=pair.key_pem),
        ),
    )


def dns_names(chain_pem: bytes) -> list[str]:
    """The DNS names of the leaf (for messages and tests)."""
    leaf = load_certs(chain_pem)[0]
    try:
        ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value.get_values_for_type(x509.DNSName))


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise CertificateProblem(f"{path} is larger than {MAX_FILE} bytes; it is not a certificate or key")
    return data


class CertificateFiles:
    """Watches a certs dir and hands the good pairs, as SDS secrets, to ``publish``."""

    def __init__(self, directory: Path, publish: Callable[[dict[str, secret_pb2.Secret]], None],
                 interval: float = 1.0) -> None:  # fmt: skip
        self.directory = directory
        self.publish = publish
        self.interval = interval
        self.pairs: dict[str, CertificatePair] = {}
        self.problems: dict[str, str] = {}
        self._seen: dict[str, tuple[int, int, int, int]] = {}
        self._task: asyncio.Task[None] | None = None

    def scan(self) -> bool:
        """Look at the files once; True when what is served changed."""
        changed = False
        found: set[str] = set()
        entries = sorted(p for p in self.directory.iterdir() if p.is_dir())[:MAX_CERTIFICATES]
        for entry in entries:
            crt, key = entry / CERT_FILE, entry / KEY_FILE
            try:
                cs, ks = crt.stat(), key.stat()
            except OSError:
                continue
            found.add(entry.name)
            stamp = (cs.st_mtime_ns, cs.st_size, ks.st_mtime_ns, ks.st_size)
            if self._seen.get(entry.name) == stamp:
                continue
            self._seen[entry.name] = stamp
            try:
                pair = check_pair(entry.name, _read(crt), _read(key))
            except (CertificateProblem, OSError) as err:
                if self.problems.get(entry.name) != str(err):
                    log.warning("gateway certificate %s not served: %s", entry.name, err)
                self.problems[entry.name] = str(err)
                continue
            self.problems.pop(entry.name, None)
            if self.pairs.get(entry.name) != pair:
                self.pairs[entry.name] = pair
                changed = True
                log.info("serving gateway certificate %s (expires %s)", entry.name, pair.not_after.isoformat())
        for gone in set(self.pairs) - found:
            del self.pairs[gone]
            self._seen.pop(gone, None)
            changed = True
        return changed

    def secrets(self) -> dict[str, secret_pb2.Secret]:
        return {names.gateway_certificate_secret(n): secret(p) for n, p in self.pairs.items()}

    async def start(self) -> None:
        self.scan()
        self.publish(self.secrets())
        self._task = asyncio.create_task(self._loop(), name="gateway-certs")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                if self.scan():
                    self.publish(self.secrets())
            except OSError as err:
                log.warning("cannot read the gateway certs dir %s: %s", self.directory, err)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class StoredCertificates:
    """The GatewayCertificates a gateway's listeners name, fetched from the control plane
    (``GET /api/v1/meshes/{mesh}/gateways/{gateway}/certificates`` with the gateway's dataplane
    token) every ``interval`` seconds; each pair is checked as a file's is, and the good ones go
    to ``publish``. A failed fetch keeps what is served."""

    def __init__(self, api: Any, mesh: str, gateway: str, publish: Callable[[dict[str, secret_pb2.Secret]], None],
                 interval: float = 2.0) -> None:  # fmt: skip
        self.api = api
        self.path = f"/api/v1/meshes/{mesh}/gateways/{gateway}/certificates"
        self.publish = publish
        self.interval = interval
        self.pairs: dict[str, CertificatePair] = {}
        self._task: asyncio.Task[None] | None = None
        self._said = ""

    async def fetch(self) -> bool:
        """Look once; True when what is served changed."""
        try:
            data = await self.api.request("GET", self.path)
        except Exception as err:  # the control plane is away or the gateway not applied yet: keep serving
            if str(err) != self._said:
                self._said = str(err)
                log.warning("cannot fetch the gateway's certificates (%s); keeping the ones served", err)
            return False
        found: dict[str, CertificatePair] = {}
        for item in (data or {}).get("items", [])[:MAX_CERTIFICATES]:
            name = str(item.get("name", ""))
            try:
                found[name] = check_pair(name, str(item.get("certificate", "")).encode(),
                                         str(item.get("privateKey", "")).encode())  # fmt: skip
            except CertificateProblem as err:
                log.warning("stored gateway certificate %s not served: %s", name, err)
                if name in self.pairs:
                    found[name] = self.pairs[name]
        if found == self.pairs:
            return False
        self.pairs = found
        return True

    def secrets(self) -> dict[str, secret_pb2.Secret]:
        return {names.gateway_certificate_secret(n): secret(p) for n, p in self.pairs.items()}

    async def start(self) -> None:
        await self.fetch()
        self.publish(self.secrets())
        self._task = asyncio.create_task(self._loop(), name="gateway-stored-certs")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if await self.fetch():
                self.publish(self.secrets())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
