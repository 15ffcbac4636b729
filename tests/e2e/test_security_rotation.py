"""Certificate renewal and CA rotation under steady traffic: no request may fail.

Traffic runs web -> (web's Envoy) -> mTLS -> (orders' Envoy) -> orders the whole time,
on pooled keep-alive connections, while the agents renew their certificates (1 minute
lifetime) or the mesh's CA changes underneath them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from meshline.security import crypto
from meshline.security.workload_identity import make_csr
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import HttpTestServer
from tests.e2e.test_security_mtls import Identity, get_ok, tls_get
from tests.unit.test_security_ca import make_ca, pem

pytestmark = pytest.mark.e2e


class SteadyTraffic:
    """Requests in a loop (keep-alive, ~100/s) from a thread; every failure is recorded."""

    def __init__(self, url: str, workers: int = 2) -> None:
        self.url = url
        self.ok = 0
        self.failures: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    r = client.get(self.url)
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures[f"HTTP {r.status_code}: {r.text[:120]}"] += 1
                except httpx.HTTPError as err:
                    self.failures[f"{type(err).__name__}: {err}"] += 1
                time.sleep(0.02)

    def __enter__(self) -> SteadyTraffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def check(self, minimum: int) -> None:
        assert not self.failures, f"{sum(self.failures.values())} failed of {self.ok + sum(self.failures.values())}: {dict(self.failures)}"
        assert self.ok >= minimum, f"only {self.ok} requests went through"


@pytest.fixture
def apps() -> Iterator[tuple[HttpTestServer, HttpTestServer]]:
    with HttpTestServer("orders") as orders, HttpTestServer("web") as web:
        yield orders, web


def identity_serial(sc: Sidecar) -> str:
    """The serial of the workload certificate Envoy is using now (admin /certs)."""
    for c in sc.admin("/certs").json()["certificates"]:
        for chain in c.get("cert_chain", []):
            sans = [s.get("uri") for s in chain.get("subject_alt_names", [])]
            if any(s and s.startswith("spiffe://") for s in sans):
                return str(chain["serial_number"]).lower().lstrip("0")
    return ""


def max_duration_reached(sc: Sidecar) -> int:
    name = "cluster.orders.upstream_cx_max_duration_reached"
    return sc.stats(name).get(name, 0)


def handshakes(sc: Sidecar) -> int:
    return sum(v for k, v in sc.stats("listener").items() if k.endswith(".ssl.handshake"))


def status(mesh: MeshHarness, sc: Sidecar) -> dict[str, Any]:
    return mesh.dataplane_status(sc.name)


def start_pair(mesh: MeshHarness, apps: tuple[HttpTestServer, HttpTestServer]) -> tuple[Sidecar, Sidecar, str]:
    orders, web = apps
    o = mesh.sidecar("orders", app_port=orders.port)
    w = mesh.sidecar("web", app_port=web.port, upstreams=["orders"])
    url = w.url("orders") + "/steady"
    get_ok(url)
    return o, w, url


def test_certificates_renew_under_steady_traffic(tmp_path: Path, apps: tuple[HttpTestServer, HttpTestServer]) -> None:
    spec = {"mtls": {"mode": "strict", "certLifetime": "1m"}, "defaultPermission": "allow"}
    with MeshHarness(tmp_path, mtls="strict", auth=True, mesh_spec=spec) as mesh:
        o, w, url = start_pair(mesh, apps)
        first = {sc.name: identity_serial(sc) for sc in (o, w)}
        assert all(first.values())
        with SteadyTraffic(url) as traffic:
            # renewal happens at 50-66% of the 60 s lifetime
            for sc in (o, w):
                wait_until(lambda sc=sc: identity_serial(sc) not in ("", first[sc.name]), 60, interval=0.5,
                           what=f"{sc.name} to renew its certificate")
            # pooled connections end after a quarter of the lifetime (15 s) and reconnect,
            # so the renewed certificates are used by the traffic already flowing
            cycled, h0 = max_duration_reached(w), handshakes(o)
            wait_until(lambda: max_duration_reached(w) > cycled, 30, interval=0.5,
                       what="web's pooled connection to reach its max duration")
            wait_until(lambda: handshakes(o) > h0, 10, interval=0.2, what="a new mTLS handshake")
            time.sleep(1)
        traffic.check(minimum=200)
        for sc in (o, w):
            st = status(mesh, sc)
            assert st["certSerial"] == identity_serial(sc), "Envoy does not use the certificate last issued"
            assert st["certExpiresAt"] - st["certIssuedAt"] == pytest.approx(60, abs=2)


def _new_ca_in_use(mesh: MeshHarness, sidecars: list[Sidecar], ca_id: str) -> bool:
    for sc in sidecars:
        st = status(mesh, sc)
        if st.get("certAuthority") != ca_id or identity_serial(sc) != st.get("certSerial"):
            return False
    return True


def _rotate_builtin(mesh: MeshHarness) -> str:
    return str(mesh.api.request("POST", "/api/v1/ca/default/rotate")["rotating"]["id"])


def _rotate_provided(mesh: MeshHarness) -> str:
    cert, key = make_ca("Corp CA 2")
    mesh.api.put({
        "kind": "Mesh", "name": "default",
        "spec": {"mtls": {"mode": "strict", "ca": {"type": "provided", "cert": pem(cert), "key": crypto.key_pem(key)}},
                 "defaultPermission": "allow"},
    })
    return crypto.fingerprint(cert)


@pytest.mark.parametrize("how", ["builtin-rotate", "provided-to-provided"])
def test_ca_rotation_under_steady_traffic(
    tmp_path: Path, apps: tuple[HttpTestServer, HttpTestServer], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setenv("MESHLINE_CA_PROPAGATION", "3")  # new root trusted 3 s before it signs
    mtls: dict[str, Any] = {"mode": "strict"}
    if how == "provided-to-provided":
        cert, key = make_ca("Corp CA 1")
        mtls["ca"] = {"type": "provided", "cert": pem(cert), "key": crypto.key_pem(key)}
    spec = {"mtls": mtls, "defaultPermission": "allow"}
    with MeshHarness(tmp_path, mtls="strict", auth=True, mesh_spec=spec) as mesh:
        o, w, url = start_pair(mesh, apps)
        old_ca = status(mesh, o)["certAuthority"]
        with SteadyTraffic(url) as traffic:
            time.sleep(1)
            new_ca = _rotate_builtin(mesh) if how == "builtin-rotate" else _rotate_provided(mesh)
            assert new_ca != old_ca
            bundle = mesh.api.get("/api/v1/ca/default/trust-bundle")
            assert bundle["roots"] == 2 and bundle["caId"] == old_ca  # new root first, old CA still signs
            wait_until(lambda: _new_ca_in_use(mesh, [o, w], new_ca), 30, interval=0.3,
                       what="both sidecars to use certificates from the new CA")
            time.sleep(2)
        traffic.check(minimum=100)
        # a fresh connection to orders now gets a certificate from the new CA, and a client
        # with a certificate from the new CA is accepted
        key = crypto.new_ec_key()
        data = mesh.api.request("POST", "/api/v1/meshes/default/certificates", json={"csr": make_csr(key), "service": "web"})
        assert data["caId"] == new_ca
        [new_root] = [c for c in x509.load_pem_x509_certificates(data["trustBundle"].encode())
                      if crypto.fingerprint(c) == new_ca]  # these CAs are roots: their id is the root's
        assert tls_get(o.inbound_port, crypto.cert_pem(new_root), Identity(data["certChain"], crypto.key_pem(key))) == 200
        # both roots stay trusted while certificates from the old CA may still be out there
        assert mesh.api.get("/api/v1/ca/default/trust-bundle")["roots"] == 2
