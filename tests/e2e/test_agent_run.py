"""`meshline run` / `meshline dataplane` with real processes: a control plane (in-process,
in a thread), the agent as a subprocess, a real Envoy, and a small Python app."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from meshline.agent.config import socket_path
from meshline.core.errors import NotFound
from meshline.testing.mesh import MeshHarness, wait_until
from meshline.testing.servers import free_port

pytestmark = pytest.mark.e2e


# `mesh` (tests/e2e/conftest.py): a control plane whose default mesh has mTLS disabled, so
# Envoy gets ready without the SDS server.


class AgentRun:
    """One agent subprocess with known ports and work dir."""

    def __init__(self, mesh: MeshHarness | None, tmp: Path, sub: str, app: list[str] | None = None,
                 name: str = "orders-1", extra: list[str] | None = None) -> None:
        self.name = name
        self.upstream_port = free_port()
        self.work_dir = tmp / "work"
        self.admin_socket = socket_path(self.work_dir, "admin")
        self.out = tmp / "agent.out"
        api = mesh.api_url if mesh else f"http://127.0.0.1:{free_port()}"
        xds = f"127.0.0.1:{mesh.xds_port}" if mesh else f"127.0.0.1:{free_port()}"
        cmd = [sys.executable, "-m", "meshline", sub, "--service", "orders", "--port", str(free_port()),
               "--name", name, "--api", api, "--xds-address", xds,
               "--work-dir", str(self.work_dir), "--upstream", f"payments={self.upstream_port}",
               "--drain-seconds", "0.2", *(extra or [])]
        if app is not None:
            cmd += ["--", *app]
        env = {**os.environ, "MESHLINE_DATA_DIR": str(tmp / "data")}
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait(self, timeout: float = 20) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"agent did not exit in {timeout}s:\n{self.output()}") from None

    def envoy_pid(self) -> int:
        return int((self.work_dir / "envoy.pid").read_text())

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.output()}")
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.admin_socket)), trust_env=False) as c:
                r = c.get("http://envoy/ready", timeout=1)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def wait_ready(self) -> None:
        """Envoy answers LIVE and the agent has said so (it is past startup)."""
        wait_until(lambda: self.ready() and "Envoy is ready" in self.output(), 20, what="the sidecar to be ready")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def agents() -> Iterator[list[AgentRun]]:
    started: list[AgentRun] = []
    yield started
    for a in started:
        a.kill()


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return sys.platform != "linux"
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def envoys_for(work_dir: Path) -> list[int]:
    """Live processes whose command line names this work dir's bootstrap."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(work_dir / "bootstrap.yaml").encode() in cmdline and alive(int(entry.name)):
                pids.append(int(entry.name))
    return pids


def is_registered(mesh: MeshHarness, name: str) -> bool:
    try:
        mesh.api.get(f"/api/v1/meshes/default/dataplanes/{name}")
    except NotFound:
        return False
    return True


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_run_exits_with_the_app_exit_code_and_leaves_nothing_behind(
    mesh: MeshHarness, tmp_path: Path, agents: list[AgentRun]
) -> None:
    app = py("""
        import os, pathlib, sys
        work = pathlib.Path(sys.argv[1])
        print("ENVOY_PID", (work / "envoy.pid").read_text().strip(), flush=True)
        sys.exit(7)
    """)
    a = AgentRun(mesh, tmp_path, "run", app=[*app, str(tmp_path / "work")])
    agents.append(a)
    assert a.wait() == 7, a.output()  # promptly: wait() fails after 20 s
    out = a.output()
    envoy_pid = int(out.split("ENVOY_PID ")[1].split()[0])
    assert not alive(envoy_pid)
    assert envoys_for(a.work_dir) == []
    assert not is_registered(mesh, "orders-1")
    assert "the app exited (exit code 7)" in out


def test_the_app_starts_only_once_its_sidecar_is_ready(
    mesh: MeshHarness, tmp_path: Path, agents: list[AgentRun]
) -> None:
    app = py("""
        import http.client, os, socket, sys
        class Admin(http.client.HTTPConnection):  # Envoy's admin API is a Unix socket
            def connect(self):
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(os.environ["MESHLINE_ADMIN_SOCKET"])
        admin = Admin("envoy", timeout=2)
        admin.request("GET", "/ready")
        r = admin.getresponse()
        assert r.status == 200 and r.read().strip() == b"LIVE", r.status
        host, port = os.environ["MESHLINE_OUTBOUND_PAYMENTS"].rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=2).close()  # Envoy's outbound listener
        assert "MESHLINE_TOKEN" not in os.environ
        print("APP OK", flush=True)
    """)
    a = AgentRun(mesh, tmp_path, "run", app=app)
    agents.append(a)
    assert a.wait() == 0, a.output()
    assert "APP OK" in a.output()


