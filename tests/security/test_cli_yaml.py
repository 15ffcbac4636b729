"""Finding 10: YAML in the CLI.

The faults: a billion-laughs file grew ``meshline apply`` to 4 GB before ``MemoryError``; a
duplicate key silently kept the last value (an ``allow`` became ``deny``). The real CLI, as a
process (memory capped, so a regression fails instead of exhausting the machine), against a
real control plane: both files are refused with the line, and nothing reaches the store.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.security.control_plane_process import ControlPlaneProcess, control_plane_process

MEMORY_CAP = 1 << 30  # bytes of address space for the CLI process

BILLION_LAUGHS = "\n".join(
    [
        "kind: Mesh",
        "name: lol",
        "spec:",
        "  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]",
        *(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)),
    ]
)

DUPLICATE = """\
kind: TrafficPermission
mesh: default
name: orders-callers
spec:
  targetRef: {kind: Mesh}
  from:
    - targetRef: {kind: MeshService, name: web}
      default:
        action: allow
        action: deny
"""


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    with control_plane_process(Path(tmp_path_factory.mktemp("yaml")) / "cp") as proc:
        yield proc


def apply(cp: ControlPlaneProcess, path: Path) -> subprocess.CompletedProcess[str]:
    prlimit = shutil.which("prlimit")
    cap = [prlimit, f"--as={MEMORY_CAP}", "--"] if prlimit else []
    return subprocess.run(
        [*cap, sys.executable, "-m", "meshline", "--api", cp.url, "--token", cp.token(), "apply", "-f", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def revision(cp: ControlPlaneProcess) -> int:
    return int(httpx.get(f"{cp.url}/api/v1/health").json()["revision"])


def test_a_billion_laughs_file_is_refused_with_its_line(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    path = tmp_path / "lol.yaml"
    path.write_text(BILLION_LAUGHS + "\n")
    before = revision(cp)
    result = apply(cp, path)
    assert result.returncode != 0
    assert "MemoryError" not in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "is not valid YAML at line" in result.stderr + result.stdout
    assert "aliases" in result.stderr + result.stdout
    assert revision(cp) == before


def test_a_duplicate_key_is_refused_with_its_line(cp: ControlPlaneProcess, tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(DUPLICATE)
    before = revision(cp)
    result = apply(cp, path)
    out = result.stderr + result.stdout
    assert result.returncode != 0, out
    assert "at line 10" in out and "key 'action' appears twice" in out and "first at line 9" in out, out
    assert revision(cp) == before
