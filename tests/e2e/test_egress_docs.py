"""docs/egress.md's walkthrough, run as written against a real control plane (only its ports
are substituted): a local HTTPS server with its own CA stands in for a partner's API, an
ExternalService declares it, and a meshed workload calls it in plain HTTP through its sidecar,
which originates TLS and verifies the server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshline.testing.mesh import MeshHarness
from meshline.testing.servers import free_port

DOC = Path(__file__).parents[2] / "docs" / "egress.md"


def blocks(after: str, count: int) -> list[str]:
    text = DOC.read_text()
    return re.findall(r"```sh\n(.*?)```", text[text.index(after):], re.S)[:count]


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MeshHarness]:
    h = MeshHarness(tmp_path / "mesh", mtls="strict")
    h.start()
    try:
        yield h
    finally:
        h.stop()


def test_the_walkthrough_calls_an_https_api_through_the_sidecar(mesh: MeshHarness, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    script = "\n".join(blocks("## Try it against the `meshline up` demo", 2))
    for port in ("9443", "9800", "15020"):
        script = script.replace(port, str(free_port()))
    work = tmp_path / "walkthrough"
    work.mkdir()
    env = {**os.environ, "MESHLINE_API": mesh.api_url, "MESHLINE_TOKEN": mesh.admin_token() or "",
           "MESHLINE_CONFIG": str(tmp_path / "cli.yaml"), "HOME": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}  # fmt: skip
    # the background processes the walkthrough starts end with it
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", "trap 'kill $(jobs -p) 2>/dev/null' EXIT\n" + script],
                          capture_output=True, text=True, env=env, cwd=work, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr + (work / "shop.log").read_text()
    assert "partner-api: /orders over TLSv1.3, Host api.example.test" in done.stdout, done.stdout
    assert re.search(r"partner-api\s+default\s+127\.0\.0\.1:\d+\s+http\s+originate \(api\.example\.test\)", done.stdout), done.stdout
