"""One Envoy process for one dataplane: start it, ask its admin API, drain it, stop it.

No policy lives here (when to restart, when to give up): that is the agent's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from meshline.agent import http, process
from meshline.agent.config import AgentConfig, socket_path
from meshline.core.errors import MeshlineError
from meshline.core.unix_sockets import private_dir

LOG_ROTATE_BYTES = 20 * 1024 * 1024
# Requests to the admin API go to its Unix socket; the host part only fills the Host header.
ADMIN_URL = "http://envoy-admin"
PARENT_SHUTDOWN_AFTER_DRAIN_S = 2


class EnvoyError(MeshlineError):
    """Envoy could not be started or did not become ready."""


# Hot restart (how an upgraded agent hands the listeners to a new Envoy without dropping a
# connection, docs/operations.md): the old and new Envoy meet on Unix sockets named after this
# path (Envoy appends e.g. "_udp_parent_<base id x 10>"), kept private like the agent's others.
HOT_RESTART_SUFFIX_MAX = 32
SHM_DIR = Path("/dev/shm")


def hot_restart_socket(config: AgentConfig) -> Path:
    return socket_path(config.work_dir, "hot-restart", suffix="", reserve=HOT_RESTART_SUFFIX_MAX)


def base_id_path(config: AgentConfig) -> Path:
    return config.work_dir / "envoy.base-id"


def envoy_args(binary: str, config: AgentConfig, epoch: int = 0, base_id: int | None = None) -> list[str]:
    """Envoy's command line. Epoch 0 picks a base id no other Envoy on the host uses (its shared
    memory is named after it) and writes it to ``envoy.base-id``; a hot restart (epoch N+1)
    names the same base id and takes the listeners from the Envoy of epoch N."""
    drain = max(1, math.ceil(config.drain_seconds))
    if epoch == 0:
        base = ["--use-dynamic-base-id", "--base-id-path", str(base_id_path(config))]
    else:
        base = ["--base-id", str(base_id), "--skip-hot-restart-on-no-parent"]
    return [
        binary,
        "-c",
        str(config.bootstrap_path),
        "--restart-epoch",
        str(epoch),
        *base,
        "--socket-path",
        str(hot_restart_socket(config)),
        "--socket-mode",
        "600",
        # after a hot restart the old Envoy drains for --drain-time-s, then is told to exit
        "--parent-shutdown-time-s",
        str(drain + PARENT_SHUTDOWN_AFTER_DRAIN_S),
        "--concurrency",
        str(config.envoy_concurrency),
        "--log-level",
        config.envoy_log_level,
        # After /drain_listeners?graceful every connection is asked to close at once (HTTP/1.1
        # Connection: close on its next response, HTTP/2 GOAWAY), not spread over the period.
        "--drain-time-s",
        str(drain),
        "--drain-strategy",
        "immediate",
    ]


# Envoy log lines worth quoting when it fails, and what to do about them.
_HINTS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"cannot bind '([^']+)'|Address already in use"),
     "a port Envoy needs is in use; stop what uses it or pick other ports (--inbound-port, --upstream)"),
    (re.compile(r"unable to parse|Unable to parse|INVALID_ARGUMENT|Proto constraint validation failed"),
     "Envoy rejected its bootstrap; this is a Meshline bug, please report it with the log"),
    (re.compile(r"previous envoy process is still initializing"),
     "the Envoy being replaced had not finished starting; try the upgrade again once it is ready"),
    (re.compile(r"[Hh]ot restart (version|SharedMemory size) mismatch"),
     "the new Envoy cannot hot restart from the running one (another hot restart version);"
     " upgrade with a graceful stop and start instead"),
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
        self.proc: process.Child | None = None
        self.started_at = 0.0
        self.starts = 0
        self.epoch = 0
        self._base_id: int | None = None

    @classmethod
    def adopt(cls, config: AgentConfig, binary: str, pid: int, epoch: int, base_id: int | None) -> Envoy:
        """The Envoy an earlier program of this process started (see agent.handoff)."""
        envoy = cls(config, binary)
        envoy.proc = process.Adopted(pid)
        envoy.started_at = time.monotonic()
        envoy.starts = 1
        envoy.epoch = epoch
        envoy._base_id = base_id
        return envoy

    @property
    def base_id(self) -> int | None:
        """The hot-restart base id this Envoy runs with (epoch 0 writes the one it picked)."""
        if self._base_id is None and self.epoch == 0:
            with contextlib.suppress(OSError, ValueError):
                self._base_id = int(base_id_path(self.config).read_text().strip())
        return self._base_id

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, parent: Envoy | None = None) -> None:
        """Start Envoy: a fresh one (epoch 0), or with ``parent`` a hot restart that takes the
        listeners and connections' place of that running Envoy, which then drains and exits."""
        cfg = self.config
        cfg.envoy_log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.starts == 0 and parent is None:
            rotate(cfg.envoy_log_path)
        if parent is not None and parent.base_id is not None:
            self.epoch, self._base_id = parent.epoch + 1, parent.base_id
        else:  # a fresh start: a new base id; the previous one's shared memory is not needed
            self.remove_shared_memory()
            self.epoch, self._base_id = 0, None
            with contextlib.suppress(FileNotFoundError):
                base_id_path(cfg).unlink()
        private_dir(hot_restart_socket(cfg).parent)
        with open(cfg.envoy_log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- meshline agent: starting Envoy for {cfg.node_id} at {stamp} (epoch {self.epoch})\n".encode())
            log.flush()
            self.proc = await process.spawn(
                envoy_args(self.binary, cfg, self.epoch, self._base_id),
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
        if self.epoch > 0 and not await self._admin_is_ours():
            return ReadyState(None)  # the Envoy it replaces still answers on the admin socket
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

    async def _admin_is_ours(self) -> bool:
        """Whether the admin socket is this Envoy's (after a hot restart it passes from the old
        Envoy to the new one while the new one starts)."""
        try:
            info = json.loads((await self.admin("GET", "/server_info")).text)
            return bool(int(info["command_line_options"]["restart_epoch"]) == self.epoch)
        except (http.HttpError, ValueError, KeyError, TypeError):
            return False

    async def drain(self) -> bool:
        """Ask Envoy to drain connections gracefully (listeners stay open until it stops)."""
        if not self.running:
            return False
        try:
            resp = await self.admin("POST", "/drain_listeners?graceful&skip_exit")
        except http.HttpError:
            return False
        return resp.status == 200

    async def stop(self, timeout: float, *, last: bool = True) -> int | None:
        """Stop this Envoy; ``last=False`` for one replaced by a hot restart, whose successor
        still uses the shared memory and pid file."""
        if self.proc is None:
            return None
        rc = await process.stop(self.proc, timeout)
        if last:
            with contextlib.suppress(FileNotFoundError):
                self.config.envoy_pid_path.unlink()
            self.remove_shared_memory()
        return rc

    def remove_shared_memory(self) -> None:
        """Envoy leaves its hot-restart shared memory and sockets behind when it exits; the last
        Envoy of a base id removes them (the next fresh start picks a new base id)."""
        base = self.base_id
        if base is None:
            return
        tag = str(base * 10)
        with contextlib.suppress(OSError):
            (SHM_DIR / f"envoy_shared_memory_{tag}").unlink()
        sock = hot_restart_socket(self.config)
        for leftover in sock.parent.glob(f"{sock.name}_*_{tag}"):
            with contextlib.suppress(OSError):
                leftover.unlink()

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
