"""What the attack tests share: running code as another local user.

CI runs as root, so an attack "as an unprivileged local user" is a child process that drops to
``nobody`` before it runs. Outside CI, a machine where that is impossible skips with a reason.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

ATTACKER = "nobody"
_SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"  # util-linux


def require_attacker() -> pwd.struct_passwd:
    """The attacker's account; skip (fail under CI) where we cannot become it."""
    try:
        user = pwd.getpwnam(ATTACKER)
    except KeyError:
        user = None
    why = None
    if user is None:
        why = f"no '{ATTACKER}' user on this machine"
    elif os.geteuid() != 0:
        why = f"becoming '{ATTACKER}' needs root"
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI must be able to run the local-user attack tests")
        pytest.skip(why)
    assert user is not None
    return user


def system_python() -> str:
    """A Python every local user can run (ours may sit under root's 0700 home)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""):
        if candidate and os.access(candidate, os.X_OK) and os.stat(candidate).st_mode & 0o001:
            return candidate
    why = "no world-executable python3 for the attacker process"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def run_as_attacker(
    code: str, *, timeout: float = 30.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet as the unprivileged attacker (standard library only: the attacker
    has no access to our virtualenv's secrets, only to what any local user can run)."""
    user = require_attacker()
    python = system_python()
    # setpriv drops privileges after exec: subprocess's own user=/group= forks without vfork,
    # which runs gRPC's fork handlers in the child while our gRPC threads run (it crashed in CI).
    return subprocess.run(
        [
            _SETPRIV,
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--clear-groups",
            "--",
            python,
            "-I",
            "-c",
            code,
        ],
        cwd="/",
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir() if fd_dir.exists() else ():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _hex_address(text: str) -> tuple[str, int]:
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words), int(port, 16)


def listening_sockets(pid: int) -> list[dict[str, Any]]:
    """Every socket ``pid`` listens on (TCP and Unix, abstract ones included), from /proc:
    what an attacker on this host could try to connect to."""
    inodes = _socket_inodes(pid)
    found: list[dict[str, Any]] = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                host, port = _hex_address(cols[1])
                found.append({"kind": "tcp", "host": host, "port": port})
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[6] in inodes and int(cols[3], 16) & 0x10000:  # __SO_ACCEPTCON
            found.append({"kind": "unix", "path": "\0" + cols[7][1:] if cols[7].startswith("@") else cols[7]})
    return found
