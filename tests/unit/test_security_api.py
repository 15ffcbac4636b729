"""The API with authentication on: 401 / 403 rules, tokens, certificates, CA validation, xDS over TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import stat
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshline.controlplane.app import ControlPlane
from meshline.controlplane.factory import build_control_plane
from meshline.controlplane.settings import Settings
from meshline.security import crypto
from meshline.security.authn import REDACTED
from meshline.security.tokens import Claims, TokenService
from meshline.security.workload_identity import make_csr
from meshline.xds.snapshot import CLUSTER
from tests.unit.test_security_ca import make_ca, pem

ORDERS = "spiffe://meshline.local/default/orders"


def dataplane(name: str, service: str, port: int = 8080) -> dict[str, Any]:
    return {
        "kind": "Dataplane",
        "mesh": "default",
        "name": name,
        "spec": {"address": "127.0.0.1", "inbound": [{"port": port, "servicePort": port + 1, "tags": {"service": service}}]},
    }


class Cp:
    def __init__(self, cp: ControlPlane, data_dir: Path) -> None:
        self.cp = cp
        self.data_dir = data_dir
        self.admin = (data_dir / "admin.token").read_text().strip()
        self.http = httpx.AsyncClient(base_url=cp.api_url, timeout=10)

    @property
    def tokens(self) -> TokenService:
        svc = self.cp.ctx.services["tokens"]
        assert isinstance(svc, TokenService)
        return svc

    async def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.http.request(method, path, headers=headers, **kw)

    async def issue(self, **body: Any) -> str:
        r = await self.call("POST", "/api/v1/tokens", self.admin, json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


@pytest.fixture
async def cp(tmp_path: Path) -> Cp:
    settings = Settings(
        data_dir=tmp_path,
        store_url=f"sqlite:///{tmp_path / 'meshline.db'}",
        api_address="127.0.0.1:0",
        xds_address="127.0.0.1:0",
        auth=True,
        debounce=0.001,
    )
    plane = build_control_plane(settings)
    await plane.start()
    c = Cp(plane, tmp_path)
    yield c  # type: ignore[misc]
    await c.http.aclose()
    await plane.stop()


# -- authentication ---------------------------------------------------------------------


async def test_health_and_openapi_need_no_token_everything_else_does(cp: Cp) -> None:
    assert (await cp.call("GET", "/api/v1/health")).status_code == 200
    assert (await cp.call("GET", "/openapi.json")).status_code == 200
    r = await cp.call("GET", "/api/v1/meshes")
    assert r.status_code == 401 and "Bearer" in r.json()["message"]
    r = await cp.http.get("/api/v1/meshes", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401 and "Bearer" in r.json()["message"]


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "eyJ.eyJ.sig"])
async def test_garbage_token_is_401(cp: Cp, token: str) -> None:
    r = await cp.call("GET", "/api/v1/meshes", token)
    assert r.status_code == 401 and "malformed" in r.json()["message"] or "not" in r.json()["message"]


async def test_expired_foreign_and_revoked_tokens_are_401(cp: Cp) -> None:
    expired = cp.tokens.codec.encode(Claims("deadbeef", "admin", 1.0, 2.0))
    r = await cp.call("GET", "/api/v1/meshes", expired)
    assert r.status_code == 401 and "expired" in r.json()["message"]

    from meshline.security.tokens import TokenCodec

    foreign = TokenCodec(crypto.new_ec_key()).encode(Claims("cafe", "admin", 1.0, 4e9))
    r = await cp.call("GET", "/api/v1/meshes", foreign)
    assert r.status_code == 401 and "not issued by this control plane" in r.json()["message"]

    ro = await cp.issue(kind="readonly")
    assert (await cp.call("GET", "/api/v1/meshes", ro)).status_code == 200
    [item] = [i for i in (await cp.call("GET", "/api/v1/tokens", cp.admin)).json()["items"] if i["kind"] == "readonly"]
    assert (await cp.call("POST", f"/api/v1/tokens/{item['id']}/revoke", cp.admin)).status_code == 200
    r = await cp.call("GET", "/api/v1/meshes", ro)
    assert r.status_code == 401 and "revoked" in r.json()["message"]
    listed = (await cp.call("GET", "/api/v1/tokens", cp.admin)).json()["items"]
    assert [i["state"] for i in listed if i["id"] == item["id"]] == ["revoked"]


async def test_admin_token_file_is_private_and_reused(cp: Cp) -> None:
    path = cp.data_dir / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((cp.data_dir / "kek").stat().st_mode) == 0o600
    assert (await cp.call("GET", "/api/v1/meshes", cp.admin)).status_code == 200


# -- authorization ----------------------------------------------------------------------


async def test_readonly_cannot_write(cp: Cp) -> None:
    ro = await cp.issue(kind="readonly")
    assert (await cp.call("GET", "/api/v1/meshes/default", ro)).status_code == 200
    r = await cp.call("PUT", "/api/v1/meshes/default/dataplanes/x", ro, json=dataplane("x", "orders"))
    assert r.status_code == 403 and "read-only" in r.json()["message"]
    r = await cp.call("POST", "/api/v1/apply", ro, json={"resources": [dataplane("x", "orders")]})
    assert r.status_code == 403
    r = await cp.call("DELETE", "/api/v1/meshes/default", ro)
    assert r.status_code == 403


async def test_mesh_token_stays_in_its_mesh(cp: Cp) -> None:
    await cp.call("PUT", "/api/v1/meshes/other", cp.admin, json={"kind": "Mesh", "name": "other"})
    mt = await cp.issue(kind="mesh", mesh="default")
    assert (await cp.call("PUT", "/api/v1/meshes/default/dataplanes/a", mt, json=dataplane("a", "orders"))).status_code == 201
    doc = dataplane("b", "orders") | {"mesh": "other"}
    assert (await cp.call("PUT", "/api/v1/meshes/other/dataplanes/b", mt, json=doc)).status_code == 403
    assert (await cp.call("GET", "/api/v1/meshes/other/dataplanes", mt)).status_code == 403
    assert [m["name"] for m in (await cp.call("GET", "/api/v1/meshes", mt)).json()["items"]] == ["default"]
    # an apply that strays outside the mesh writes nothing at all
    before = await cp.cp.store.revision()
    r = await cp.call("POST", "/api/v1/apply", mt, json={"resources": [dataplane("c", "orders"), doc]})
    assert r.status_code == 403
    assert await cp.cp.store.revision() == before
    # tokens are for admins only
    assert (await cp.call("POST", "/api/v1/tokens", mt, json={"kind": "admin"})).status_code == 403
    assert (await cp.call("GET", "/api/v1/tokens", mt)).status_code == 403


async def test_dataplane_token_may_only_manage_its_own_service(cp: Cp) -> None:
    await cp.call("PUT", "/api/v1/meshes/default/dataplanes/pay-1", cp.admin, json=dataplane("pay-1", "payments"))
    dp = await cp.issue(kind="dataplane", mesh="default", service="orders")
    url = "/api/v1/meshes/default/dataplanes"
    assert (await cp.call("PUT", f"{url}/orders-1", dp, json=dataplane("orders-1", "orders"))).status_code == 201
    assert (await cp.call("DELETE", f"{url}/orders-1", dp)).status_code == 200
    r = await cp.call("PUT", f"{url}/x", dp, json=dataplane("x", "payments"))
    assert r.status_code == 403 and "for service 'orders'" in r.json()["message"]
    # not by replacing another service's dataplane with one of its own either
    r = await cp.call("PUT", f"{url}/pay-1", dp, json=dataplane("pay-1", "orders"))
    assert r.status_code == 403
    assert (await cp.call("DELETE", f"{url}/pay-1", dp)).status_code == 403
    r = await cp.call("PUT", "/api/v1/meshes/default", dp, json={"kind": "Mesh", "name": "default"})
    assert r.status_code == 403
    pinned = await cp.issue(kind="dataplane", mesh="default", service="orders", dataplane="orders-1")
    r = await cp.call("PUT", f"{url}/orders-2", pinned, json=dataplane("orders-2", "orders"))
    assert r.status_code == 403 and "orders-1" in r.json()["message"]


async def test_internal_kinds_cannot_be_applied(cp: Cp) -> None:
    doc = {"kind": "IssuedToken", "name": "x", "spec": {"kind": "admin", "issuedAt": 0, "expiresAt": 9e9}}
    r = await cp.call("POST", "/api/v1/apply", cp.admin, json={"resources": [doc]})
    assert r.status_code == 422 and "managed by the control plane" in r.text


# -- certificates -----------------------------------------------------------------------


async def test_dataplane_gets_a_certificate_for_its_service_only(cp: Cp) -> None:
    dp = await cp.issue(kind="dataplane", mesh="default", service="orders", dataplane="orders-1")
    url = "/api/v1/meshes/default/certificates"
    key = crypto.new_ec_key()
    r = await cp.call("POST", url, dp, json={"csr": make_csr(key)})
    assert r.status_code == 200, r.text
    body = r.json()
    leaf = x509.load_pem_x509_certificates(body["certChain"].encode())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(ORDERS)] and body["identity"] == ORDERS
    assert leaf.public_key() == key.public_key()
    root = x509.load_pem_x509_certificates(body["trustBundle"].encode())[0]
    leaf.verify_directly_issued_by(root)
    assert abs(body["expiresAt"] - (leaf.not_valid_after_utc.timestamp())) < 1
    assert body["expiresAt"] - crypto.utcnow().timestamp() == pytest.approx(86400, abs=5)

    # status and metrics show the expiry, for this dataplane
    await cp.call("PUT", "/api/v1/meshes/default/dataplanes/orders-1", dp, json=dataplane("orders-1", "orders"))
    st = (await cp.call("GET", "/api/v1/meshes/default/dataplanes/orders-1", cp.admin)).json()["status"]
    assert st["certExpiresAt"] == body["expiresAt"]
    metrics = (await cp.http.get("/metrics")).text
    assert f'meshline_certificate_expiry_timestamp_seconds{{mesh="default",dataplane="orders-1"}} {body["expiresAt"]}' in metrics


async def test_refused_certificate_requests_store_nothing(cp: Cp) -> None:
    dp = await cp.issue(kind="dataplane", mesh="default", service="orders")
    url = "/api/v1/meshes/default/certificates"
    before = await cp.cp.store.revision()
    other = make_csr(crypto.new_ec_key(), "spiffe://meshline.local/default/payments")
    r = await cp.call("POST", url, dp, json={"csr": other})
    assert r.status_code == 403 and "payments" in r.json()["message"]
    r = await cp.call("POST", url, dp, json={"csr": make_csr(crypto.new_ec_key()), "service": "payments"})
    assert r.status_code == 403 and "service 'orders'" in r.json()["message"]
    r = await cp.call("POST", url, dp, json={"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAA==\n"})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "csr"
    r = await cp.call("POST", url, dp, json={})
    assert r.status_code == 422
    r = await cp.call("POST", "/api/v1/meshes/other/certificates", dp, json={"csr": make_csr(crypto.new_ec_key())})
    assert r.status_code == 403
    ro = await cp.issue(kind="readonly")
    assert (await cp.call("POST", url, ro, json={"csr": make_csr(crypto.new_ec_key()), "service": "x"})).status_code == 403
    assert (await cp.call("POST", url, None, json={"csr": make_csr(crypto.new_ec_key())})).status_code == 401
    assert await cp.cp.store.revision() == before + 1  # only the readonly token's record


async def test_provided_ca_is_validated_on_apply_and_nothing_is_stored(cp: Cp) -> None:
    cert, _ = make_ca("Corp")
    _, wrong = make_ca("Other")
    mesh = {"kind": "Mesh", "name": "corp", "spec": {"mtls": {"ca": {"type": "provided", "cert": pem(cert), "key": crypto.key_pem(wrong)}}}}
    before = await cp.cp.store.revision()
    r = await cp.call("POST", "/api/v1/apply", cp.admin, json={"resources": [mesh]})
    assert r.status_code == 422
    problems = r.json()["problems"]
    assert any(p["path"].endswith("spec.mtls.ca.key") and "does not match" in p["message"] for p in problems), problems
    r = await cp.call("PUT", "/api/v1/meshes/corp", cp.admin, json=mesh)
    assert r.status_code == 422 and "spec.mtls.ca.key" in r.text
    assert await cp.cp.store.revision() == before


async def test_provided_ca_key_is_only_shown_to_admins(cp: Cp) -> None:
    cert, key = make_ca("Corp")
    mesh = {"kind": "Mesh", "name": "corp", "spec": {"mtls": {"ca": {"type": "provided", "cert": pem(cert), "key": crypto.key_pem(key)}}}}
    assert (await cp.call("PUT", "/api/v1/meshes/corp", cp.admin, json=mesh)).status_code == 201
    ro = await cp.issue(kind="readonly")
    for path in ("/api/v1/meshes/corp", "/api/v1/meshes"):
        text = (await cp.call("GET", path, ro)).text
        assert "PRIVATE KEY" not in text and REDACTED in text
    # admins read the key back sealed (it is stored sealed); applying that again changes nothing
    stored = (await cp.call("GET", "/api/v1/meshes/corp", cp.admin)).json()
    assert "PRIVATE KEY" not in json.dumps(stored) and stored["spec"]["mtls"]["ca"]["key"].startswith("kek1:")
    again = await cp.call("PUT", "/api/v1/meshes/corp", cp.admin, json={k: stored[k] for k in ("kind", "name", "spec")})
    assert again.status_code == 200 and again.json()["version"] == stored["version"]
    # the mesh's CA is that one
    await asyncio.sleep(0.05)
    r = await cp.call("POST", "/api/v1/meshes/corp/certificates", cp.admin, json={"csr": make_csr(crypto.new_ec_key()), "service": "a"})
    assert r.status_code == 200
    assert x509.load_pem_x509_certificate(r.json()["trustBundle"].encode()) == cert


async def test_builtin_ca_rotation_endpoint(cp: Cp) -> None:
    csr = {"csr": make_csr(crypto.new_ec_key()), "service": "orders"}
    assert (await cp.call("POST", "/api/v1/meshes/default/certificates", cp.admin, json=csr)).status_code == 200
    r = await cp.call("GET", "/api/v1/ca/default/trust-bundle", cp.admin)
    v1 = r.json()["version"]
    mt = await cp.issue(kind="mesh", mesh="default")
    r = await cp.call("POST", "/api/v1/ca/default/rotate", mt)
    assert r.status_code == 200 and r.json()["rotating"]["id"]
    r = await cp.call("GET", "/api/v1/ca/default/trust-bundle", cp.admin, params={"version": v1, "wait": "5"})
    assert r.json()["version"] != v1 and r.json()["roots"] == 2
    ro = await cp.issue(kind="readonly")
    assert (await cp.call("POST", "/api/v1/ca/default/rotate", ro)).status_code == 403
    assert (await cp.call("GET", "/api/v1/ca/default", ro)).status_code == 200


# -- xDS --------------------------------------------------------------------------------


async def _ads_first_response(cp: Cp, node: str, token: str | None, tls: bool = True) -> discovery_pb2.DiscoveryResponse:
    target = f"127.0.0.1:{cp.cp.xds_port}"
    if tls:
        creds = grpc.ssl_channel_credentials(root_certificates=(cp.data_dir / "cp-ca.pem").read_bytes())
        channel = grpc.aio.secure_channel(target, creds)
    else:
        channel = grpc.aio.insecure_channel(target)
    async with channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        md = (("authorization", f"Bearer {token}"),) if token else ()
        call = stub.StreamAggregatedResources(metadata=md, wait_for_ready=False)
        await call.write(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=node), type_url=CLUSTER))
        return await asyncio.wait_for(call.read(), 5)  # type: ignore[return-value]


async def test_xds_is_tls_and_checks_the_token_against_the_node(cp: Cp) -> None:
    dp = await cp.issue(kind="dataplane", mesh="default", service="orders")
    await cp.call("PUT", "/api/v1/meshes/default/dataplanes/orders-1", cp.admin, json=dataplane("orders-1", "orders"))
    await cp.call("PUT", "/api/v1/meshes/default/dataplanes/pay-1", cp.admin, json=dataplane("pay-1", "payments", 9090))
    resp = await _ads_first_response(cp, "default.orders-1", dp)
    assert resp.type_url == CLUSTER

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _ads_first_response(cp, "default.pay-1", dp)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "serves payments" in (err.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _ads_first_response(cp, "default.orders-1", None)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    await cp.tokens.revoke(cp.tokens.verify(dp).id)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _ads_first_response(cp, "default.orders-1", dp)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in (err.value.details() or "")

    with pytest.raises((grpc.aio.AioRpcError, TimeoutError)):
        await _ads_first_response(cp, "default.orders-1", cp.admin, tls=False)


def test_server_certificate_covers_local_names(tmp_path: Path) -> None:
    from meshline.security.xds_auth import server_tls

    ca_key = crypto.new_ec_key()
    ca = crypto.new_root("t", ca_key)
    os.environ["MESHLINE_XDS_CERT_SANS"] = "cp.example.com,10.1.2.3"
    try:
        tls = server_tls(ca, ca_key, "0.0.0.0")
    finally:
        del os.environ["MESHLINE_XDS_CERT_SANS"]
    cert = x509.load_pem_x509_certificate(tls.cert_chain_pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "cp.example.com"} <= set(san.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "10.1.2.3"} <= {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > dt.timedelta(days=365)
