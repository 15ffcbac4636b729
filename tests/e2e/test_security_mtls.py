"""Mutual TLS between real Envoys with certificates from the control plane's CA, served by
the agents over SDS: what strict mode refuses, what permissive mode accepts."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from meshline.security import crypto
from meshline.security.ca import CAManager, check_csr, sign_leaf, signer_at
from meshline.security.workload_identity import make_csr
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import HttpTestServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def orders() -> Iterator[HttpTestServer]:
    with HttpTestServer("orders") as s:
        yield s


@pytest.fixture
def web_app() -> Iterator[HttpTestServer]:
    with HttpTestServer("web") as s:
        yield s


def secure_mesh(tmp: Path, mode: str = "strict", **mtls: Any) -> MeshHarness:
    # defaultPermission allow: these tests are about identity, not TrafficPermission
    spec = {"mtls": {"mode": mode, **mtls}, "defaultPermission": "allow"}
    return MeshHarness(tmp, mtls=mode, auth=True, mesh_spec=spec)


def get_ok(url: str, timeout: float = 15) -> httpx.Response:
    def ok() -> httpx.Response | None:
        r = httpx.get(url, timeout=5)
        return r if r.status_code == 200 else None

    return wait_until(ok, timeout, what=f"200 from {url}")


class Identity:
    """A client certificate + key on disk, for Python's ssl module."""

    def __init__(self, chain_pem: str, key_pem: str) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.cert = Path(self.dir.name) / "cert.pem"
        self.key = Path(self.dir.name) / "key.pem"
        self.cert.write_text(chain_pem)
        self.key.write_text(key_pem)


def issued_identity(mesh: MeshHarness, service: str, mesh_name: str = "default") -> tuple[Identity, str]:
    key = crypto.new_ec_key()
    data = mesh.api.request(
        "POST", f"/api/v1/meshes/{mesh_name}/certificates", json={"csr": make_csr(key), "service": service}
    )
    return Identity(data["certChain"], crypto.key_pem(key)), data["trustBundle"]


def tls_get(port: int, bundle: str, ident: Identity | None, headers: str = "") -> int:
    """One HTTP/1.1 GET over TLS to a sidecar's inbound port; the status, or raise if refused."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # sidecar certificates carry only a SPIFFE URI SAN
    ctx.load_verify_locations(cadata=bundle)
    ctx.set_alpn_protocols(["http/1.1"])
    if ident is not None:
        ctx.load_cert_chain(ident.cert, ident.key)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
        s.sendall(f"GET /probe HTTP/1.1\r\nHost: orders\r\n{headers}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    if not data:
        raise ConnectionError("closed without an answer")
    return int(data.split(b" ", 2)[1])


def refused(fn: Any) -> str:
    try:
        status = fn()
    except (OSError, ssl.SSLError, httpx.HTTPError, ConnectionError) as err:
        return f"{type(err).__name__}: {err}"
    raise AssertionError(f"expected the connection to be refused, got HTTP {status}")


def ssl_stat(sc: Sidecar, name: str) -> int:
    return sum(v for k, v in sc.stats("ssl").items() if k.startswith("listener.") and k.endswith(f".ssl.{name}"))


def foreign_ca_identity(identity: str) -> Identity:
    """A certificate for an identity of this mesh, signed by a CA the mesh does not trust."""
    ca_key = crypto.new_ec_key()
    ca = crypto.new_root("Attacker CA", ca_key)
    key = crypto.new_ec_key()
    now = crypto.utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Identity(crypto.cert_pem(cert), crypto.key_pem(key))


def expired_identity(mesh: MeshHarness, identity: str) -> Identity:
    """A certificate from the mesh's own CA that expired an hour ago."""
    assert mesh.control_plane is not None

    def sign() -> tuple[str, str]:
        ca = mesh.control_plane.cp.ctx.services["ca"]  # type: ignore[union-attr]
        assert isinstance(ca, CAManager)
        signer = signer_at(ca.entries("default"), ca.clock())
        assert signer is not None
        material = ca.material("default", signer)
        key = crypto.new_ec_key()
        csr = check_csr(make_csr(key), identity)
        leaf = sign_leaf(csr, identity, material, dt.timedelta(hours=1), crypto.utcnow() - dt.timedelta(hours=3))
        return crypto.cert_pem(leaf), crypto.key_pem(key)

    chain, key = mesh.control_plane.call(sign)
    assert x509.load_pem_x509_certificate(chain.encode()).not_valid_after_utc < crypto.utcnow()
    return Identity(chain, key)


