"""TrafficPermission end to end: real control plane, real agents and Envoys, REAL mTLS (certificates
from each mesh's CA, served to Envoy over SDS by the agent), real HTTP and TCP servers.

Each test asserts what a caller sees (status, body, echoed bytes, a closed connection) and
where requests landed; the dry-run test reads the callee sidecar's RBAC stats. One control
plane serves the module (stopping one is slow); every test works in meshes of its own, which
are isolated tenants, so tests cannot see each other's permissions.
"""

from __future__ import annotations

import itertools
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import GrpcTestServer, HttpTestServer, TcpEchoServer, grpc_echo, tcp_exchange

pytestmark = pytest.mark.e2e

_mesh_numbers = itertools.count(1)


def default_deny_body(mesh: str) -> str:
    return (
        "RBAC: access denied: no TrafficPermission allows this request"
        f" and the default permission of mesh {mesh} is deny\n"
    )


def permission(
    mesh: str,
    name: str,
    action: str,
    *,
    to: str = "orders",
    sources: list[str] | None = None,
    mode: str = "enforce",
    rules: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"destinations": [{"match": {"service": to}}], "action": action, "mode": mode}
    if sources is not None:
        spec["sources"] = [{"match": {"service": s}} for s in sources]
    if rules:
        spec["rules"] = rules
    return {"kind": "TrafficPermission", "mesh": mesh, "name": name, "spec": spec}


def call(sc: Sidecar, path: str = "/hello", method: str = "GET") -> httpx.Response:
    return httpx.request(method, sc.url("orders") + path, timeout=5)


def eventually(check: Callable[[], Any], what: str, timeout: float = 15) -> Any:
    """Config reaches the sidecars a few ms after apply; wait for its observable effect."""
    return wait_until(check, timeout, what=what)


def counter(sc: Sidecar, name: str) -> int:
    return sc.stats(name).get(name, 0)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshHarness]:
    h = MeshHarness(tmp_path_factory.mktemp("security"), mtls="strict")
    h.start()
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture
def new_mesh(harness: MeshHarness) -> Iterator[Callable[..., str]]:
    """Makes meshes (own CA, own resources) for one test; kills their sidecars after it."""
    made: list[str] = []

    def make(mtls: str = "strict", **spec: Any) -> str:
        name = f"perm-{next(_mesh_numbers)}"
        harness.api.put({"kind": "Mesh", "name": name, "spec": {"mtls": {"mode": mtls}, **spec}})
        made.append(name)
        return name

    yield make
    for sc in harness.sidecars:
        if sc.mesh in made:
            sc.kill()


@pytest.fixture
def servers() -> Iterator[tuple[HttpTestServer, HttpTestServer]]:
    with HttpTestServer("orders-1") as orders, HttpTestServer("client-app") as client_app:
        yield orders, client_app


def demo(
    h: MeshHarness, mesh: str, servers: tuple[HttpTestServer, HttpTestServer]
) -> tuple[Sidecar, Sidecar, Sidecar]:
    """orders behind its sidecar; web and legacy call it through theirs."""
    orders, client_app = servers
    orders_sc = h.sidecar("orders", app_port=orders.port, mesh=mesh)
    web = h.sidecar("web", app_port=client_app.port, upstreams=["orders"], mesh=mesh)
    legacy = h.sidecar("legacy", app_port=client_app.port, upstreams=["orders"], mesh=mesh)
    return orders_sc, web, legacy


def test_strict_mesh_denies_by_default_and_allows_what_is_permitted(
    harness: MeshHarness, new_mesh: Callable[..., str], servers: tuple[HttpTestServer, HttpTestServer]
) -> None:
    mesh = new_mesh("strict")
    orders = servers[0]
    _, web, legacy = demo(harness, mesh, servers)

    r = eventually(lambda: (resp := call(web)).status_code == 403 and resp, "the default deny")
    assert r.text == default_deny_body(mesh)
    assert orders.count() == 0

    harness.apply([permission(mesh, "web-to-orders", "allow", sources=["web"])])
    r = eventually(lambda: (resp := call(web)).status_code == 200 and resp, "web allowed")
    assert r.json()["instance"] == "orders-1"
    # what the permission matched on: the caller's SPIFFE identity, proven by its mesh certificate
    headers = {k.lower(): v for k, v in r.json()["headers"].items()}
    assert f"spiffe://meshline.local/{mesh}/web" in headers.get("x-forwarded-client-cert", ""), headers

    seen = orders.count()
    r = call(legacy)
    assert (r.status_code, r.text) == (403, default_deny_body(mesh))
    assert orders.count() == seen


