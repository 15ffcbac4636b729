"""CLI contexts (which control plane, CA and token the CLI uses) and how the agent finds xDS."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshline.agent.api import AgentApi
from meshline.agent.xds_discovery import discover, probe
from meshline.api import contexts
from meshline.api.client import ApiClient
from meshline.cli.agent import build_config
from meshline.cli.on_path import meshline_command
from meshline.controlplane.settings import Settings
from meshline.core.errors import MeshlineError, Unauthorized, Unavailable
from meshline.security import crypto
from meshline.testing.mesh import ControlPlaneThread
from meshline.testing.servers import free_port


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config.yaml"
    monkeypatch.setenv("MESHLINE_CONFIG", str(path))
    for var in ("MESHLINE_API", "MESHLINE_TOKEN", "MESHLINE_TOKEN_FILE", "MESHLINE_CONTEXT", "MESHLINE_CA_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return path


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneThread]:
    data = tmp_path_factory.mktemp("cp")
    thread = ControlPlaneThread(Settings(data_dir=data, store_url=f"sqlite:///{data / 'db'}", auth=True,
                                         api_address=f"127.0.0.1:{free_port()}",
                                         xds_address=f"127.0.0.1:{free_port()}"))
    thread.start()
    yield thread
    thread.stop()


def _two(config: Path, tmp_path: Path) -> None:
    (tmp_path / "a.token").write_text("token-a\n")
    (tmp_path / "b.token").write_text("token-b\n")
    contexts.remember_local("http://127.0.0.1:20001", tmp_path, tmp_path / "a.token", None)
    contexts.remember_local("http://127.0.0.1:20002", tmp_path, tmp_path / "b.token", None)


def test_control_planes_write_their_context_and_the_last_is_current(config: Path, tmp_path: Path) -> None:
    _two(config, tmp_path)
    loaded = contexts.load()
    assert sorted(loaded.items) == ["local-20001", "local-20002"] and loaded.current == "local-20002"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    conn = contexts.resolve()
    assert (conn.url, conn.token) == ("http://127.0.0.1:20002", "token-b")
    assert "current context 'local-20002'" in conn.describe() and str(tmp_path / "b.token") in conn.describe()


def test_context_flag_then_api_url_choose_the_control_plane(config: Path, tmp_path: Path) -> None:
    _two(config, tmp_path)
    assert contexts.resolve(context="local-20001").token == "token-a"
    by_url = contexts.resolve(api="http://localhost:20001/")
    assert (by_url.url, by_url.token, by_url.context) == ("http://localhost:20001", "token-a", "local-20001")
    # an unknown URL gets no context's token
    assert contexts.resolve(api="http://127.0.0.1:20003").token is None
    # the agent takes URLs, never a context's admin token
    assert contexts.resolve(use_context_token=False).token is None
    with pytest.raises(MeshlineError, match=r"no context 'nope' .*known: local-20001, local-20002"):
        contexts.resolve(context="nope")


def test_api_matching_a_gone_control_planes_context_is_not_an_error(config: Path, tmp_path: Path) -> None:
    """A control plane that is gone left its context; a new one on the same port, named by --api,
    is reached without that context's (deleted) token, while naming the context still fails."""
    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / "admin.token").write_text("old\n")
    contexts.remember_local("http://127.0.0.1:20001", gone, gone / "admin.token", None)
    (gone / "admin.token").unlink()
    conn = contexts.resolve(api="http://127.0.0.1:20001")
    assert conn.token is None and "no token (context 'local-20001'" in conn.token_source
    with pytest.raises(MeshlineError, match="does not exist"):
        contexts.resolve(context="local-20001")
    with pytest.raises(MeshlineError, match="does not exist"):
        contexts.resolve()  # the current context: the user's choice


