"""Pasteable snippets from the docs, run as written against a real mesh (only names of the
test's own instances and ports are substituted)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from meshline.testing.mesh import MeshHarness
from meshline.testing.servers import HttpTestServer

DOCS = Path(__file__).parents[2] / "docs"


def snippet(doc: str, after: str) -> str:
    """The first ```sh block after the line containing ``after``."""
    text = (DOCS / doc).read_text()
    block = re.search(r"```sh\n(.*?)```", text[text.index(after):], re.S)
    assert block is not None, f"no sh block after {after!r} in {doc}"
    return block.group(1)


def yaml_block(doc: str, after: str) -> str:
    text = (DOCS / doc).read_text()
    block = re.search(r"```yaml\n(.*?)```", text[text.index(after):], re.S)
    assert block is not None
    return block.group(1)


def sh(mesh: MeshHarness, script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESHLINE_API": mesh.api_url, "MESHLINE_TOKEN": mesh.admin_token() or "",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=60)


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[MeshHarness]:
    h = MeshHarness(tmp_path, mtls="strict", mesh_spec={"defaultPermission": "allow"})
    h.start()
    try:
        yield h
    finally:
        h.stop()


def test_the_dry_run_snippet_reads_would_be_denials(strict: MeshHarness, tmp_path: Path) -> None:
    with HttpTestServer("orders-v1") as app:
        strict.sidecar("orders", app.port, name="orders-v1")
        web = strict.sidecar("web", 1, upstreams=["orders"])
        applied = sh(strict, "meshline apply --wait -f - <<'EOF'\n" + yaml_block("security-permissions.md",
                                                                                  "## Dry-run") + "EOF\n", tmp_path)
        assert applied.returncode == 0 and "ACKed the change" in applied.stdout, applied.stderr
        for _ in range(5):
            assert httpx.get(web.url("orders") + "/", timeout=5).status_code == 200
        out = sh(strict, snippet("security-permissions.md", "then read the would-be denials"), tmp_path)
        assert out.returncode == 0, out.stderr
        # one shape for one resource, whatever the format
        as_json = json.loads(sh(strict, "meshline get dataplane orders-v1 -o json", tmp_path).stdout)
        as_yaml = yaml.safe_load(sh(strict, "meshline get dataplane orders-v1 -o yaml", tmp_path).stdout)
        assert isinstance(as_json, dict) and as_json["name"] == "orders-v1"
        assert as_json.keys() == as_yaml.keys()
        assert re.search(r"try-deny-web.*shadow_denied.* 5$|shadow_denied.*try-deny-web.* 5$", out.stdout, re.M)
