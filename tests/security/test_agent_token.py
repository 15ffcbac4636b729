"""Finding 12: an agent without a dataplane token must not pick up the host's admin token
(``<data dir>/admin.token``) and run a sidecar with admin rights nobody chose; it says how to
issue a dataplane token instead, and registers nothing. ``meshline up`` and the test harness
issue dataplane tokens for their agents explicitly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshline.agent.api import AgentApi
from meshline.agent.registration import token_kind
from meshline.cli.agent import build_config
from meshline.core.errors import NotFound
from meshline.testing.mesh import MeshHarness, wait_until
from meshline.testing.servers import HttpTestServer, free_port, free_ports


@pytest.fixture
def orders() -> Iterator[HttpTestServer]:
    with HttpTestServer("orders") as s:
        yield s


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MeshHarness]:
    spec = {"mtls": {"mode": "strict"}, "defaultPermission": "allow"}
    with MeshHarness(tmp_path, mtls="strict", auth=True, mesh_spec=spec) as m:
        yield m


def agent_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def test_agent_without_a_token_refuses_instead_of_using_the_admin_token(
    mesh: MeshHarness, orders: HttpTestServer
) -> None:
    assert (mesh.data_dir / "admin.token").exists()  # readable by the agent, as on any CP host
    no_token = {"MESHLINE_TOKEN": "", "MESHLINE_TOKEN_FILE": ""}
    sc = mesh.sidecar("orders", app_port=orders.port, wait=False, env=no_token, issue_token=False)
    wait_until(lambda: sc.proc.poll() is not None, 30, what="the agent without a token to give up")
    assert sc.proc.returncode != 0
    log = sc.log()
    assert "needs a dataplane token and this agent was given none" in log, log
    assert "meshline token issue --kind dataplane --mesh default --service orders" in log, log
    with pytest.raises(NotFound):  # it changed nothing
        mesh.api.get("/api/v1/meshes/default/dataplanes/orders-1")

    # the harness, like an operator, gives each agent its own dataplane token: that one works
    ok = mesh.sidecar("orders", app_port=orders.port, name="orders-2")
    assert ok.token is not None and token_kind(ok.token) == "dataplane"
    assert agent_env(ok.proc.pid)["MESHLINE_TOKEN"] == ok.token
    assert mesh.dataplane_status("orders-2")["connected"]


def test_agent_config_never_reads_the_admin_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for home in (tmp_path / "data", tmp_path / "home" / ".meshline"):
        home.mkdir(parents=True)
        (home / "admin.token").write_text("admin-token-text\n")
    monkeypatch.setenv("MESHLINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MESHLINE_TOKEN", raising=False)
    monkeypatch.delenv("MESHLINE_TOKEN_FILE", raising=False)
    opts: dict[str, Any] = dict(
        service="orders", app_port=8080, mesh="default", name="orders-1", api="http://127.0.0.1:15681",
        token=None, token_file=None, ca_file=None, xds_address=None, address="127.0.0.1", inbound_port=None,
        protocol="http", tags=(), upstreams=(), work_dir=tmp_path / "work", envoy_concurrency=1,
        envoy_log_level="warn", envoy_binary=None, drain_seconds=1.0, register_timeout=30.0, ready_timeout=60.0,
    )
    assert build_config(opts).token is None
    assert build_config(opts, {"token": "given"}).token == "given"  # `meshline --token ...`
    assert build_config({**opts, "token": "explicit"}).token == "explicit"

    # and the agent's API client sends no Authorization header it was not given
    seen: list[bytes] = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async def call() -> None:
        port = free_port()
        async with await asyncio.start_server(on_connection, "127.0.0.1", port):
            await AgentApi(f"http://127.0.0.1:{port}").get("Dataplane", "default", "orders-1")

    asyncio.run(call())
    assert seen and b"authorization" not in seen[0].lower()


def test_meshline_up_gives_each_demo_agent_a_dataplane_token(tmp_path: Path) -> None:
    web_port, outbound_base = free_ports(5), free_ports(3)
    data, api = tmp_path / "data", f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "meshline", "up", "--port", str(web_port), "--outbound-base", str(outbound_base),
           "--data-dir", str(data), "--api-address", api,
           "--xds-address", f"127.0.0.1:{free_port()}"]
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: "Meshline is up" in log.read_text() or proc.poll() is not None, 90,
                   what="meshline up to be ready")
        assert proc.poll() is None, log.read_text()
        assert httpx.get(f"http://127.0.0.1:{web_port}/", timeout=5).status_code == 200
        agents = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"run" in argv and b"--work-dir" in argv and str(data).encode() in b" ".join(argv):
                agents[argv[argv.index(b"--name") + 1].decode()] = agent_env(int(entry.name))
        assert set(agents) == {"web-1", "orders-v1", "orders-v2", "inventory-1"}
        for name, env in agents.items():
            assert token_kind(env.get("MESHLINE_TOKEN")) == "dataplane", name
        admin = (data / "admin.token").read_text().strip()
        listed = httpx.get(f"http://{api}/api/v1/tokens", headers={"Authorization": f"Bearer {admin}"}).json()["items"]
        demo = sorted(t["service"] for t in listed if t["kind"] == "dataplane")
        assert demo == ["edge", "inventory", "orders", "orders", "web"], json.dumps(listed)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
