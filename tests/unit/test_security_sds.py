"""The agent's SDS server (real gRPC over a Unix socket) and the workload identity manager (fake API)."""

from __future__ import annotations

import asyncio
import contextlib
import stat
import tempfile
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from meshline.core.errors import Forbidden, Unavailable
from meshline.security import crypto
from meshline.security.sds import IdentityMaterial, SdsServer
from meshline.security.workload_identity import WorkloadIdentity
from meshline.xds import names
from meshline.xds.snapshot import SECRET


def material(n: int = 1, bundle: str = "bundle-1", ca: str = "ca-1") -> IdentityMaterial:
    return IdentityMaterial(
        identity="spiffe://meshline.local/default/orders",
        key_pem=f"key-{n}",
        cert_chain_pem=f"chain-{n}",
        trust_bundle_pem=bundle,
        expires_at=2000.0,
        issued_at=1000.0,
        ca_id=ca,
        bundle_version=bundle,
    )


@pytest.fixture
def socket_path() -> Any:
    # Unix socket paths must be short; pytest's tmp_path may be too long
    with tempfile.TemporaryDirectory(prefix="sds") as d:
        yield Path(d) / "work" / "sds.sock"


def secrets_of(resp: discovery_pb2.DiscoveryResponse) -> dict[str, secret_pb2.Secret]:
    out = {}
    for a in resp.resources:
        s = secret_pb2.Secret()
        a.Unpack(s)
        out[s.name] = s
    return out


async def test_sds_serves_secrets_by_name_and_pushes_changes_after_ack(socket_path: Path) -> None:
    server = SdsServer(socket_path)
    server.update(material(1))
    await server.start()
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
    try:
        async with grpc.aio.insecure_channel(f"unix:{socket_path}") as ch:
            stub = sds_pb2_grpc.SecretDiscoveryServiceStub(ch)
            call = stub.StreamSecrets()
            await call.write(
                discovery_pb2.DiscoveryRequest(
                    node=base_pb2.Node(id="default.orders-1"),
                    type_url=SECRET,
                    resource_names=[names.IDENTITY_SECRET],
                )
            )
            first = await asyncio.wait_for(call.read(), 5)
            assert isinstance(first, discovery_pb2.DiscoveryResponse)
            got = secrets_of(first)
            assert list(got) == [names.IDENTITY_SECRET]  # only what was asked for
            cert = got[names.IDENTITY_SECRET].tls_certificate
            assert cert.certificate_chain.inline_bytes == b"chain-1" and cert.private_key.inline_bytes == b"key-1"

            # ACK it; a renewal is pushed on the same stream
            await call.write(
                discovery_pb2.DiscoveryRequest(
                    type_url=SECRET,
                    version_info=first.version_info,
                    response_nonce=first.nonce,
                    resource_names=[names.IDENTITY_SECRET],
                )
            )
            server.update(material(2))
            second = await asyncio.wait_for(call.read(), 5)
            assert isinstance(second, discovery_pb2.DiscoveryResponse)
            assert secrets_of(second)[names.IDENTITY_SECRET].tls_certificate.private_key.inline_bytes == b"key-2"
            assert second.version_info != first.version_info

            # the trust bundle is a validation context
            call2 = stub.StreamSecrets()
            await call2.write(
                discovery_pb2.DiscoveryRequest(type_url=SECRET, resource_names=[names.TRUST_BUNDLE_SECRET])
            )
            bundle = await asyncio.wait_for(call2.read(), 5)
            assert isinstance(bundle, discovery_pb2.DiscoveryResponse)
            vc = secrets_of(bundle)[names.TRUST_BUNDLE_SECRET].validation_context
            assert vc.trusted_ca.inline_bytes == b"bundle-1"

            # a NACK is remembered and the rejected version is not sent again
            await call.write(
                discovery_pb2.DiscoveryRequest(
                    type_url=SECRET,
                    version_info=first.version_info,
                    response_nonce=second.nonce,
                    resource_names=[names.IDENTITY_SECRET],
                    error_detail={"message": "bad key"},
                )
            )
            for _ in range(50):
                if server.last_nack:
                    break
                await asyncio.sleep(0.01)
            assert server.last_nack == "bad key"
            call.cancel()
            call2.cancel()
    finally:
        await server.stop()
    assert not socket_path.exists()


