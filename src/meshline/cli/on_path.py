"""How the user should type `meshline`: the banner and hints must name a command that works."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def installed_script(executable: str | None = None) -> Path:
    """The `meshline` script next to this Python (the virtualenv's bin/)."""
    return Path(executable or sys.executable).parent / "meshline"


def meshline_command(path_env: str | None = None, executable: str | None = None) -> tuple[str, str | None]:
    """(the command to print, a note on how to get `meshline` on PATH or None).

    `meshline` when the one on PATH is this installation's; else the script's full path,
    with the `export PATH=...` line that makes plain `meshline` work."""
    script = installed_script(executable)
    found = shutil.which("meshline", path=path_env if path_env is not None else os.environ.get("PATH", ""))
    if found is not None and Path(found).resolve() == script.resolve():
        return "meshline", None
    if not script.exists():
        return f"{Path(executable or sys.executable)} -m meshline", None
    cwd = Path.cwd()
    shown = script.relative_to(cwd) if script.is_relative_to(cwd) else script
    note = (f"`meshline` is not on your PATH{' (another one is)' if found else ''}: use {shown}, or"
            f' `export PATH="{script.parent}:$PATH"` in your shell')  # fmt: skip
    return str(shown), note