SLEEPY_APP = """
    import os, pathlib, signal, sys, time
    marks = pathlib.Path(sys.argv[1])
    def on_term(signum, frame):
        (marks / "app.signal").write_text(signal.Signals(signum).name)
        print("APP GOT", signal.Signals(signum).name, flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    (marks / "app.pid").write_text(str(os.getpid()))
    while True:
        time.sleep(0.1)
"""


def test_envoy_killed_is_restarted_while_the_app_keeps_running(
    mesh: MeshHarness, tmp_path: Path, agents: list[AgentRun]
) -> None:
    a = AgentRun(mesh, tmp_path, "run", app=[*py(SLEEPY_APP), str(tmp_path)])
    agents.append(a)
    a.wait_ready()
    app_pid = int(wait_until(lambda: (tmp_path / "app.pid").exists() and (tmp_path / "app.pid").read_text(),
                             10, what="the app"))
    first = a.envoy_pid()
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not alive(first), 5, what="Envoy to die")

    def restarted() -> bool:
        return (a.work_dir / "envoy.pid").exists() and a.envoy_pid() != first and a.ready()

    wait_until(restarted, 10, what="Envoy to be restarted and ready")
    assert alive(app_pid)
    assert a.proc.poll() is None
    assert is_registered(mesh, "orders-1")
    assert "Envoy exited unexpectedly (killed by SIGKILL); restarting it in 0.5s" in a.output()
    a.proc.send_signal(signal.SIGTERM)
    assert a.wait() == 0, a.output()


def test_sigterm_stops_the_app_deregisters_and_stops_envoy(
    mesh: MeshHarness, tmp_path: Path, agents: list[AgentRun]
) -> None:
    a = AgentRun(mesh, tmp_path, "run", app=[*py(SLEEPY_APP), str(tmp_path)])
    agents.append(a)
    a.wait_ready()
    wait_until(lambda: (tmp_path / "app.pid").exists(), 10, what="the app")
    assert is_registered(mesh, "orders-1")
    envoy_pid = a.envoy_pid()
    a.proc.send_signal(signal.SIGTERM)
    assert a.wait() == 0, a.output()  # the app's own exit code after handling SIGTERM
    assert (tmp_path / "app.signal").read_text() == "SIGTERM"
    # a graceful stop: the app hears of it only once callers dropped it and Envoy drained
    out = a.output()
    steps = ("deregistered dataplane orders-1", "every caller ACKed", "draining Envoy", "APP GOT SIGTERM")
    assert all(s in out for s in steps) and [out.index(s) for s in steps] == sorted(out.index(s) for s in steps), out
    assert not is_registered(mesh, "orders-1")
    assert not alive(envoy_pid)
    assert envoys_for(a.work_dir) == []


def test_app_killed_by_a_signal_gives_128_plus_signum(
    mesh: MeshHarness, tmp_path: Path, agents: list[AgentRun]
) -> None:
    app = py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    a = AgentRun(mesh, tmp_path, "run", app=app)
    agents.append(a)
    assert a.wait() == 128 + signal.SIGKILL, a.output()


def test_dataplane_runs_until_sigint_then_deregisters(
    mesh: MeshHarness, tmp_path: Path, agents: list[AgentRun]
) -> None:
    a = AgentRun(mesh, tmp_path, "dataplane")
    agents.append(a)
    a.wait_ready()
    assert is_registered(mesh, "orders-1")
    envoy_pid = a.envoy_pid()
    a.proc.send_signal(signal.SIGINT)
    assert a.wait() == 0, a.output()
    assert not is_registered(mesh, "orders-1")
    assert not alive(envoy_pid)
    out = a.output()
    assert "deregistered dataplane orders-1" in out
    assert f"envoy log {a.work_dir / 'envoy.log'}" in out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_killing_the_agent_takes_envoy_and_the_app_with_it(
    mesh: MeshHarness, tmp_path: Path, agents: list[AgentRun]
) -> None:
    a = AgentRun(mesh, tmp_path, "run", app=[*py(SLEEPY_APP), str(tmp_path)])
    agents.append(a)
    a.wait_ready()
    app_pid = int(wait_until(lambda: (tmp_path / "app.pid").exists() and (tmp_path / "app.pid").read_text(),
                             10, what="the app"))
    envoy_pid = a.envoy_pid()
    a.kill()  # SIGKILL: no chance to clean up
    wait_until(lambda: not alive(envoy_pid) and not alive(app_pid), 5, what="Envoy and the app to die")


def test_unreachable_control_plane_gives_up_with_a_clear_error(tmp_path: Path, agents: list[AgentRun]) -> None:
    a = AgentRun(None, tmp_path, "dataplane", extra=["--register-timeout", "1"])
    agents.append(a)
    assert a.wait() == 1
    out = a.output()
    assert "is not reachable; retrying" in out
    assert "error: cannot reach the control plane at http://127.0.0.1:" in out
    assert envoys_for(a.work_dir) == []
