"""docs/transparent-proxy.md's walkthrough, run as written (its namespace prefix and subnet are
the test's own, claimed like any test network's), then its clean-up block."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from meshline.testing import netns

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "transparent-proxy.md"


def _blocks() -> list[str]:
    text = DOC.read_text()
    start = text.index("## Walkthrough")
    return re.findall(r"```sh\n(.*?)```", text[start:], re.S)[:2]


def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    netns.require_netns("nft", "curl")
    netns.remove_stale()
    run, index = netns._claim_run()
    walk, cleanup = _blocks()
    # the doc's two variables, set to the test's own namespaces and subnet
    walk = walk.replace("P=ml; NET=10.99.0;", f"P={run}; NET=10.213.{index};", 1)
    assert f"P={run}" in walk
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    try:
        done = subprocess.run(["bash", "-c", walk], cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        assert out.count('"instance": "orders-1"') == 2, out  # orders.mesh and orders:8080
        assert "spiffe://meshline.local/default/web" in out  # over mTLS, as web
        assert "direct plaintext dial: refused" in out
        assert re.search(r"orders\s+default\s+240\.240\.\d+\.\d+\s+orders\.mesh", out), out
        assert "capture rules (nftables) of agent pid" in out and "(running)" in out
    finally:
        subprocess.run(["bash", "-c", f"P={run}\n" + cleanup.replace("sleep 2; ", "")], capture_output=True,
                       timeout=60)  # fmt: skip
        for ns in netns._namespaces():
            if ns.startswith(run):
                netns._delete_namespace(ns)
        (netns.RUN_DIR / run).unlink(missing_ok=True)
    assert not [ns for ns in netns._namespaces() if ns.startswith(run)]
