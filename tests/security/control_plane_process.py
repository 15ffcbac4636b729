"""A real control plane process (``meshline control-plane``), for the tests that need what only
a process has: files on disk as it leaves them, a ``kill -9``, a client that hangs up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from meshline.testing.mesh import wait_until
from meshline.testing.servers import free_port


@dataclass
class ControlPlaneProcess:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    api_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token()}"}, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def _healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"the control plane exited ({proc.returncode}):\n{log.read_text(errors='replace')}")
    try:
        return httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def control_plane_process(
    data_dir: Path, *, store_url: str = "", env: dict[str, str] | None = None
) -> Iterator[ControlPlaneProcess]:
    """Start ``meshline control-plane`` (auth on) and wait until it answers."""
    api_port, xds_port = free_port(), free_port()
    log_path = data_dir.parent / f"{data_dir.name}-cp-{api_port}.log"
    args = [sys.executable, "-m", "meshline", "control-plane", "--data-dir", str(data_dir),
            "--api-address", f"127.0.0.1:{api_port}", "--xds-address", f"127.0.0.1:{xds_port}"]  # fmt: skip
    if store_url:
        args += ["--store", store_url]
    full_env = {**os.environ, "MESHLINE_AUTH": "on", "MESHLINE_API_TLS": "off", **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    cp = ControlPlaneProcess(proc, data_dir, api_port, log_path)
    try:
        wait_until(lambda: _healthy(cp.url, proc, log_path), timeout=60, what="the control plane to answer")
        wait_until(lambda: (data_dir / "admin.token").exists(), timeout=10, what="admin.token")
        yield cp
    finally:
        cp.stop()
