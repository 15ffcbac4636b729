"""The agent's lifecycle against a fake control plane (in-process) and a fake Envoy (a tiny
Python script with an admin endpoint), so ordering rules are checked quickly and exactly."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from meshline.agent import Agent, AgentConfig, EnvoyError, Phase
from meshline.agent.config import free_port
from meshline.agent.registration import deregister, register
from meshline.core.errors import Forbidden, MeshlineError, NotFound, Unavailable

FAKE_ENVOY = textwrap.dedent(
    """
    import http.server, os, signal, socketserver, sys, threading, yaml
    events = open(os.environ["FAKE_ENVOY_EVENTS"], "a", buffering=1)
    mode = os.environ.get("FAKE_ENVOY_MODE", "ok")
    if mode == "fail":
        print("[2026][1][critical][main] [server.cc:1] error initializing config: "
              "cannot bind '127.0.0.1:1': Address already in use", file=sys.stderr)
        sys.exit(1)
    boot = yaml.safe_load(open(sys.argv[sys.argv.index("-c") + 1]))
    admin = boot["admin"]["address"]["pipe"]

    class Admin(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def reply(self, code, text):
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def do_GET(self):
            if self.path.startswith("/ready"):
                live = mode != "never-ready"
                self.reply(200 if live else 503, "LIVE\\n" if live else "PRE_INITIALIZING\\n")
            else:
                self.reply(200, "control_plane.connected_state: 0\\n")
        def do_POST(self):
            events.write("envoy:" + self.path.split("?")[0].strip("/") + "\\n")
            self.reply(200, "OK\\n")

    if os.path.exists(admin["path"]):
        os.unlink(admin["path"])
    server = socketserver.UnixStreamServer(admin["path"], Admin)
    os.chmod(admin["path"], admin["mode"])
    def term(*_):
        events.write("envoy:sigterm\\n")
        os._exit(0)
    signal.signal(signal.SIGTERM, term)
    events.write("envoy:start\\n")
    server.serve_forever()
    """
)


class FakeApi:
    url = "http://cp.test:15681"

    def __init__(self, events: Path, fail: list[Exception] | None = None) -> None:
        self.events = events
        self.fail = list(fail or [])
        self.docs: list[dict[str, Any]] = []
        self.deleted: list[tuple[str, str | None, str]] = []

    def _log(self, what: str) -> None:
        with open(self.events, "a") as f:
            f.write(what + "\n")

    async def put(self, doc: dict[str, Any]) -> Any:
        if self.fail:
            raise self.fail.pop(0)
        self.docs.append(doc)
        self._log("api:put")
        return doc

    async def delete(self, kind: str, mesh: str | None, name: str) -> Any:
        self.deleted.append((kind, mesh, name))
        self._log("api:delete")
        return {"deleted": name}

    async def get(self, kind: str, mesh: str | None, name: str) -> Any:
        return self.docs[-1] if self.docs else None


class Unreachable(FakeApi):
    async def put(self, doc: dict[str, Any]) -> Any:
        raise Unavailable("down")


class RecordingService:
    def __init__(self, events: Path) -> None:
        self.name = "recorder"
        self.events = events
        self.config: AgentConfig | None = None

    async def start(self, config: AgentConfig) -> None:
        self.config = config
        with open(self.events, "a") as f:
            f.write("service:start\n")

    async def stop(self) -> None:
        with open(self.events, "a") as f:
            f.write("service:stop\n")


@pytest.fixture
def events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "events"
    path.touch()
    monkeypatch.setenv("FAKE_ENVOY_EVENTS", str(path))
    return path


@pytest.fixture
def fake_envoy(tmp_path: Path) -> str:
    path = tmp_path / "fake-envoy"
    path.write_text(f"#!{sys.executable}\n{FAKE_ENVOY}")
    path.chmod(0o755)
    return str(path)


def make_config(tmp_path: Path, envoy: str, **kw: Any) -> AgentConfig:
    base: dict[str, Any] = dict(
        mesh="default", name="orders-1", service="orders", address="127.0.0.1", app_port=free_port(),
        inbound_port=free_port(), work_dir=tmp_path / "work",
        api_url=FakeApi.url, xds_host="127.0.0.1", xds_port=15678, envoy_path=envoy,
        drain_seconds=0.05, ready_timeout=5.0, stop_timeout=2.0,
    )
    base.update(kw)
    return AgentConfig(**base)


def lines(path: Path) -> list[str]:
    return path.read_text().split()


async def wait_phase(agent: Agent, phase: Phase, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while agent.phase is not phase:
            await asyncio.sleep(0.01)


async def test_shutdown_deregisters_then_drains_then_stops_envoy(tmp_path: Path, events: Path,
                                                                  fake_envoy: str) -> None:
    cfg = make_config(tmp_path, fake_envoy)
    recorder = RecordingService(events)
    cfg.local_services = [recorder]
    messages: list[str] = []
    api = FakeApi(events)
    agent = Agent(cfg, api=api, report=messages.append, handle_signals=False)
    task = asyncio.create_task(agent.run())
    await wait_phase(agent, Phase.RUNNING)
    assert cfg.envoy_pid_path.exists()
    agent.request_stop()
    assert await task == 0
    assert lines(events) == ["api:put", "service:start", "envoy:start", "api:delete", "envoy:drain_listeners",
                             "envoy:sigterm", "service:stop"]
    assert recorder.config is cfg
    assert api.docs[0]["spec"]["inbound"][0]["tags"]["service"] == "orders"
    assert api.deleted == [("Dataplane", "default", "orders-1")]
    assert not cfg.envoy_pid_path.exists()
    assert agent.phase is Phase.STOPPED
    assert any("inbound" in m for m in messages)


async def test_run_mode_exits_with_the_app_code_without_draining(tmp_path: Path, events: Path,
                                                                  fake_envoy: str) -> None:
    cfg = make_config(tmp_path, fake_envoy)
    agent = Agent(cfg, api=FakeApi(events), command=[sys.executable, "-c", "raise SystemExit(5)"],
                  report=lambda m: None, handle_signals=False)
    assert await agent.run() == 5
    assert lines(events) == ["api:put", "envoy:start", "api:delete", "envoy:sigterm"]


async def test_envoy_that_fails_to_start_gives_one_line_with_the_cause(tmp_path: Path, events: Path,
                                                                       fake_envoy: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_ENVOY_MODE", "fail")
    cfg = make_config(tmp_path, fake_envoy)
    api = FakeApi(events)
    with pytest.raises(EnvoyError) as err:
        await Agent(cfg, api=api, report=lambda m: None, handle_signals=False).run()
    msg = str(err.value)
    assert "\n" not in msg
    assert "Envoy exited while starting (exit code 1)" in msg
    assert "Address already in use" in msg and "stop what uses it" in msg
    assert str(cfg.envoy_log_path) in msg
    assert api.deleted  # registered, so deregistered again


async def test_envoy_never_ready_times_out(tmp_path: Path, events: Path, fake_envoy: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_ENVOY_MODE", "never-ready")
    cfg = make_config(tmp_path, fake_envoy, ready_timeout=1.3)
    messages: list[str] = []
    with pytest.raises(EnvoyError, match="not ready after 1.3s: it cannot reach the control plane"):
        await Agent(cfg, api=FakeApi(events), report=messages.append, handle_signals=False).run()
    assert any(m.startswith("waiting for Envoy to become ready (1s)") for m in messages)
    assert "envoy:sigterm" in lines(events)


async def test_missing_envoy_binary(tmp_path: Path, events: Path) -> None:
    cfg = make_config(tmp_path, str(tmp_path / "no-such-envoy"))
    api = FakeApi(events)
    with pytest.raises(MeshlineError, match="not found or not executable; fix --envoy-binary"):
        await Agent(cfg, api=api, report=lambda m: None, handle_signals=False).run()
    assert not api.docs  # checked before registering


async def test_port_in_use_is_reported_before_starting(tmp_path: Path, events: Path, fake_envoy: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        cfg = make_config(tmp_path, fake_envoy, inbound_port=s.getsockname()[1])
        with pytest.raises(MeshlineError, match="Envoy cannot listen on 127.0.0.1:.*change --inbound-port"):
            await Agent(cfg, api=FakeApi(events), report=lambda m: None, handle_signals=False).run()


async def test_one_agent_per_work_dir(tmp_path: Path, events: Path, fake_envoy: str) -> None:
    first = Agent(make_config(tmp_path, fake_envoy), api=FakeApi(events), report=lambda m: None,
                  handle_signals=False)
    task = asyncio.create_task(first.run())
    await wait_phase(first, Phase.RUNNING)
    second = Agent(make_config(tmp_path, fake_envoy), api=FakeApi(events), report=lambda m: None,
                   handle_signals=False)
    with pytest.raises(MeshlineError, match="another agent is already running dataplane orders-1"):
        await second.run()
    first.request_stop()
    assert await task == 0


async def test_stop_while_the_control_plane_is_unreachable(tmp_path: Path, events: Path, fake_envoy: str) -> None:
    cfg = make_config(tmp_path, fake_envoy, register_timeout=30)
    api = Unreachable(events)
    agent = Agent(cfg, api=api, report=lambda m: None, handle_signals=False)
    task = asyncio.create_task(agent.run())
    await wait_phase(agent, Phase.REGISTERING)
    await asyncio.sleep(0.1)
    agent.request_stop()
    async with asyncio.timeout(2):
        assert await task == 0
    assert not api.deleted and lines(events) == []


# -- registration ----------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_register_retries_while_unreachable(tmp_path: Path) -> None:
    api = FakeApi(tmp_path / "ev", fail=[Unavailable("down"), Unavailable("down"), Unavailable("down")])
    clock, messages = FakeClock(), []
    await register(api, {"name": "x"}, 30, messages.append, clock=clock, sleep=clock.sleep)
    assert api.docs == [{"name": "x"}]
    assert clock.sleeps == [0.25, 0.5, 1.0]
    assert messages[0] == "control plane at http://cp.test:15681 is not reachable; retrying (0s of 30s)..."
    assert messages[-1] == "control plane at http://cp.test:15681 reached"


async def test_register_gives_up_after_the_timeout(tmp_path: Path) -> None:
    clock = FakeClock()
    with pytest.raises(Unavailable, match=r"cannot reach the control plane at http://cp.test:15681 after 3s"):
        await register(Unreachable(tmp_path / "ev"), {}, 3, lambda m: None, clock=clock, sleep=clock.sleep)
    assert clock.now == 3


async def test_other_errors_are_final(tmp_path: Path) -> None:
    api = FakeApi(tmp_path / "ev", fail=[Forbidden("token is for service 'web'")])
    with pytest.raises(Forbidden, match="web"):
        await register(api, {}, 30, lambda m: None)


async def test_deregister_is_best_effort(tmp_path: Path) -> None:
    class Gone(FakeApi):
        async def delete(self, kind: str, mesh: str | None, name: str) -> Any:
            raise NotFound("gone")

    class Down(FakeApi):
        async def delete(self, kind: str, mesh: str | None, name: str) -> Any:
            raise Unavailable("cannot reach the control plane")

    messages: list[str] = []
    assert await deregister(Gone(tmp_path / "ev"), "default", "x", messages.append)
    assert not await deregister(Down(tmp_path / "ev"), "default", "x", messages.append)
    assert messages == ["could not deregister dataplane x: cannot reach the control plane"]


async def test_a_missing_app_command_fails_before_anything_starts(tmp_path: Path, events: Path,
                                                                  fake_envoy: str) -> None:
    from meshline.agent.process import AppStartError

    api = FakeApi(events)
    agent = Agent(make_config(tmp_path, fake_envoy), api=api, command=["no-such-program-xyz"],
                  report=lambda m: None, handle_signals=False)
    with pytest.raises(AppStartError, match="command not found: no-such-program-xyz") as err:
        await agent.run()
    assert err.value.exit_code == 127
    assert not api.docs and lines(events) == []


async def test_ready_announcer_stops_with_the_agent_even_if_a_cancel_is_lost(tmp_path: Path, events: Path,
                                                                              fake_envoy: str) -> None:
    # On 3.11, asyncio.wait_for() may swallow a cancel racing a refused connection; the
    # announcer must end on its own once the agent leaves RUNNING (it once hung shutdown).
    agent = Agent(make_config(tmp_path, fake_envoy), api=FakeApi(events), report=lambda m: None,
                  handle_signals=False)
    agent.phase = Phase.RUNNING
    task = asyncio.create_task(agent._announce_ready())
    await asyncio.sleep(0.3)  # the app port refuses connections
    assert not task.done()
    agent.phase = Phase.STOPPING  # no cancel()
    async with asyncio.timeout(2):
        await task
    assert lines(events) == []  # never announced ready