def test_denied_http_request_gets_403_naming_the_policy(
    harness: MeshHarness, new_mesh: Callable[..., str], servers: tuple[HttpTestServer, HttpTestServer]
) -> None:
    mesh = new_mesh("strict")
    orders = servers[0]
    _, web, legacy = demo(harness, mesh, servers)
    harness.apply(
        [
            permission(mesh, "anyone-to-orders", "allow"),
            permission(
                mesh,
                "deny-web-admin",
                "deny",
                sources=["web"],
                rules=[{"paths": [{"prefix": "/admin/"}], "methods": ["POST", "DELETE"]}],
            ),
        ]
    )
    eventually(
        lambda: call(web).status_code == 200 and call(web, "/admin/x", "POST").status_code == 403,
        "permissions applied",
    )

    before = orders.count()
    r = call(web, "/admin/users", "POST")
    assert (r.status_code, r.text) == (403, "RBAC: access denied by TrafficPermission deny-web-admin\n")
    assert orders.count() == before  # never reached the app
    # an escaped slash does not slip past the /admin/ rule (the app would decode it)
    assert call(web, "/admin%2Fusers", "POST").status_code == 403
    assert orders.count() == before

    assert call(web, "/admin/users", "GET").status_code == 200  # another method
    assert call(web, "/shop", "POST").status_code == 200  # another path
    assert call(legacy, "/admin/users", "POST").status_code == 200  # another caller
    assert [(q["method"], q["path"]) for q in orders.requests[before:]] == [
        ("GET", "/admin/users"),
        ("POST", "/shop"),
        ("POST", "/admin/users"),
    ]


def test_dry_run_lets_requests_through_and_records_would_be_denials(
    harness: MeshHarness, new_mesh: Callable[..., str], servers: tuple[HttpTestServer, HttpTestServer]
) -> None:
    mesh = new_mesh("strict")
    orders_sc, web, legacy = demo(harness, mesh, servers)
    harness.apply(
        [
            permission(mesh, "anyone-to-orders", "allow"),
            permission(mesh, "try-deny-web", "deny", sources=["web"], mode="dry-run"),
        ]
    )
    eventually(lambda: call(legacy).status_code == 200, "permissions applied")
    stats = f"http.inbound_{orders_sc.inbound_port}.rbac."
    base = counter(orders_sc, stats + "shadow_denied")
    denied_before = counter(orders_sc, stats + "denied")  # legacy's calls before the allow arrived

    for _ in range(5):
        r = call(web)
        assert r.status_code == 200 and r.json()["instance"] == "orders-1"
    for _ in range(3):
        assert call(legacy).status_code == 200

    assert counter(orders_sc, stats + "shadow_denied") - base == 5  # web's requests, not legacy's
    assert counter(orders_sc, stats + "policy.try-deny-web.shadow_denied") == 5
    assert counter(orders_sc, stats + "denied") - denied_before == 0

    harness.apply([permission(mesh, "try-deny-web", "deny", sources=["web"])])  # switch enforcement on
    r = eventually(lambda: (resp := call(web)).status_code == 403 and resp, "enforced")
    assert r.text == "RBAC: access denied by TrafficPermission try-deny-web\n"
    assert call(legacy).status_code == 200


def test_denied_grpc_call_gets_permission_denied_naming_the_policy(
    harness: MeshHarness, new_mesh: Callable[..., str], servers: tuple[HttpTestServer, HttpTestServer]
) -> None:
    mesh = new_mesh("strict")
    with GrpcTestServer("echo-1") as echo:
        harness.sidecar("echo", app_port=echo.port, protocol="grpc", mesh=mesh)
        web = harness.sidecar("web", app_port=servers[1].port, upstreams=["echo"], mesh=mesh)
        harness.apply([permission(mesh, "deny-web-echo", "deny", to="echo", sources=["web"])])

        def refusal() -> tuple[grpc.StatusCode, str] | None:
            try:
                grpc_echo(f"127.0.0.1:{web.port('echo')}")
            except grpc.RpcError as err:
                if "deny-web-echo" in (err.details() or ""):
                    return err.code(), err.details()
            return None

        code, details = eventually(refusal, "the gRPC call refused by the policy")
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert details.strip() == "RBAC: access denied by TrafficPermission deny-web-echo"
        assert echo.calls == 0


