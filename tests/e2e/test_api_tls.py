"""The REST API over HTTPS (Settings.api_tls): plaintext refused, the control plane's CA verifies it,
and an agent registers and gets its certificate through it."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from meshline.api.client import ApiClient
from meshline.testing.mesh import MeshHarness
from meshline.testing.servers import HttpTestServer


@pytest.fixture
def tls_mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MESHLINE_API_TLS", "on")
    harness = MeshHarness(tmp_path, mtls="strict", auth=True, api_scheme="https",
                          mesh_spec={"defaultPermission": "allow"})
    harness.start()
    yield harness
    harness.stop()


def test_api_is_https_only_and_agents_use_it(tls_mesh: MeshHarness) -> None:
    mesh = tls_mesh
    ca = mesh.data_dir / "cp-ca.pem"
    url = mesh.api_url
    assert url.startswith("https://")
    # plaintext HTTP to the API port gets nowhere
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https://", "http://") + "/api/v1/health", timeout=3)
    # an unknown CA is refused by the client
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/api/v1/health", timeout=3, verify=ssl.create_default_context())
    # the control plane's CA verifies it, and the token still decides
    assert ApiClient(url, token="", verify=str(ca)).get("/api/v1/health")["status"] == "ok"
    anonymous = httpx.get(url + "/api/v1/meshes", timeout=3, verify=ssl.create_default_context(cafile=str(ca)))
    assert anonymous.status_code == 401
    # agents register, fetch certificates and serve traffic through the HTTPS API
    with HttpTestServer("orders-app") as app:
        mesh.sidecar("orders", app.port)
        web = mesh.sidecar("web", 1, upstreams=["orders"])
        assert httpx.get(web.url("orders"), timeout=5).json()["instance"] == "orders-app"