def test_a_refused_token_names_the_control_plane_the_file_and_the_fix(
    config: Path, tmp_path: Path, cp: ControlPlaneThread
) -> None:
    stale = tmp_path / "stale.token"
    stale.write_text("eyJhbGciOiJFUzI1NiJ9.eyJraW5kIjoiYWRtaW4ifQ.c2ln\n")  # another control plane's
    contexts.remember_local(cp.cp.api_url, tmp_path, stale, None)
    with ApiClient() as client, pytest.raises(Unauthorized) as err:
        client.get("/api/v1/meshes")
    message = str(err.value)
    assert cp.cp.api_url in message and str(stale) in message
    assert f"context '{contexts.local_context_name(cp.cp.api_url)}'" in message
    assert "meshline context list" in message


def test_an_unreachable_control_plane_says_which_context_chose_it(config: Path, tmp_path: Path) -> None:
    contexts.remember_local(f"http://127.0.0.1:{free_port()}", tmp_path, None, None)
    with ApiClient() as client, pytest.raises(Unavailable) as err:
        client.get("/api/v1/meshes")
    assert "chosen by current context" in str(err.value) and "meshline context use NAME" in str(err.value)


def test_context_commands(config: Path, tmp_path: Path) -> None:
    env = {**os.environ, "MESHLINE_CONFIG": str(config)}
    tok = tmp_path / "t"
    tok.write_text("x")

    def ml(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "meshline", "context", *args], env=env, capture_output=True,
                              text=True, timeout=30)

    assert ml("add", "prod", "--api", "https://cp.example:15681", "--token-file", str(tok)).returncode == 0
    assert ml("add", "dev", "--api", "http://127.0.0.1:15681", "--no-use").returncode == 0
    listing = ml("list").stdout
    assert "* prod" in listing.replace("  ", " ") and "dev" in listing
    assert ml("use", "dev").returncode == 0 and contexts.load().current == "dev"
    bad = ml("use", "nope")
    assert bad.returncode == 1 and "known: dev, prod" in bad.stderr


def _agent_opts(cp: ControlPlaneThread, tmp_path: Path, **over: Any) -> dict[str, Any]:
    opts = dict(service="orders", app_port=8080, mesh="default", name="orders-1", api=cp.cp.api_url, token=None,
                token_file=None, ca_file=None, xds_address=None, address="127.0.0.1", inbound_port=None,
                protocol="http", tags=(), upstreams=(), work_dir=tmp_path / "work", envoy_concurrency=1,
                envoy_log_level="warn", envoy_binary=None, drain_seconds=1.0, register_timeout=30.0,
                ready_timeout=60.0, context=None)  # fmt: skip
    return {**opts, **over}


def _admin(cp: ControlPlaneThread) -> str:
    return (cp.settings.data_dir / "admin.token").read_text().strip()


def test_the_api_tells_the_agent_its_xds_address_and_ca(config: Path, tmp_path: Path, cp: ControlPlaneThread) -> None:
    cfg = build_config(_agent_opts(cp, tmp_path))
    cfg.work_dir.mkdir(parents=True)
    assert not cfg.xds_pinned and cfg.xds_port == 15678  # the guess, before asking
    api = AgentApi(cfg.api_url, token=_admin(cp))
    assert asyncio.run(discover(cfg, api.xds_info))
    assert (cfg.xds_host, cfg.xds_port) == ("127.0.0.1", cp.cp.xds_port)
    assert cfg.xds_ca is not None and cfg.xds_ca.read_text() == (cp.settings.data_dir / "cp-ca.pem").read_text()
    asyncio.run(probe(cfg))  # TLS handshake verified with that CA


def test_a_wrong_xds_address_or_ca_is_one_error_naming_what_was_tried(
    config: Path, tmp_path: Path, cp: ControlPlaneThread
) -> None:
    cfg = build_config(_agent_opts(cp, tmp_path, xds_address=f"127.0.0.1:{free_port()}"))
    cfg.work_dir.mkdir(parents=True)
    asyncio.run(discover(cfg, AgentApi(cfg.api_url, token=_admin(cp)).xds_info))
    with pytest.raises(MeshlineError) as err:
        asyncio.run(probe(cfg, within=0.3))
    assert f"cannot reach the control plane's xDS server at 127.0.0.1:{cfg.xds_port} (--xds-address; TLS" in str(err.value)
    # another control plane's CA
    other = ControlPlaneThread(Settings(data_dir=tmp_path / "other", store_url=f"sqlite:///{tmp_path / 'o.db'}",
                                        api_address=f"127.0.0.1:{free_port()}",
                                        xds_address=f"127.0.0.1:{free_port()}"))
    other.start()
    try:
        cfg.xds_port = cp.cp.xds_port
        cfg.xds_ca_file = tmp_path / "other" / "cp-ca.pem"
        with pytest.raises(MeshlineError, match="cannot verify the control plane's xDS server .*another control plane"):
            asyncio.run(probe(cfg))
    finally:
        other.stop()


