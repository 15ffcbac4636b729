"""What the attack tests share: running code as another local user.

CI runs as root, so an attack "as an unprivileged local user" is a child process that drops to
``nobody`` before it runs. Outside CI, a machine where that is impossible skips with a reason.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess

import pytest

ATTACKER = "nobody"


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
    return subprocess.run(
        [python, "-I", "-c", code],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        cwd="/",
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
