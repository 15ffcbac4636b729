"""Finding 1: Envoy's admin API must not be reachable by other local users, and nothing Envoy
holds (what a config dump shows) may let anyone take over the workload's identity.

The attack, as the unprivileged local user ``nobody``: connect to every socket the sidecar's
Envoy and agent listen on (TCP on any address, Unix sockets, abstract ones), and to every
socket file in the agent's work dir; ask each for ``/config_dump`` and then ``/quitquitquit``.
Then, as root (who may read the dump), look for a credential in it and in the bootstrap, and
try each one found against the control plane's API: it must not get a certificate or an
answer.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshline.core.errors import MeshlineError
from meshline.core.unix_sockets import private_dir
from meshline.security import crypto
from meshline.security.workload_identity import make_csr
from meshline.testing.mesh import MeshHarness, Sidecar
from meshline.testing.servers import HttpTestServer
from tests.security.support import listening_sockets, require_attacker, run_as_attacker

ADMIN_MARKER = "type.googleapis.com/envoy.admin.v3."  # in every config dump
JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")

ATTACK = r"""
import json, os, socket
targets = json.loads(os.environ["TARGETS"])

def ask(target, method, path):
    if target["kind"] == "tcp":
        s = socket.create_connection((target["host"], target["port"]), timeout=3)
    else:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(3)
        s.connect(target["path"])
    with s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".encode())
        data = b""
        while len(data) < 4_000_000:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")

out = []
for method, path in (("GET", "/config_dump"), ("POST", "/quitquitquit")):
    for t in targets:
        try:
            text = ask(t, method, path)
            out.append({"target": t, "path": path, "reached": True, "status": text.split("\r\n", 1)[0],
                        "admin": "type.googleapis.com/envoy.admin.v3." in text, "bearer": "Bearer " in text})
        except OSError as err:
            out.append({"target": t, "path": path, "reached": False, "error": type(err).__name__})
