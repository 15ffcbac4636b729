"""docs/multi-zone.md's walkthrough, run as written (its namespace prefix and subnet are the
test's own, claimed like any test network's), then its clean-up block."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from meshline.testing import netns

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "multi-zone.md"


def _blocks() -> list[str]:
    text = DOC.read_text()
    start = text.index("## Walkthrough")
    return re.findall(r"```sh\n(.*?)```", text[start:], re.S)[:2]


def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    netns.require_netns("curl")
    netns.remove_stale()
    run, index = netns._claim_run()
    walk, cleanup = _blocks()
    # the doc's two variables, set to the test's own namespaces and subnet
    walk = walk.replace("P=mz; NET=10.98.0;", f"P={run}; NET=10.213.{index};", 1)
    assert f"P={run}" in walk
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    try:
        done = subprocess.run(["bash", "-c", walk], cwd=ROOT, capture_output=True, text=True, timeout=400, env=env)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        assert '"instance": "orders-b"' in out, out
        assert "spiffe://meshline.local/default/web" in out, out  # the caller's identity, across zones
        assert re.search(r"zone-a\s+yes", out) and re.search(r"zone-b\s+yes", out), out  # get zones
        assert re.search(r"zone-b\s+orders\s+1\s+10\.213\.\d+\.13:10001", out), out  # get zoneservices
    finally:
        subprocess.run(["bash", "-c", f"P={run}\n{cleanup}"], capture_output=True, text=True, timeout=120)
        for ns in netns._namespaces():
            if ns.startswith(run):
                netns._delete_namespace(ns)
        (netns.RUN_DIR / run).unlink(missing_ok=True)
    assert not [ns for ns in netns._namespaces() if ns.startswith(run)]
