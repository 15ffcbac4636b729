"""One Envoy process for one dataplane: start it, ask its admin API, drain it, stop it.

No policy lives here (when to restart, when to give up): that is the agent's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from meshline.agent import http, process
from meshline.agent.config import AgentConfig
from meshline.core.errors import MeshlineError

LOG_ROTATE_BYTES = 20 * 1024 * 1024
# Requests to the admin API go to its Unix socket; the host part only fills the Host header.
ADMIN_URL = "http://envoy-admin"


class EnvoyError(MeshlineError):
    """Envoy could not be started or did not become ready."""


def envoy_args(binary: str, config: AgentConfig) -> list[str]:
    return [
        binary,
        "-c",
        str(config.bootstrap_path),
        "--disable-hot-restart",  # several Envoys per host; no shared memory to clash on
        "--concurrency",
        str(config.envoy_concurrency),
        "--log-level",
        config.envoy_log_level,
        # After /drain_listeners?graceful every connection is asked to close at once (HTTP/1.1
        # Connection: close on its next response, HTTP/2 GOAWAY), not spread over the period.
        "--drain-time-s",
        str(max(1, math.ceil(config.drain_seconds))),
        "--drain-strategy",
        "immediate",
    ]


# Envoy log lines worth quoting when it fails, and what to do about them.
_HINTS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"cannot bind '([^']+)'|Address already in use"),
     "a port Envoy needs is in use; stop what uses it or pick other ports (--inbound-port, --upstream)"),
    (re.compile(r"unable to parse|Unable to parse|INVALID_ARGUMENT|Proto constraint validation failed"),
     "Envoy rejected its bootstrap; this is a Meshline bug, please report it with the log"),
    (re.compile(r"PARSE ERROR|Couldn't find match for argument|error: "),
     "Envoy rejected its command line; check --envoy-concurrency and the Envoy version (1.40+)"),
]


def diagnose(log_lines: list[str]) -> str:
    """The most useful line of a failed Envoy's log, with what to do about it."""
    for pattern, hint in _HINTS:
        for line in reversed(log_lines):
            if pattern.search(line):
                return f"{_strip(line)}; {hint}"
    for line in reversed(log_lines):
        if re.search(r"\]\[(critical|error)\]", line) or "error" in line.lower():
            return _strip(line)
    return ""


def _strip(line: str) -> str:
    """Drop Envoy's ``[time][thread][level][logger] [file:line]`` prefix."""
    return re.sub(r"^(\[[^\]]*\]\s*)+", "", line.strip())[:300]


@dataclass(frozen=True)
class ReadyState:
    """What Envoy's admin says about readiness. ``state`` is None when admin does not answer."""

    state: str | None
    xds_connected: bool | None = None

    @property
    def live(self) -> bool:
        return self.state == "LIVE"


class Envoy:
    """The current Envoy process of a dataplane (one at a time; ``start`` again after it exits)."""

    def __init__(self, config: AgentConfig, binary: str) -> None:
        self.config = config
        self.binary = binary
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        cfg = self.config
        cfg.envoy_log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.starts == 0:
            rotate(cfg.envoy_log_path)
        with open(cfg.envoy_log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- meshline agent: starting Envoy for {cfg.node_id} at {stamp}\n".encode())
            log.flush()
            self.proc = await process.spawn(
                envoy_args(self.binary, cfg),
                stdout=log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
                death_signal=signal.SIGKILL,
                cwd=cfg.work_dir,
            )
        self.started_at = time.monotonic()
        self.starts += 1
        cfg.envoy_pid_path.write_text(f"{self.proc.pid}\n")

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def admin(self, method: str, path: str, timeout: float = 1.0) -> http.Response:
        """One call to Envoy's admin API, on its Unix socket; raises :class:`http.HttpError`."""
        return await http.request(method, ADMIN_URL + path, uds=self.config.admin_socket, timeout=timeout)

    async def ready_state(self) -> ReadyState:
        try:
            resp = await self.admin("GET", "/ready")
        except http.HttpError:
            return ReadyState(None)
        state = resp.text.strip() or f"HTTP {resp.status}"
        if resp.status == 200 and state == "LIVE":
            return ReadyState("LIVE", True)
        connected: bool | None = None
        with contextlib.suppress(http.HttpError):
            query = urlencode({"filter": r"^control_plane\.connected_state$"})
            stats = await self.admin("GET", f"/stats?{query}")
            m = re.search(r"connected_state:\s*(\d+)", stats.text)
            connected = bool(int(m.group(1))) if m else None
        return ReadyState(state, connected)

    async def drain(self) -> bool:
        """Ask Envoy to drain connections gracefully (listeners stay open until it stops)."""
        if not self.running:
            return False
        try:
            resp = await self.admin("POST", "/drain_listeners?graceful&skip_exit")
        except http.HttpError:
            return False
        return resp.status == 200

    async def stop(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        rc = await process.stop(self.proc, timeout)
        with contextlib.suppress(FileNotFoundError):
            self.config.envoy_pid_path.unlink()
        return rc

    def log_tail(self, lines: int = 40) -> list[str]:
        try:
            with open(self.config.envoy_log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16_384))
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        # only what the latest Envoy wrote
        text = text.rsplit("--- meshline agent: starting Envoy", 1)[-1]
        return text.splitlines()[-lines:]


def rotate(path: Path, max_bytes: int = LOG_ROTATE_BYTES) -> None:
    """Keep one previous log (``envoy.log.1``) once the log has grown past ``max_bytes``."""
    try:
        if path.stat().st_size > max_bytes:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


def kill_stale(config: AgentConfig) -> int | None:
    """Kill an Envoy a previous agent of this dataplane left running (e.g. after ``kill -9``
    on a system without PR_SET_PDEATHSIG). Only a process whose command line names our
    bootstrap is touched. Returns its pid, if there was one."""
    path: Path = config.envoy_pid_path
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    if not process.pid_alive(pid) or str(config.bootstrap_path) not in process.proc_cmdline(pid):
        return None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    return pid
