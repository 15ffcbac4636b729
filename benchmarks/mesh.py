"""A real Meshline as benchmark processes: ``meshline control-plane`` and ``meshline dataplane`` agents.

Everything runs as a user would run it: the control plane on its embedded SQLite store with
its defaults (token auth, xDS over TLS, the mesh ``default`` with strict mTLS), agents with a
dataplane token each, every process started in the scenario's :class:`ProcessGroup` (stopped
on exit, PDEATHSIG). Each agent starts its own Envoy (``--concurrency 1``).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import tools
from benchmarks.procs import ProcessError, ProcessGroup, child_pids, free_port


@dataclass(frozen=True)
class ControlPlaneProc:
    data_dir: Path
    api_port: int
    xds_port: int
    pid: int
    name: str  # its name in the ProcessGroup (log file)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def xds_address(self) -> str:
        return f"127.0.0.1:{self.xds_port}"

    def env(self) -> dict[str, str]:
        """Environment for CLI commands and agents: they find the CA and admin token in the data dir."""
        return {**os.environ, "MESHLINE_DATA_DIR": str(self.data_dir), "MESHLINE_API": self.api_url}

    def admin_token(self) -> str | None:
        path = self.data_dir / "admin.token"
        return path.read_text().strip() if path.exists() else None

    def request(self, method: str, path: str, body: object = None, timeout: float = 10) -> Any:
        """One API call with the local admin token; returns the decoded JSON."""
        conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        token = self.admin_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status >= 300:
            raise ProcessError(f"{method} {path}: HTTP {resp.status}: {data[:500]!r}")
        return json.loads(data) if data else None

    def apply(self, *docs: Mapping[str, Any]) -> Any:
        return self.request("POST", "/api/v1/apply", {"resources": list(docs)})

    def dataplane_token(self, service: str, mesh: str = "default") -> str | None:
        """A dataplane token for ``service`` (None when the control plane runs without auth)."""
        if self.admin_token() is None:
            return None
        data = self.request("POST", "/api/v1/tokens", {"kind": "dataplane", "mesh": mesh, "service": service})
        return str(data["token"])


def meshline_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshline", *args]


def start_control_plane(
    procs: ProcessGroup,
    data_dir: Path,
    *,
    name: str = "control-plane",
    env: Mapping[str, str] | None = None,
    api_port: int | None = None,
    xds_port: int | None = None,
    timeout: float = 60,
) -> ControlPlaneProc:
    """Start ``meshline control-plane`` and wait until its API answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    api_port = api_port or free_port()
    xds_port = xds_port or free_port()
    argv = meshline_argv(
        "control-plane", "--data-dir", str(data_dir), "--api-address", f"127.0.0.1:{api_port}",
        "--xds-address", f"127.0.0.1:{xds_port}", "--log-level", "warning",
    )  # fmt: skip
    # its CLI context goes in its own config, not the user's (or a test worker's, where a later
    # control plane on the same port would find it)
    own = {"MESHLINE_CONFIG": str(data_dir / "cli-config.yaml")}
    proc = procs.spawn(name, argv, env={**os.environ, **own, **(env or {})})
    cp = ControlPlaneProc(data_dir, api_port, xds_port, proc.pid, name)
    wait_api_ready(cp, procs, timeout)
    return cp


def wait_api_ready(cp: ControlPlaneProc, procs: ProcessGroup, timeout: float) -> float:
    """Poll ``/api/v1/health`` until it answers; return the seconds it took."""
    began = time.monotonic()
    deadline = began + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            cp.request("GET", "/api/v1/health", timeout=1)
            return time.monotonic() - began
        except (OSError, ProcessError) as exc:
            last = str(exc)
        time.sleep(0.02)
    raise ProcessError(f"control plane API {cp.api_url} not ready after {timeout:.0f}s: {last}")


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket: Envoy's admin API is one (mode 0600, in the agent's work dir)."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("envoy", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.path))
        self.sock = sock


@dataclass
class AgentProc:
    name: str  # dataplane name
    service: str
    pid: int
    work_dir: Path
    inbound_port: int
    outbounds: dict[str, int] = field(default_factory=dict)  # service -> local port

    def envoy_pid(self, timeout: float = 30) -> int:
        """The Envoy this agent started (its only child process)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = child_pids(self.pid)
            if children:
                return children[0]
            time.sleep(0.05)
        raise ProcessError(f"agent {self.name} started no Envoy within {timeout:.0f}s")

    def admin(self, path: str, timeout: float = 5) -> tuple[int, str]:
        from meshline.agent.config import socket_path  # where the agent puts it

        conn = _UnixHTTPConnection(socket_path(self.work_dir, "admin"), timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    def stats(self, prefix: str = "") -> dict[str, int]:
        _, text = self.admin(f"/stats?filter={prefix}")
        out: dict[str, int] = {}
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if value.isdigit():
                out[key] = int(value)
        return out

    def ready(self) -> bool:
        try:
            return self.admin("/ready", timeout=1)[0] == 200
        except OSError:
            return False


def spawn_agent(
    procs: ProcessGroup,
    cp: ControlPlaneProc,
    workdir: Path,
    *,
    name: str,
    service: str,
    app_port: int,
    upstreams: Iterable[str] | Mapping[str, int] = (),
    protocol: str = "http",
    tags: Mapping[str, str] | None = None,
    token: str | None = None,
    mesh: str = "default",
) -> AgentProc:
    """Start ``meshline dataplane`` for one workload (its app already listening on ``app_port``)."""
    ups = dict(upstreams) if isinstance(upstreams, Mapping) else {u: free_port() for u in upstreams}
    agent = AgentProc(name, service, 0, workdir / "dp" / f"{mesh}.{name}", free_port(), ups)
    argv = meshline_argv(
        "dataplane", "--service", service, "--port", str(app_port), "--name", name, "--mesh", mesh,
        "--inbound-port", str(agent.inbound_port),
        "--protocol", protocol, "--api", cp.api_url, "--xds-address", cp.xds_address,
        "--work-dir", str(agent.work_dir),
    )  # fmt: skip
    for key, value in (tags or {}).items():
        argv += ["--tag", f"{key}={value}"]
    for svc, port in ups.items():
        argv += ["--upstream", f"{svc}={port}"]
    env = cp.env()
    if token is None:
        token = cp.dataplane_token(service, mesh)
    if token:
        env["MESHLINE_TOKEN"] = token
    agent.pid = procs.spawn(f"agent-{name}", argv, env=env).pid
    return agent


def wait_ready(agents: Iterable[AgentProc], procs: ProcessGroup, timeout: float) -> float:
    """Wait until every agent's Envoy reports ready; return the seconds it took."""
    began = time.monotonic()
    waiting = list(agents)
    while waiting:
        procs.check_alive()
        waiting = [a for a in waiting if not a.ready()]
        if not waiting:
            break
        if time.monotonic() - began > timeout:
            names = ", ".join(a.name for a in waiting[:5])
            raise ProcessError(f"{len(waiting)} sidecar(s) not ready after {timeout:.0f}s: {names}")
        time.sleep(0.05)
    return time.monotonic() - began


class IdleApp:
    """A listening socket that stands in for an app nobody calls (an agent waits for its app to listen)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


def require_meshline() -> None:
    """Meshline must be importable by ``sys.executable`` (the agents are ``python -m meshline``)."""
    try:
        import meshline  # noqa: F401
    except ImportError as exc:
        raise tools.MissingTool(f"meshline is not installed for {sys.executable} (pip install -e .)") from exc
