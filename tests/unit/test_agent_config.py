"""Turning CLI values into the agent's config, the Dataplane it registers and the app's env."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from meshline.agent import process
from meshline.agent.agent import progress_message, summary_lines
from meshline.agent.config import (
    MAX_SOCKET_PATH,
    AgentConfig,
    Upstream,
    app_env,
    check_config,
    dataplane_doc,
    default_name,
    default_work_dir,
    outbound_env,
    outbound_env_name,
    parse_tags,
    parse_upstreams,
    socket_path,
    xds_from_api,
)
from meshline.agent.envoy import ReadyState, diagnose
from meshline.cli.agent import build_config
from meshline.core.errors import MeshlineError, ValidationError
from meshline.kinds import default_kinds


def config(tmp_path: Path, **kw: Any) -> AgentConfig:
    base: dict[str, Any] = dict(
        mesh="default", name="orders-1", service="orders", address="127.0.0.1", app_port=8080,
        inbound_port=18080, work_dir=tmp_path, api_url="http://127.0.0.1:15681",
        xds_host="127.0.0.1", xds_port=15678,
    )
    base.update(kw)
    return AgentConfig(**base)


def test_tags() -> None:
    assert parse_tags(["version=v2", " zone = eu-1 "]) == {"version": "v2", "zone": "eu-1"}
    for bad, words in [("version", "KEY=VALUE"), ("service=x", "--service"), ("protocol=http", "--protocol"),
                       ("v=a b", "letters")]:
        with pytest.raises(MeshlineError, match=words):
            parse_tags([bad])
    with pytest.raises(MeshlineError, match="twice"):
        parse_tags(["a=1", "a=2"])


def test_upstreams() -> None:
    assert parse_upstreams(["payments=9001", "user-db=9002"]) == [Upstream("payments", 9001),
                                                                   Upstream("user-db", 9002)]
    for bad, words in [("payments", "SERVICE=LOCALPORT"), ("payments=x", "SERVICE=LOCALPORT"),
                       ("Payments=9001", "lowercase"), ("p=70000", "1-65535")]:
        with pytest.raises(MeshlineError, match=words):
            parse_upstreams([bad])
    with pytest.raises(MeshlineError, match="twice"):
        parse_upstreams(["a=1", "a=2"])
    with pytest.raises(MeshlineError, match="used twice"):
        parse_upstreams(["a=1", "b=1"])


def test_outbound_env_names() -> None:
    assert outbound_env_name("payments") == "MESHLINE_OUTBOUND_PAYMENTS"
    assert outbound_env_name("user-db") == "MESHLINE_OUTBOUND_USER_DB"
    assert outbound_env([Upstream("user-db", 9002)]) == {"MESHLINE_OUTBOUND_USER_DB": "127.0.0.1:9002"}


def test_app_env_adds_upstreams_and_drops_secrets(tmp_path: Path) -> None:
    cfg = config(tmp_path, upstreams=[Upstream("payments", 9001)])
    base = {"PATH": "/bin", "MESHLINE_TOKEN": "s3cret", "MESHLINE_TOKEN_FILE": "/t",
            "MESHLINE_OUTBOUND_STALE": "127.0.0.1:1"}
    env = app_env(base, cfg)
    assert env["PATH"] == "/bin"
    assert env["MESHLINE_OUTBOUND_PAYMENTS"] == "127.0.0.1:9001"
    assert env["MESHLINE_ADMIN_SOCKET"] == str(tmp_path / "admin.sock")
    assert env["MESHLINE_SERVICE"] == "orders"
    assert "MESHLINE_TOKEN" not in env and "MESHLINE_TOKEN_FILE" not in env
    assert "MESHLINE_OUTBOUND_STALE" not in env


def test_dataplane_doc_is_a_valid_dataplane(tmp_path: Path) -> None:
    cfg = config(tmp_path, tags={"version": "v2"}, protocol="http", upstreams=[Upstream("payments", 9001)])
    doc = dataplane_doc(cfg, ready=False)
    assert doc["spec"] == {
        "address": "127.0.0.1",
        "inbound": [{"port": 18080, "servicePort": 8080, "serviceAddress": "127.0.0.1",
                     "tags": {"version": "v2", "service": "orders", "protocol": "http"}}],
        "outbound": [{"port": 9001, "service": "payments", "address": "127.0.0.1"}],
        "ready": False,
    }
    res = default_kinds().decode(doc)
    assert (res.kind, res.mesh, res.name) == ("Dataplane", "default", "orders-1")
    check_config(cfg)


def test_check_config_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="--name"):
        check_config(config(tmp_path, name="Orders_1"))
    with pytest.raises(MeshlineError, match="--upstream payments 18080 is also the --inbound-port"):
        check_config(config(tmp_path, upstreams=[Upstream("payments", 18080)]))
    with pytest.raises(MeshlineError, match="--port 18080 is also the --inbound-port"):
        check_config(config(tmp_path, app_port=18080))


def test_default_name_is_stable_and_valid() -> None:
    assert default_name("orders", 8080, hostname="Web-01.example.com") == "orders-web-01-8080"
    assert default_name("orders", 8080, hostname="") == "orders-8080"
    long = default_name("a" * 50, 8080, hostname="h" * 40)
    assert len(long) <= 63 and long.startswith("a" * 50) and long.endswith("-8080")


def test_default_work_dir(tmp_path: Path) -> None:
    assert default_work_dir("default", "orders-1", tmp_path) == tmp_path / "dataplanes" / "default.orders-1"


def test_sockets_fall_back_to_a_short_path(tmp_path: Path) -> None:
    assert socket_path(Path("/w"), "sds") == Path("/w/sds.sock")
    deep = Path("/" + "d" * 120)
    for name in ("sds", "admin", "xds"):
        short = socket_path(deep, name)
        assert len(str(short)) <= MAX_SOCKET_PATH and short.name.endswith(f".{name}.sock")
        assert socket_path(deep, name) == short  # stable for the same work dir
    cfg = config(deep)
    assert {cfg.sds_path, cfg.admin_socket, cfg.xds_socket} == {socket_path(deep, n) for n in ("sds", "admin", "xds")}


def test_a_long_tmpdir_falls_back_to_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", "/" + "t" * 90)  # a CI runner's or a test's TMPDIR
    short = socket_path(Path("/" + "d" * 120), "admin")
    assert str(short).startswith("/tmp/meshline-") and len(str(short)) <= MAX_SOCKET_PATH


def test_xds_address() -> None:
    assert xds_from_api("http://10.0.0.1:15681", None) == ("10.0.0.1", 15678)
    assert xds_from_api("https://cp.example.com", None) == ("cp.example.com", 15678)
    assert xds_from_api("http://127.0.0.1:1", "10.0.0.2:9000") == ("10.0.0.2", 9000)
    assert xds_from_api("http://127.0.0.1:1", "cp") == ("cp", 15678)
    assert xds_from_api("http://0.0.0.0:15681", None) == ("127.0.0.1", 15678)
    with pytest.raises(MeshlineError, match="HOST:PORT"):
        xds_from_api("http://x", "cp:port")


def test_build_config_from_cli_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHLINE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MESHLINE_TOKEN", raising=False)
    monkeypatch.delenv("MESHLINE_TOKEN_FILE", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text("tok\n")
    opts: dict[str, Any] = dict(
        service="orders", app_port=8080, mesh="default", name=None, api=None, token=None,
        token_file=token_file, ca_file=None, xds_address=None, address="127.0.0.1", inbound_port=None,
        protocol="http", tags=("version=v1",), upstreams=("payments=9001",), work_dir=None,
        envoy_concurrency=1, envoy_log_level="warn", envoy_binary=None, drain_seconds=1.0, callers_ack_timeout=10.0,
        register_timeout=30.0, ready_timeout=60.0,
    )
    cfg = build_config(opts, {"api": "http://10.9.9.9:15681/"})
    assert cfg.api_url == "http://10.9.9.9:15681"
    assert (cfg.xds_host, cfg.xds_port) == ("10.9.9.9", 15678)
    assert cfg.token == "tok"
    assert cfg.name.startswith("orders-") and cfg.name.endswith("-8080")
    assert cfg.work_dir == tmp_path / "dataplanes" / f"default.{cfg.name}"
    assert cfg.inbound_port and cfg.admin_socket == socket_path(cfg.work_dir, "admin")
    assert cfg.inbound_tags() == {"version": "v1", "service": "orders", "protocol": "http"}
    check_config(cfg)
    token_file.write_text("")
    with pytest.raises(MeshlineError, match="empty"):
        build_config(opts)


def test_exit_codes() -> None:
    assert process.exit_code(0) == 0
    assert process.exit_code(7) == 7
    assert process.exit_code(-15) == 143  # killed by SIGTERM, as a shell reports it
    assert process.describe_exit(-9) == "killed by SIGKILL"
    assert process.describe_exit(3) == "exit code 3"


def test_diagnose_envoy_failures() -> None:
    log = [
        "[2026-01-01 00:00:00.000][1][info][main] starting",
        "[2026-01-01 00:00:00.001][1][critical][main] [source/server/server.cc:1] error initializing config:"
        " cannot bind '127.0.0.1:19000': Address already in use",
    ]
    msg = diagnose(log)
    assert msg.startswith("error initializing config: cannot bind '127.0.0.1:19000'")
    assert "port Envoy needs is in use" in msg
    assert diagnose(["all good"]) == ""


def test_summary_and_progress(tmp_path: Path) -> None:
    cfg = config(tmp_path, upstreams=[Upstream("payments", 9001)])
    text = "\n".join(summary_lines(cfg))
    assert "127.0.0.1:18080 -> app 127.0.0.1:8080 (tcp)" in text
    assert "payments -> 127.0.0.1:9001 ($MESHLINE_OUTBOUND_PAYMENTS)" in text
    assert f"curl --unix-socket {tmp_path / 'admin.sock'} http://envoy/ready" in text
    assert str(cfg.envoy_log_path) in text
    assert "not connected" in progress_message(2, ReadyState("PRE_INITIALIZING", False), "cp:1")
    assert "waiting for its configuration" in progress_message(2, ReadyState("INITIALIZING", True), "cp:1")