def test_denied_tcp_connection_is_closed(
    harness: MeshHarness, new_mesh: Callable[..., str], servers: tuple[HttpTestServer, HttpTestServer]
) -> None:
    mesh = new_mesh("strict")
    orders, client_app = servers
    with TcpEchoServer("payments-1") as payments:
        pay_sc = harness.sidecar("payments", app_port=payments.port, protocol="tcp", mesh=mesh)
        caller = harness.sidecar("orders", app_port=orders.port, upstreams=["payments"], mesh=mesh)
        web = harness.sidecar("web", app_port=client_app.port, upstreams=["payments"], mesh=mesh)
        harness.apply([permission(mesh, "orders-to-payments", "allow", to="payments", sources=["orders"])])

        eventually(lambda: tcp_exchange(caller.port("payments")) == b"payments-1:hello\n", "orders allowed")
        assert tcp_exchange(web.port("payments")) == b""  # closed, nothing echoed
        assert counter(pay_sc, f"inbound_{pay_sc.inbound_port}.rbac.denied") >= 1

        harness.apply([permission(mesh, "deny-orders-payments", "deny", to="payments", sources=["orders"])])
        eventually(lambda: tcp_exchange(caller.port("payments")) == b"", "orders denied too")


def _certificate(h: MeshHarness, mesh: str, service: str, tmp: Path) -> tuple[Path, Path, Path]:
    """A workload certificate of ``mesh``'s CA (through the API the agents use): cert, key, trust bundle."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
        .sign(key, hashes.SHA256())
    )
    issued = h.api.request(
        "POST",
        f"/api/v1/meshes/{mesh}/certificates",
        json={"service": service, "csr": csr.public_bytes(serialization.Encoding.PEM).decode()},
    )
    cert, key_path, bundle = tmp / f"{mesh}.crt", tmp / f"{mesh}.key", tmp / f"{mesh}.bundle"
    cert.write_text(issued["certChain"])
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    bundle.write_text(issued["trustBundle"])
    return cert, key_path, bundle


def _mtls_get(port: int, cert: Path, key: Path, server_bundle: Path) -> bytes:
    """One HTTP/1.1 request over mTLS straight to a sidecar's inbound port."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # mesh certificates carry only a SPIFFE URI SAN
    ctx.load_verify_locations(str(server_bundle))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
        s.sendall(b"GET /tenant HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def test_client_of_another_mesh_cannot_reach(
    harness: MeshHarness,
    new_mesh: Callable[..., str],
    servers: tuple[HttpTestServer, HttpTestServer],
    tmp_path: Path,
) -> None:
    mesh, other = new_mesh("strict"), new_mesh("strict")
    orders = servers[0]
    orders_sc = harness.sidecar("orders", app_port=orders.port, mesh=mesh)
    harness.apply([permission(mesh, "anyone-to-orders", "allow")])  # only the CA stands in the way
    own = _certificate(harness, mesh, "web", tmp_path)
    foreign = _certificate(harness, other, "web", tmp_path)

    reply = eventually(
        lambda: (a := _mtls_get(orders_sc.inbound_port, *own)).startswith(b"HTTP/1.1 200") and a,
        "a caller of the same mesh gets through",
    )
    assert b"orders-1" in reply
    seen = orders.count()
    refused = sum(orders_sc.stats("ssl.fail_verify_error").values())

    with pytest.raises(OSError):  # ssl.SSLError, a reset, or a close without an answer
        if not _mtls_get(orders_sc.inbound_port, foreign[0], foreign[1], own[2]):
            raise ConnectionError("closed without an answer")
    assert orders.count() == seen
    # refused at the handshake: the certificate does not chain to this mesh's CA
    assert sum(orders_sc.stats("ssl.fail_verify_error").values()) > refused


def test_callers_without_a_certificate_have_no_identity(
    harness: MeshHarness, new_mesh: Callable[..., str], servers: tuple[HttpTestServer, HttpTestServer]
) -> None:
    """Permissive mTLS, default deny: a plaintext caller is unknown. The default refuses it, an
    allow for a named service never matches it, an allow for '*' does, and a deny for a named
    service refuses it too (fail closed: it might be that service)."""
    mesh = new_mesh("permissive", defaultPermission="deny")
    orders_sc, web, _ = demo(harness, mesh, servers)
    direct = f"http://127.0.0.1:{orders_sc.inbound_port}/hello"

    r = eventually(
        lambda: (resp := httpx.get(direct, timeout=5)).status_code == 403 and resp, "the default deny"
    )
    assert r.text == default_deny_body(mesh)

    harness.apply([permission(mesh, "web-to-orders", "allow", sources=["web"])])
    eventually(lambda: call(web).status_code == 200, "web allowed over mTLS")
    assert httpx.get(direct, timeout=5).status_code == 403

    harness.apply([permission(mesh, "anyone-to-orders", "allow")])
    eventually(lambda: httpx.get(direct, timeout=5).status_code == 200, "plaintext allowed by '*'")

    harness.apply([permission(mesh, "deny-legacy", "deny", sources=["legacy"])])
    r = eventually(
        lambda: (resp := httpx.get(direct, timeout=5)).status_code == 403 and resp, "failing closed"
    )
    assert r.text == "RBAC: access denied by TrafficPermission deny-legacy\n"
    assert call(web).status_code == 200  # web proves who it is: it is not legacy