class FakeApi:
    url = "http://cp"

    def __init__(self) -> None:
        self.signed: list[dict[str, Any]] = []
        self.ca = "ca-1"
        self.bundle = "B1"
        self.version = "v1"
        self.fail: Exception | None = None
        self.lifetime = 100.0
        self.changed = asyncio.Event()

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        if method == "POST":
            if self.fail is not None:
                raise self.fail
            self.signed.append(kw["json"])
            csr = x509.load_pem_x509_csr(kw["json"]["csr"].encode())
            assert csr.is_signature_valid
            return {
                "identity": "spiffe://meshline.local/default/orders",
                "certChain": f"chain-{len(self.signed)}",
                "trustBundle": self.bundle,
                "trustBundleVersion": self.version,
                "expiresAt": crypto.utcnow().timestamp() + self.lifetime,
                "caId": self.ca,
            }
        params = kw["params"]
        if params["version"] == self.version:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), float(params["wait"]))
        return {"trustBundle": self.bundle, "version": self.version, "caId": self.ca, "roots": 2}

    def rotate(self, bundle: str, version: str, ca: str | None = None) -> None:
        self.bundle, self.version = bundle, version
        if ca:
            self.ca = ca
        self.changed.set()


async def test_identity_renews_between_half_and_two_thirds_of_the_lifetime() -> None:
    api = FakeApi()
    updates: list[IdentityMaterial] = []
    ident = WorkloadIdentity(api, "default", "orders", "orders-1", updates.append)
    for _ in range(200):
        m = material()
        at = ident.renew_at(m)
        assert 1500 <= at <= 1660
    api.lifetime = 0.4  # renewal due after 0.2-0.26 s
    first = await ident.start()
    assert first.key_pem.startswith("-----BEGIN PRIVATE KEY")
    assert api.signed[0]["service"] == "orders" and api.signed[0]["dataplane"] == "orders-1"
    await asyncio.sleep(0.35)
    await ident.stop()
    assert ident.renewals >= 1
    keys = {u.key_pem for u in updates}
    assert len(keys) == len(updates)  # a fresh private key for every certificate


async def test_new_root_goes_to_envoy_and_a_new_signing_ca_triggers_renewal() -> None:
    api = FakeApi()
    updates: list[IdentityMaterial] = []
    ident = WorkloadIdentity(api, "default", "orders", None, updates.append, bundle_wait=5)
    api.lifetime = 3600
    await ident.start()
    await asyncio.sleep(0.05)
    api.rotate("B1+B2", "v2")  # new root trusted, still signed by ca-1
    for _ in range(100):
        if updates[-1].trust_bundle_pem == "B1+B2":
            break
        await asyncio.sleep(0.01)
    assert updates[-1].trust_bundle_pem == "B1+B2" and len(api.signed) == 1
    api.rotate("B1+B2", "v3", ca="ca-2")  # the new CA signs now: renew
    for _ in range(200):
        if len(api.signed) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(api.signed) == 2 and ident.material is not None and ident.material.ca_id == "ca-2"
    await ident.stop()


async def test_identity_start_errors() -> None:
    api = FakeApi()
    api.fail = Forbidden("dataplane token is for service 'payments'")
    ident = WorkloadIdentity(api, "default", "orders", None, lambda m: None)
    with pytest.raises(Forbidden, match="payments"):
        await ident.start(timeout=5)
    api.fail = Unavailable("cannot reach")
    with pytest.raises(Unavailable, match="cannot get a certificate"):
        await ident.start(timeout=0.1)