print(json.dumps(out))
"""


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A directory every user may traverse (0711), as a data dir under /srv or /var/lib would
    be: only the agent's own work dir and socket modes stand between the attacker and Envoy."""
    require_attacker()
    root = Path(tempfile.mkdtemp(prefix="meshline-attack-", dir="/tmp"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mesh(open_root: Path) -> Iterator[MeshHarness]:
    spec = {"mtls": {"mode": "strict"}, "defaultPermission": "allow"}
    with MeshHarness(open_root, mtls="strict", auth=True, mesh_spec=spec) as m:
        yield m


@pytest.fixture
def inventory() -> Iterator[HttpTestServer]:
    with HttpTestServer("inventory") as s:
        yield s


@pytest.fixture
def orders_app() -> Iterator[HttpTestServer]:
    with HttpTestServer("orders") as s:
        yield s


def envoy_pid(sc: Sidecar) -> int:
    return int((sc.work_dir / "envoy.pid").read_text())


def targets(sidecars: list[Sidecar]) -> list[dict[str, Any]]:
    """Every way into the sidecars: their processes' listening sockets and the socket files
    in their work dirs (listed as root: the attacker is told where to look)."""
    found: list[dict[str, Any]] = []
    for sc in sidecars:
        for pid in (envoy_pid(sc), sc.proc.pid):
            found += listening_sockets(pid)
        found += [{"kind": "unix", "path": str(p)} for p in sc.work_dir.rglob("*") if p.is_socket()]
        found += [{"kind": "unix", "path": str(sc.admin_socket)}]
    unique = {json.dumps(t, sort_keys=True): t for t in found}
    return list(unique.values())


def through(orders: Sidecar) -> int:
    return httpx.get(orders.url("inventory") + "/hello", timeout=5).status_code


def test_other_local_users_cannot_reach_the_admin_api(
    mesh: MeshHarness, inventory: HttpTestServer, orders_app: HttpTestServer
) -> None:
    inv = mesh.sidecar("inventory", app_port=inventory.port)
    orders = mesh.sidecar("orders", app_port=orders_app.port, upstreams=["inventory"])
    assert through(orders) == 200
    pids = {sc.name: envoy_pid(sc) for sc in (inv, orders)}
    attempts = targets([inv, orders])
    assert any(t["kind"] == "tcp" for t in attempts)  # the listeners the attacker may try

    result = run_as_attacker(ATTACK, env={"TARGETS": json.dumps(attempts)}, timeout=120)
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout)
    leaked = [o for o in outcomes if o.get("admin") or o.get("bearer")]
    assert leaked == [], f"the admin API answered another local user: {leaked}"
    # the agent's and Envoy's socket files refuse the attacker outright (file or directory mode)
    for o in outcomes:
        if o["target"]["kind"] == "unix" and not o["target"]["path"].startswith("\0"):
            assert not o["reached"] and o["error"] == "PermissionError", o

    # /quitquitquit did nothing: the same Envoys still run and serve
    assert {sc.name: envoy_pid(sc) for sc in (inv, orders)} == pids
    assert inv.ready() and orders.ready()
    assert through(orders) == 200


def with_decoded_bytes(dump: str) -> str:
    """The dump's JSON plus every ``inline_bytes`` value decoded (Envoy prints bytes as base64)."""
    decoded = [base64.b64decode(b).decode(errors="replace") for b in re.findall(r'"inline_bytes": "([^"]*)"', dump)]
    return "\n".join([dump, *decoded])


def credentials_in(text: str) -> set[str]:
    """Anything in a dump or bootstrap that could be a credential: bearer values, JWTs."""
    found = set(JWT.findall(text))
    found |= {m.strip() for m in re.findall(r"Bearer\s+([^\s\"']+)", text)}
    return found


def test_nothing_envoy_holds_can_take_over_the_identity(
    mesh: MeshHarness, inventory: HttpTestServer, orders_app: HttpTestServer
) -> None:
    mesh.sidecar("inventory", app_port=inventory.port)
    orders = mesh.sidecar("orders", app_port=orders_app.port, upstreams=["inventory"])
    assert through(orders) == 200
    dump = orders.admin("/config_dump?include_eds").text
    assert ADMIN_MARKER in dump
    bootstrap = (orders.work_dir / "bootstrap.yaml").read_text()

    # neither the agent's dataplane token nor the host's admin token is anywhere Envoy reads
    long_lived = [t for t in (orders.token, mesh.admin_token()) if t]
    assert len(long_lived) == 2
    dumped = with_decoded_bytes(dump)
    for secret in long_lived:
        assert secret not in dumped and secret not in bootstrap
    assert "authorization" not in dumped.lower() and "authorization" not in bootstrap.lower()
    # SDS secrets are dumped without their private key (Envoy shows bytes base64-encoded)
    assert "PRIVATE KEY" not in dumped and "PRIVATE KEY" not in bootstrap
    secrets = next(c for c in json.loads(dump)["configs"] if c["@type"].endswith("SecretsConfigDump"))
    identity = next(s for s in secrets["dynamic_active_secrets"] if s["name"] == "identity_cert")
    assert base64.b64decode(identity["secret"]["tls_certificate"]["private_key"]["inline_bytes"]) == b"[redacted]"
    assert "BEGIN CERTIFICATE" in dumped  # (the decoding works: the public certificate is there)

    # and whatever looks like a credential there gets neither a certificate nor an API answer
    for candidate in credentials_in(dumped) | credentials_in(bootstrap):
        headers = {"Authorization": f"Bearer {candidate}"}
        csr = {"csr": make_csr(crypto.new_ec_key()), "service": "orders"}
        signed = httpx.post(f"{mesh.api_url}/api/v1/meshes/default/certificates", json=csr, headers=headers)
        assert signed.status_code in (401, 403), signed.text
        read = httpx.get(f"{mesh.api_url}/api/v1/meshes/default/dataplanes", headers=headers)
        assert read.status_code in (401, 403), read.text


def test_a_socket_directory_another_user_owns_is_refused(open_root: Path) -> None:
    """The sockets' directory is what keeps other users out: one they own (say made in /tmp
    before the agent, for the short-path fallback) is refused, ours is made 0700."""
    attacker = require_attacker()
    planted = open_root / "meshline-0"
    planted.mkdir(mode=0o777)
    os.chown(planted, attacker.pw_uid, attacker.pw_gid)
    with pytest.raises(MeshlineError, match="not a directory owned by this user"):
        private_dir(planted)
    ours = open_root / "work"
    ours.mkdir(mode=0o755)
    private_dir(ours)
    assert stat.S_IMODE(ours.stat().st_mode) == 0o700