def test_strict_mtls_refuses_plaintext_foreign_ca_and_expired_certificates(
    tmp_path: Path, orders: HttpTestServer, web_app: HttpTestServer
) -> None:
    with secure_mesh(tmp_path) as mesh:
        o = mesh.sidecar("orders", app_port=orders.port)
        w = mesh.sidecar("web", app_port=web_app.port, upstreams=["orders"])
        # through the mesh: mTLS with SDS-served certificates works
        r = get_ok(w.url("orders") + "/hello")
        assert r.json()["instance"] == "orders"
        headers = {k.lower(): v for k, v in r.json()["headers"].items()}
        assert "spiffe://meshline.local/default/web" in headers.get("x-forwarded-client-cert", "")

        web_ident, bundle = issued_identity(mesh, "web")
        assert tls_get(o.inbound_port, bundle, web_ident) == 200  # a proper client is accepted...
        before = orders.count()

        # ... a plaintext client is not
        why = refused(lambda: httpx.get(f"http://127.0.0.1:{o.inbound_port}/x", timeout=5).status_code)
        # ... nor TLS without a client certificate
        why_nocert = refused(lambda: tls_get(o.inbound_port, bundle, None))
        # ... nor a certificate for a name of this mesh from a CA it does not trust
        why_ca = refused(lambda: tls_get(o.inbound_port, bundle, foreign_ca_identity("spiffe://meshline.local/default/web")))
        # ... nor one from another mesh's CA (another tenant)
        mesh.api.put({"kind": "Mesh", "name": "other", "spec": {"mtls": {"mode": "strict"}}})
        other_ident, _ = issued_identity(mesh, "web", mesh_name="other")
        why_other = refused(lambda: tls_get(o.inbound_port, bundle, other_ident))
        # ... nor an expired certificate from this mesh's own CA
        why_expired = refused(lambda: tls_get(o.inbound_port, bundle, expired_identity(mesh, "spiffe://meshline.local/default/web")))

        assert orders.count() == before, "a refused client reached the app"
        assert ssl_stat(o, "fail_verify_no_cert") >= 1, why_nocert
        assert ssl_stat(o, "fail_verify_error") >= 3, (why_ca, why_other, why_expired)
        assert ssl_stat(o, "connection_error") >= 1 or why


def test_permissive_accepts_plaintext_and_mtls(tmp_path: Path, orders: HttpTestServer, web_app: HttpTestServer) -> None:
    with secure_mesh(tmp_path, mode="permissive") as mesh:
        o = mesh.sidecar("orders", app_port=orders.port)
        w = mesh.sidecar("web", app_port=web_app.port, upstreams=["orders"])
        assert get_ok(w.url("orders") + "/via-mesh").json()["path"] == "/via-mesh"
        handshakes = ssl_stat(o, "handshake")
        assert handshakes >= 1  # the sidecar-to-sidecar hop was mTLS
        plain = httpx.get(f"http://127.0.0.1:{o.inbound_port}/plain", timeout=5)
        assert plain.status_code == 200 and plain.json()["path"] == "/plain"
        web_ident, bundle = issued_identity(mesh, "web")
        assert tls_get(o.inbound_port, bundle, web_ident) == 200


def test_sidecar_private_key_never_leaves_the_host(tmp_path: Path, orders: HttpTestServer) -> None:
    """The control plane only ever sees CSRs: no private key in its store or its data dir."""
    with secure_mesh(tmp_path) as mesh:
        o = mesh.sidecar("orders", app_port=orders.port)
        certs = o.admin("/certs").json()["certificates"]
        chains = [c for c in certs if c.get("cert_chain")]
        assert chains and chains[0]["cert_chain"][0]["subject_alt_names"][0]["uri"] == "spiffe://meshline.local/default/orders"
        import sqlite3

        db = sqlite3.connect(mesh.data_dir / "meshline.db")
        rows = " ".join(r[0] for r in db.execute("SELECT spec FROM resources"))
        db.close()
        assert "PRIVATE KEY" not in rows
        sock = next(o.work_dir.rglob("sds.sock"), None)
        if sock is not None:
            assert sock.stat().st_mode & 0o077 == 0



def test_the_callers_identity_comes_from_its_certificate_never_from_a_header(
    tmp_path: Path, orders: HttpTestServer, web_app: HttpTestServer
) -> None:
    from tests.e2e.test_observability_tracing import OtlpReceiver, attrs

    with OtlpReceiver() as receiver:
        spec = {"mtls": {"mode": "strict"}, "defaultPermission": "allow",
                "tracing": {"otlp": f"127.0.0.1:{receiver.port}", "sampling": 100}}
        with MeshHarness(tmp_path, mtls="strict", auth=True, mesh_spec=spec) as mesh:
            o = mesh.sidecar("orders", app_port=orders.port)
            w = mesh.sidecar("web", app_port=web_app.port, upstreams=["orders"])
            get_ok(w.url("orders") + "/hello")
            # a caller holding web's valid certificate names itself in a header
            web_ident, bundle = issued_identity(mesh, "web")
            trace_id = "ab" * 16
            assert tls_get(o.inbound_port, bundle, web_ident,
                           f"x-meshline-source: spoofed-svc\r\ntraceparent: 00-{trace_id}-{'cd' * 8}-01\r\n") == 200
            got = {k.lower(): v for k, v in orders.requests[-1]["headers"].items()}
            assert "x-meshline-source" not in got  # removed at the inbound, not passed to the app
            spans = wait_until(lambda: receiver.of_trace(trace_id) or None, 20, what="the callee's span")
            tags = attrs(spans[0][1])
            assert tags["meshline.peer"] == "spiffe://meshline.local/default/web"
            assert "spoofed-svc" not in tags.values()
