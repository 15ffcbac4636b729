"""Upgrading a running agent in place: what the old program hands the new one.

An upgrade (``meshline upgrade-sidecar NAME``, or SIGUSR2 to the agent, which is what
``systemctl reload`` sends) re-executes the agent's own process with the newly installed
program. The pid stays, so the app (under ``meshline run``) and the running Envoy stay its
children and nothing dies with the old program; the new program adopts them from the state
written here, starts its own local services, and hot restarts Envoy from the new package
(the new Envoy takes the listeners; the old one drains and exits). docs/operations.md has the
timeline and the limits.

Files in the work dir (0600, the work dir is 0700):

* ``upgrade-request.json``: what the operator asked for (the program to run), written by the CLI
* ``handoff.json``: the old program's state for the new one (read once, then removed)
* ``upgrade-status.json``: where the upgrade is (``preparing``, ``exec``, ``done``, ``failed``),
  what the CLI waits on
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from meshline.core.errors import MeshlineError

HANDOFF_ENV = "MESHLINE_HANDOFF"  # the path of handoff.json, in the new program's environment
REQUEST_FILE = "upgrade-request.json"
STATE_FILE = "handoff.json"
STATUS_FILE = "upgrade-status.json"
PREFLIGHT_TIMEOUT_S = 30.0
_VERSION = re.compile(r"version\s+(\S+)")


@dataclass
class HandoffState:
    """What the new program needs to carry on where the old one stopped."""

    from_version: str
    app_pid: int | None
    envoy_pid: int | None
    envoy_epoch: int
    envoy_base_id: int | None
    inbound_port: int
    metrics_port: int | None
    ready_for_traffic: bool
    # where xDS is, as the old program found it: the new one starts the xDS proxy first thing,
    # before asking the API anything, so the running Envoy's stream is back within a second
    xds_host: str = ""
    xds_port: int = 0
    xds_tls: bool | None = None
    xds_ca_file: str | None = None
    xds_source: str = ""
    # the read end of a SignalCatcher's pipe: signals that came while the old program exec'd
    signals_fd: int | None = None
    # transparent mode: the capture rules stay installed across the exec (see Capture.hand_over)
    capture: dict[str, Any] | None = None
    # what local services hand over (name -> state), e.g. mesh DNS's bound sockets (their fds
    # are inherited by the exec) and its table
    services: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)


def _write_private(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(work_dir: Path, state: HandoffState) -> Path:
    path = work_dir / STATE_FILE
    _write_private(path, asdict(state))
    return path


def take_state(environ: MutableMapping[str, str]) -> HandoffState | None:
    """The state an upgrade left for this program (None: an ordinary start). Read once: the
    file and the variable are removed so nothing started later sees them."""
    where = environ.pop(HANDOFF_ENV, None)
    os.environ.pop(HANDOFF_ENV, None)
    if not where:
        return None
    path = Path(where)
    data = _read(path)
    path.unlink(missing_ok=True)
    if data is None:
        raise MeshlineError(f"the upgrade's handoff state {path} is missing or unreadable; restart the agent")
    # a field of another version is left out rather than refused: failing here ends the process,
    # and the app with it
    known = {f.name for f in fields(HandoffState)}
    try:
        return HandoffState(**{k: v for k, v in data.items() if k in known})
    except TypeError as err:
        raise MeshlineError(f"the upgrade's handoff state {path} does not fit this version ({err})") from None


class SignalCatcher:
    """Carries the signals that come during the exec over to the new program. The main thread
    blocks them (so they stay pending across the exec), but the process's other threads (gRPC's)
    take them then, and their handler only writes the number to the wakeup fd: made this pipe,
    whose read end crosses the exec, nothing is lost whichever thread takes one."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()  # the write end closes at the exec
        os.set_inheritable(self.read_fd, True)
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._previous = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)

    def put(self, signums: Sequence[int]) -> None:
        """Signals the old program's loop got meanwhile, for the new one too."""
        if signums:
            os.write(self._write_fd, bytes(signums))

    def cancel(self) -> list[int]:
        """No exec after all: the wakeup fd back as it was, and what was caught meanwhile."""
        signal.set_wakeup_fd(self._previous, warn_on_full_buffer=False)
        os.close(self._write_fd)
        return take_signals(self.read_fd)


def take_signals(fd: int) -> list[int]:
    """The signals a SignalCatcher caught (read once; the fd is closed)."""
    caught = bytearray()
    try:
        while chunk := os.read(fd, 512):
            caught += chunk
    except BlockingIOError:
        pass
    except OSError:  # not ours after all (a stale number): nothing was caught
        return []
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return list(caught)


def write_request(work_dir: Path, program: Sequence[str] | None) -> None:
    _write_private(work_dir / REQUEST_FILE, {"program": list(program) if program else None, "at": time.time()})


def take_request(work_dir: Path) -> list[str] | None:
    """The program the operator asked for (None: this program, as newly installed)."""
    path = work_dir / REQUEST_FILE
    data = _read(path) or {}
    path.unlink(missing_ok=True)
    program = data.get("program")
    if isinstance(program, list) and program and all(isinstance(p, str) for p in program):
        return program
    return None


def write_status(work_dir: Path, state: str, message: str, **extra: Any) -> None:
    _write_private(work_dir / STATUS_FILE, {"state": state, "message": message, "at": time.time(), **extra})


def read_status(work_dir: Path) -> dict[str, Any] | None:
    return _read(work_dir / STATUS_FILE)


def own_program() -> list[str]:
    """How this process was started, without the meshline arguments: ``python -m meshline``
    or ``python /venv/bin/meshline``. Run again after ``pip install -U``, it is the new code."""
    orig = list(getattr(sys, "orig_argv", []) or [sys.executable, *sys.argv])
    prefix = orig[: len(orig) - (len(sys.argv) - 1)]
    return [sys.executable, *prefix[1:]]


def new_command(program: Sequence[str] | None) -> list[str]:
    """The command line of the new program: the same meshline arguments as this one."""
    return [*(program or own_program()), *sys.argv[1:]]


def parse_version(output: str) -> str | None:
    """The version in ``meshline --version``'s output (``meshline, version 0.2.0``)."""
    m = _VERSION.search(output)
    return m.group(1) if m else None
