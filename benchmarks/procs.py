"""Child processes that are always stopped: on success, on error, on Ctrl-C, on SIGTERM.

Every process a scenario starts goes through a :class:`ProcessGroup`. The group stops its
processes (SIGTERM, then SIGKILL) when it is closed, and each child also gets
``PR_SET_PDEATHSIG`` so that it dies with the harness even if the harness is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

# Ports below the kernel's ephemeral range, never handed out twice: a port the kernel picked
# (bind to 0) can be taken as the source port of an outgoing connection before the process
# meant to listen on it binds it (with 50 sidecars starting, one Envoy lost its listener so).
from meshline.testing.servers import free_port as free_port
from meshline.testing.servers import free_ports as free_ports

_PR_SET_PDEATHSIG = 1


class ProcessError(RuntimeError):
    """A benchmark process could not start, or died while it was needed."""


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM when the harness dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


class ProcessGroup:
    """Starts named processes with logs in ``logdir``; :meth:`close` stops all of them."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._cleanups: list[Callable[[], None]] = []

    def spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None, *, pipes: bool = False
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` with stdout+stderr in ``<logdir>/<name>.log`` (with ``pipes``: stdin and
        stdout are pipes to the caller, stderr goes to the log)."""
        with open(self.log_path(name), "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else log,
                stderr=log if pipes else subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,  # Ctrl-C reaches only the harness, which stops us in order
                preexec_fn=die_with_parent,
            )
        self._procs.append((name, proc))
        return proc

    def add_cleanup(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on :meth:`close` (after the processes are stopped), e.g. for threads."""
        self._cleanups.append(callback)

    def log_path(self, name: str) -> Path:
        return self.logdir / f"{name}.log"

    def log_tail(self, name: str, chars: int = 2000) -> str:
        try:
            return self.log_path(name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        """Raise :class:`ProcessError` naming the first process that has exited."""
        for name, proc in self._procs:
            if proc.poll() is not None:
                raise ProcessError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def stop(self, pid: int, grace: float = 10.0) -> int:
        """Stop one process (SIGTERM, then SIGKILL after ``grace`` s) and forget it; its exit code."""
        for entry in self._procs:
            name, proc = entry
            if proc.pid == pid:
                self._procs.remove(entry)
                if proc.poll() is None:
                    proc.terminate()
                try:
                    return proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    return proc.wait()
        raise ProcessError(f"no process {pid} in this group")

    def close(self, grace: float = 3.0) -> None:
        """Stop every process (newest first), then run cleanups. Safe to call twice."""
        procs, self._procs = self._procs, []
        for _name, proc in reversed(procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + grace
        for _name, proc in reversed(procs):
            try:
                proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        cleanups, self._cleanups = self._cleanups, []
        for callback in reversed(cleanups):
            callback()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def wait_http_ok(
    url_host: str, port: int, path: str, *, timeout: float, group: ProcessGroup | None = None
) -> None:
    """Poll ``GET path`` until it answers 200 (a fresh connection each try)."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if group is not None:
            group.check_alive()
        conn = http.client.HTTPConnection(url_host, port, timeout=1.0)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                return
            last = f"HTTP {resp.status}"
        except OSError as exc:
            last = str(exc)
        finally:
            conn.close()
        time.sleep(0.05)
    raise ProcessError(f"http://{url_host}:{port}{path} not ready after {timeout:.0f}s: {last}")


def install_signal_handlers() -> None:
    """SIGTERM -> SystemExit and SIGINT -> KeyboardInterrupt, so ``finally`` blocks stop children.

    SIGINT is set explicitly because a shell starts background jobs with it ignored.
    """

    def _raise(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (e.g. the Envoy an agent started), from /proc."""
    children: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(x) for x in (task / "children").read_text().split()]
    except OSError:
        pass
    return children