def test_the_control_plane_logs_who_failed_an_xds_handshake_and_why(
    config: Path, tmp_path: Path, cp: ControlPlaneThread, caplog: pytest.LogCaptureFixture
) -> None:
    """The server side of a handshake cannot name the peer; the agent that failed tells the API,
    and the control plane logs one line: who, from where, what it dialled, which CA, the fix."""
    other = ControlPlaneThread(Settings(data_dir=tmp_path / "other", store_url=f"sqlite:///{tmp_path / 'o.db'}",
                                        api_address=f"127.0.0.1:{free_port()}",
                                        xds_address=f"127.0.0.1:{free_port()}"))  # fmt: skip
    other.start()
    try:
        # registered with cp, its xDS pinned to the other control plane's address
        cfg = build_config(_agent_opts(cp, tmp_path, xds_address=f"127.0.0.1:{other.cp.xds_port}"))
        cfg.work_dir.mkdir(parents=True)
        with ApiClient(cfg.api_url, token=_admin(cp)) as admin:
            token = admin.request("POST", "/api/v1/tokens", json={
                "kind": "dataplane", "mesh": "default", "service": "orders", "dataplane": "orders-1"})["token"]
        api = AgentApi(cfg.api_url, token=token)
        asyncio.run(discover(cfg, api.xds_info))
        caplog.set_level(logging.WARNING, logger="meshline.xds")
        with pytest.raises(MeshlineError, match="cannot verify"):
            asyncio.run(probe(cfg, report=api.xds_handshake_failed))
    finally:
        other.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "meshline.xds" and "handshake failed" in r.getMessage()]
    assert len(lines) == 1, lines
    own = crypto.fingerprint(crypto.load_certs((cp.settings.data_dir / "cp-ca.pem").read_text())[0])
    assert lines[0].startswith(f"xDS TLS handshake failed: dataplane orders-1 (mesh default) from 127.0.0.1 dialled"
                               f" 127.0.0.1:{other.cp.xds_port} (--xds-address): cannot verify the server's"
                               " certificate"), lines[0]  # fmt: skip
    assert f"it trusts this control plane's CA ({own}), so the server at 127.0.0.1:{other.cp.xds_port} is not this" \
        " control plane" in lines[0], lines[0]
    # a report is bounded and printable; anything else is refused
    with pytest.raises(MeshlineError, match="tried: must be a string"):
        asyncio.run(api.xds_handshake_failed({"tried": 5}))  # type: ignore[dict-item]


def test_run_help_tells_the_truth_about_xds_tls() -> None:
    out = subprocess.run([sys.executable, "-m", "meshline", "run", "--help"], capture_output=True, text=True,
                         timeout=30).stdout
    assert "plaintext without it" not in out
    assert "whether xDS uses TLS, and its CA, come from the API" in " ".join(out.split())


def test_the_banner_says_how_to_get_meshline_on_path(tmp_path: Path) -> None:
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "meshline").write_text("#!/bin/sh\n")
    (venv_bin / "meshline").chmod(0o755)
    python = str(venv_bin / "python")
    cmd, note = meshline_command(path_env="/usr/bin", executable=python)
    assert cmd == str(venv_bin / "meshline")
    assert note is not None and f'export PATH="{venv_bin}:$PATH"' in note
    assert meshline_command(path_env=f"{venv_bin}:/usr/bin", executable=python) == ("meshline", None)
