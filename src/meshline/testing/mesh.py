"""A real mesh for end-to-end tests: an in-process control plane (in a background
thread) and real agents, each starting a real Envoy, as subprocesses.

    with MeshHarness(tmp_path) as mesh:
        mesh.sidecar("orders", app_port=orders.port)
        web = mesh.sidecar("web", app_port=web_app.port, upstreams=["orders"])
        httpx.get(web.url("orders") + "/hello")
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from meshline.agent.config import socket_path
from meshline.api.client import ApiClient
from meshline.controlplane.settings import Settings
from meshline.testing.servers import free_port

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as err:  # retried until the deadline
            last = err
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last!r})" if last else ""))


class ControlPlaneThread:
    """Runs a ControlPlane on its own event loop in a daemon thread; restartable on the same ports."""

    def __init__(self, settings: Settings, build: Callable[[Settings], Any] | None = None) -> None:
        self.settings = settings
        self.build = build
        self.cp: Any = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 20) -> None:
        ready = threading.Event()

        async def main() -> None:
            from meshline.server.factory import build_control_plane

            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.cp = (self.build or build_control_plane)(self.settings)
            try:
                await self.cp.start()
            except BaseException as err:
                self._error = err
                ready.set()
                return
            ready.set()
            await self._stop.wait()
            await self.cp.stop()

        self._thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True, name="control-plane")
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("control plane did not start")
        if self._error is not None:
            raise self._error

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (sync, or returning a coroutine) on the control plane's loop and return its result."""
        assert self._loop is not None

        async def run() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def stop(self) -> None:
        if self._loop is not None and not self._loop.is_closed() and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(20)
        self._thread = None
        self._loop = None


