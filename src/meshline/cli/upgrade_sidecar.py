"""`meshline upgrade-sidecar NAME`: upgrade a running sidecar (agent and Envoy) on this host to
the installed (or a given) Meshline while its app keeps serving.

It asks the agent (SIGUSR2, the same as ``systemctl reload meshline-dataplane@NAME``) and waits
until the new program reports back in the work dir (agent/handoff.py has the files,
docs/operations.md the timeline)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import signal
import time
from pathlib import Path

import click

from meshline.agent import handoff
from meshline.agent.config import default_work_dir
from meshline.cli.output import echo
from meshline.core.errors import MeshlineError


def agent_pid(work_dir: Path) -> int:
    """The pid of the agent running in ``work_dir`` (it holds the lock and wrote its pid there)."""
    lock = work_dir / "agent.lock"
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        raise MeshlineError(f"no agent has run in {work_dir}; check NAME and --mesh, or pass --work-dir") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: an agent runs there
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            raise MeshlineError(f"no agent is running in {work_dir}; start it (an upgrade needs a running one)")
        text = os.read(fd, 64).decode(errors="replace").strip()
    finally:
        os.close(fd)
    if not text.isdigit():
        raise MeshlineError(f"{lock} does not hold an agent's pid; is the agent older than this command?")
    return int(text)


def handles_upgrades(pid: int) -> bool | None:
    """Whether the process catches SIGUSR2 (/proc's SigCgt mask; None where unknown). An agent
    from before upgrades existed does not, and SIGUSR2 would kill it, and with it its app."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGUSR2 - 1) & 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def upgrade(work_dir: Path, program: list[str] | None, timeout: float) -> dict[str, object]:
    pid = agent_pid(work_dir)
    if handles_upgrades(pid) is False:
        raise MeshlineError(f"the agent (pid {pid}) cannot be upgraded in place (it is older than in-place upgrades);"
                            " stop it gracefully (SIGTERM) and start the new version instead")  # fmt: skip
    asked_at = time.time()
    handoff.write_request(work_dir, program)
    os.kill(pid, signal.SIGUSR2)
    echo(f"asked the agent (pid {pid}) to upgrade to {' '.join(program) if program else 'the installed meshline'}")
    deadline = time.monotonic() + timeout
    said = ""
    while time.monotonic() < deadline:
        status = handoff.read_status(work_dir)
        at = status.get("at") if status else None
        if status is not None and isinstance(at, (int, float)) and at >= asked_at:
            state = str(status.get("state"))
            if state in ("done", "failed"):
                return status
            if state != said:
                said = state
                echo(f"  {state}: {status.get('message')}")
        time.sleep(0.1)
    raise MeshlineError(f"the agent (pid {pid}) did not finish the upgrade in {timeout:g}s; see its log")


@click.command("upgrade-sidecar")
@click.argument("name")
@click.option("--mesh", default="default", show_default=True)
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="the agent's work dir (default: the data dir's, for MESH and NAME)")
@click.option("--program", default=None, metavar="COMMAND",
              help="the new meshline to run, e.g. /opt/meshline-0.2/bin/meshline (default: the one installed"
                   " where the agent's runs, as it is now: upgrade with pip first)")
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(min=1))
def upgrade_sidecar(name: str, mesh: str, work_dir: Path | None, program: str | None, timeout: float) -> None:
    """Upgrade the running sidecar NAME (agent and Envoy) while its app keeps serving.

    \b
    The agent re-executes itself with the new program (same pid: the app under `meshline run`
    stays its child), which hot restarts Envoy: the new Envoy takes the listeners, the old one
    drains its connections and exits. Example:
      pip install -U meshline && meshline upgrade-sidecar orders-1
    """
    directory = work_dir or default_work_dir(mesh, name)
    command = shlex.split(program) if program else None
    status = upgrade(directory, command, timeout)
    with contextlib.suppress(Exception):
        (directory / handoff.STATUS_FILE).unlink()
    if status.get("state") != "done":
        raise MeshlineError(f"upgrade of {name} failed: {status.get('message')}")
    echo(f"{name}: {status.get('message')}")
