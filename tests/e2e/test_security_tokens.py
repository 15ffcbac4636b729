"""Tokens end to end: the CLI on the control plane's host, agents with the wrong or a revoked
token, and the API's 401/403 answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from meshline.security import crypto
from meshline.security.workload_identity import make_csr
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import HttpTestServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def orders() -> Iterator[HttpTestServer]:
    with HttpTestServer("orders") as s:
        yield s


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MeshHarness]:
    spec = {"mtls": {"mode": "strict"}, "defaultPermission": "allow"}
    with MeshHarness(tmp_path, mtls="strict", auth=True, mesh_spec=spec) as m:
        yield m


def cli(mesh: MeshHarness, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """`meshline ...` as a user on the control plane's host: no token given, it finds admin.token."""
    env = {k: v for k, v in os.environ.items() if k not in ("MESHLINE_TOKEN", "MESHLINE_TOKEN_FILE")}
    env.update({"MESHLINE_API": mesh.api_url, "MESHLINE_DATA_DIR": str(mesh.data_dir)})
    if token is not None:
        env["MESHLINE_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "meshline", *args], env=env, capture_output=True, text=True, timeout=60
    )


def issue(mesh: MeshHarness, *args: str) -> tuple[str, str]:
    r = cli(mesh, "token", "issue", *args)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    listed = cli(mesh, "token", "list", "-o", "json")
    ids = [i["id"] for i in json.loads(listed.stdout)]
    token_id = next(i for i in ids if i in r.stderr)
    return token, token_id


def xds_refuses_plaintext(mesh: MeshHarness) -> bool:
    """A gRPC call to the xDS port without TLS fails; one with the control-plane CA connects."""
    method = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
    target = f"127.0.0.1:{mesh.xds_port}"
    with grpc.insecure_channel(target) as plain:
        try:
            list(plain.stream_stream(method)(iter([b""]), timeout=3))
        except grpc.RpcError as err:
            refused = err.code() == grpc.StatusCode.UNAVAILABLE
        else:
            refused = False
    ca = (mesh.data_dir / "cp-ca.pem").read_bytes()
    with grpc.secure_channel(target, grpc.ssl_channel_credentials(ca)) as tls:
        grpc.channel_ready_future(tls).result(timeout=5)
    return refused


def exited(sc: Sidecar, timeout: float = 30) -> int:
    wait_until(lambda: sc.proc.poll() is not None, timeout, what=f"agent {sc.name} to give up")
    return int(sc.proc.returncode)


def test_cli_uses_the_local_admin_token_and_api_rejects_bad_tokens(mesh: MeshHarness) -> None:
    ok = cli(mesh, "get", "meshes")
    assert ok.returncode == 0 and "default" in ok.stdout, ok.stderr

    assert httpx.get(mesh.api_url + "/api/v1/meshes").status_code == 401
    bad = cli(mesh, "get", "meshes", token="not-a-token")
    assert bad.returncode != 0 and "malformed" in bad.stderr

    ro, _ = issue(mesh, "--kind", "readonly")
    assert cli(mesh, "get", "meshes", token=ro).returncode == 0
    denied = subprocess.run(
        [sys.executable, "-m", "meshline", "apply", "-f", "-"],
        input="kind: Mesh\nname: other\n",
        env={**os.environ, "MESHLINE_API": mesh.api_url, "MESHLINE_TOKEN": ro},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert denied.returncode != 0 and "read-only" in denied.stderr
    r = httpx.put(
        mesh.api_url + "/api/v1/meshes/default/dataplanes/x",
        headers={"Authorization": f"Bearer {ro}"},
        json={"kind": "Dataplane", "mesh": "default", "name": "x", "spec": {}},
    )
    assert r.status_code == 403


def test_agent_with_a_token_for_another_service_is_refused(mesh: MeshHarness, orders: HttpTestServer) -> None:
    payments, _ = issue(mesh, "--kind", "dataplane", "--mesh", "default", "--service", "payments")
    sc = mesh.sidecar("orders", app_port=orders.port, wait=False, env={"MESHLINE_TOKEN": payments})
    assert exited(sc) != 0
    assert "is for service 'payments'" in sc.log()
    # and at signing: the same token cannot get an orders certificate
    for body in (
        {"csr": make_csr(crypto.new_ec_key()), "service": "orders"},
        {"csr": make_csr(crypto.new_ec_key(), "spiffe://meshline.local/default/orders")},
    ):
        r = httpx.post(
            mesh.api_url + "/api/v1/meshes/default/certificates",
            headers={"Authorization": f"Bearer {payments}"},
            json=body,
        )
        assert r.status_code == 403, r.text
    # a token pinned to another dataplane name is refused too
    pinned, _ = issue(mesh, "--kind", "dataplane", "--mesh", "default", "--service", "orders", "--name", "orders-7")
    sc2 = mesh.sidecar("orders", app_port=orders.port, name="orders-8", wait=False, env={"MESHLINE_TOKEN": pinned})
    assert exited(sc2) != 0 and "orders-7" in sc2.log()


def test_dataplane_token_works_and_a_revoked_one_is_refused(mesh: MeshHarness, orders: HttpTestServer) -> None:
    token, token_id = issue(mesh, "--kind", "dataplane", "--mesh", "default", "--service", "orders", "--ttl", "1h")
    sc = mesh.sidecar("orders", app_port=orders.port, env={"MESHLINE_TOKEN": token})
    assert mesh.dataplane_status(sc.name)["certExpiresAt"] > 0
    # The xDS stream carries the dataplane token over TLS: Envoy reaches the control plane only
    # through its agent's proxy (a local socket), which holds the token and the TLS connection;
    # the xDS port speaks nothing but TLS.
    assert mesh.dataplane_status(sc.name)["connected"]
    assert (sc.work_dir / "bootstrap.yaml").read_text().count(str(mesh.xds_port)) == 0
    assert xds_refuses_plaintext(mesh)

    r = cli(mesh, "token", "revoke", token_id)
    assert r.returncode == 0 and "revoked" in r.stdout, r.stderr
    listed = cli(mesh, "token", "list", "--all")
    assert "revoked" in listed.stdout

    api = httpx.get(mesh.api_url + "/api/v1/meshes/default", headers={"Authorization": f"Bearer {token}"})
    assert api.status_code == 401 and "revoked" in api.json()["message"]
    again = mesh.sidecar("orders", app_port=orders.port, name="orders-2", wait=False, env={"MESHLINE_TOKEN": token})
    assert exited(again) != 0 and "revoked" in again.log()
    # the xDS stream the running sidecar opened with that token ends, and its reconnects are refused
    wait_until(lambda: not mesh.dataplane_status(sc.name)["connected"], 10, what="the revoked stream to end")
    time.sleep(2)  # Envoy retries meanwhile
    assert not mesh.dataplane_status(sc.name)["connected"]
    refused = sc.stats("control_plane.connected_state")
    assert refused.get("control_plane.connected_state") == 0