@dataclass
class Sidecar:
    name: str
    service: str
    mesh: str
    inbound_port: int
    app_port: int
    outbounds: dict[str, int]
    work_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    token: str | None = None  # the dataplane token the harness issued it (auth on)

    @property
    def admin_socket(self) -> Path:
        """Envoy's admin API (a 0600 Unix socket in the work dir, as the agent puts it)."""
        return socket_path(self.work_dir, "admin")

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.outbounds[service]}"

    def port(self, service: str) -> int:
        return self.outbounds[service]

    def admin(self, path: str, method: str = "GET") -> httpx.Response:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.admin_socket)), timeout=5) as client:
            return client.request(method, f"http://envoy{path}")

    def stats(self, prefix: str = "") -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.admin("/stats?filter=" + prefix).text.splitlines():
            key, _, value = line.partition(": ")
            if value.isdigit():
                out[key] = int(value)
        return out

    def ready(self) -> bool:
        try:
            return self.admin("/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        """Simulate a crash: the agent and its Envoy die at once without deregistering."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        # Envoy dies a little after the agent (the kernel tears down its threads and sockets
        # asynchronously): a crash is complete once its sockets stop accepting connections.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (_accepts(self.inbound_port) or _accepts_unix(self.admin_socket)):
            time.sleep(0.05)


def _remove_shared_memory_left_by(sc: Sidecar) -> None:
    """An agent stopped gracefully removes its Envoy's hot-restart shared memory; one a test
    killed leaves it (the next agent in the same work dir would remove it; a test's is gone)."""
    try:
        tag = str(int((sc.work_dir / "envoy.base-id").read_text().strip()) * 10)
    except (OSError, ValueError):
        return
    name = f"envoy_shared_memory_{tag}"
    if not (Path("/dev/shm") / name).exists():
        return  # removed by its agent
    for maps in Path("/proc").glob("[0-9]*/maps"):
        with contextlib.suppress(OSError):
            if name in maps.read_text():
                return  # an Envoy still uses it
    with contextlib.suppress(OSError):
        (Path("/dev/shm") / name).unlink()


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _accepts_unix(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        return s.connect_ex(str(path)) == 0


@dataclass
class MeshHarness:
    tmp: Path
    mtls: str = "disabled"  # default mesh mTLS mode for tests that are not about security
    auth: bool = False
    mesh_spec: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    api_port: int = field(default_factory=free_port)
    xds_port: int = field(default_factory=free_port)
    sidecars: list[Sidecar] = field(default_factory=list)
    control_plane: ControlPlaneThread | None = None
    api_scheme: str = "http"  # "https" when the control plane serves its API over TLS
    # Builds the control plane from settings (default: server.factory.build_control_plane).
    build: Callable[[Settings], Any] | None = None
    # Settings to override, e.g. store_url (a PostgreSQL store several replicas share).
    overrides: dict[str, Any] = field(default_factory=dict)
    _api: ApiClient | None = None

    @property
    def api_url(self) -> str:
        return f"{self.api_scheme}://127.0.0.1:{self.api_port}"

    @property
    def data_dir(self) -> Path:
        return self.tmp / "cp"

    def settings(self) -> Settings:
        return dataclasses.replace(self._settings(), **self.overrides)

    def _settings(self) -> Settings:
        return Settings(
            data_dir=self.data_dir,
            store_url=f"sqlite:///{self.data_dir / 'meshline.db'}",
            api_address=f"127.0.0.1:{self.api_port}",
            xds_address=f"127.0.0.1:{self.xds_port}",
            auth=self.auth,
            debounce=0.005,
        )

    def start(self) -> MeshHarness:
        self.control_plane = ControlPlaneThread(self.settings(), self.build)
        self.control_plane.start()
        spec = {"mtls": {"mode": self.mtls}, **self.mesh_spec}
        self.api.put({"kind": "Mesh", "name": "default", "spec": spec})
        return self

    @property
    def api(self) -> ApiClient:
        if self._api is None:
            ca = self.data_dir / "cp-ca.pem"
            verify: bool | str = str(ca) if self.api_scheme == "https" else True
            self._api = ApiClient(self.api_url, token=self.admin_token(), verify=verify)
        return self._api

    def admin_token(self) -> str | None:
        path = self.data_dir / "admin.token"
        return path.read_text().strip() if self.auth and path.exists() else None

    def dataplane_token(self, service: str, mesh: str = "default", name: str | None = None) -> str:
        """A dataplane token for one sidecar, as an operator would issue it (agents never
        fall back to the admin token)."""
        body = {"kind": "dataplane", "mesh": mesh, "service": service, "dataplane": name, "ttl": "24h",
                "description": "test harness"}
        return str(self.api.request("POST", "/api/v1/tokens", json=body)["token"])

    def restart_control_plane(self, down_for: float = 0.0) -> None:
        assert self.control_plane is not None
        self.control_plane.stop()
        time.sleep(down_for)
        self.control_plane = ControlPlaneThread(self.settings(), self.build)
        self.control_plane.start()

    def apply(self, docs: str | Iterable[Mapping[str, Any]]) -> Any:
        items = [d for d in yaml.safe_load_all(docs) if d] if isinstance(docs, str) else list(docs)
        return self.api.apply(items)

    def agent_command(self, service: str, app_port: int, *, name: str, inbound_port: int,
                      protocol: str, tags: Mapping[str, str], upstreams: Mapping[str, int], mesh: str,
                      work_dir: Path, extra: Iterable[str] = ()) -> list[str]:
        cmd = [sys.executable, "-m", "meshline", "dataplane", "--service", service, "--port", str(app_port),
               "--name", name, "--mesh", mesh, "--inbound-port", str(inbound_port),
               "--protocol", protocol, "--api", self.api_url,
               "--xds-address", f"127.0.0.1:{self.xds_port}", "--work-dir", str(work_dir)]
        for k, v in tags.items():
            cmd += ["--tag", f"{k}={v}"]
        for svc, port in upstreams.items():
            cmd += ["--upstream", f"{svc}={port}"]
        return cmd + list(extra)

    def sidecar(self, service: str, app_port: int, *, protocol: str = "http", tags: Mapping[str, str] | None = None,
                upstreams: Iterable[str] | Mapping[str, int] = (), name: str | None = None, mesh: str = "default",
                wait: bool = True, extra_args: Iterable[str] = (), env: Mapping[str, str] | None = None,
                issue_token: bool = True) -> Sidecar:
        """Start an agent (and its Envoy) for one workload. With auth on, the agent gets a dataplane
        token for its service and name, unless ``env`` brings one or ``issue_token`` is false."""
        name = name or f"{service}-{len([s for s in self.sidecars if s.service == service]) + 1}"
        ups = dict(upstreams) if isinstance(upstreams, Mapping) else {u: free_port() for u in upstreams}
        inbound_port = free_port()
        work_dir = self.tmp / "dp" / f"{mesh}.{name}"
        work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        log_path = work_dir / "agent.log"
        cmd = self.agent_command(service, app_port, name=name, inbound_port=inbound_port,
                                 protocol=protocol, tags=tags or {}, upstreams=ups, mesh=mesh, work_dir=work_dir,
                                 extra=extra_args)
        proc_env = {**os.environ, "MESHLINE_DATA_DIR": str(self.data_dir), **self.env, **(env or {})}
        token = None
        if self.auth and issue_token and not (proc_env.get("MESHLINE_TOKEN") or proc_env.get("MESHLINE_TOKEN_FILE")):
            token = proc_env["MESHLINE_TOKEN"] = self.dataplane_token(service, mesh, name)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=proc_env, start_new_session=True)
        sc = Sidecar(name, service, mesh, inbound_port, app_port, ups, work_dir, proc, log_path, token)
        self.sidecars.append(sc)
        if wait:
            self.wait_ready(sc)
        return sc

    def wait_ready(self, sc: Sidecar, timeout: float = 30) -> None:
        def ready() -> bool:
            if sc.proc.poll() is not None:
                raise RuntimeError(f"agent {sc.name} exited with {sc.proc.returncode}:\n{sc.log()[-3000:]}")
            return sc.ready()

        try:
            wait_until(ready, timeout, what=f"sidecar {sc.name} to be ready")
        except TimeoutError as err:
            raise TimeoutError(f"{err}\n--- agent log ---\n{sc.log()[-3000:]}") from None

    def dataplane_status(self, name: str, mesh: str = "default") -> dict[str, Any]:
        return dict(self.api.get(f"/api/v1/meshes/{mesh}/dataplanes/{name}")["status"])

    def wait_in_sync(self, timeout: float = 10) -> None:
        for sc in self.sidecars:
            if sc.proc.poll() is None:

                def synced(sc: Sidecar = sc) -> bool:
                    return bool(self.dataplane_status(sc.name, sc.mesh)["state"] == "in-sync")

                wait_until(synced, timeout, what=f"{sc.name} in sync")

    def stop(self) -> None:
        for sc in reversed(self.sidecars):
            try:
                sc.stop(timeout=10)
            except Exception:  # best effort; kill below
                sc.kill()
        for sc in self.sidecars:
            _remove_shared_memory_left_by(sc)
        if self._api is not None:
            self._api.close()
            self._api = None
        if self.control_plane is not None:
            self.control_plane.stop()
            self.control_plane = None

    def __enter__(self) -> MeshHarness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
