"""A typo in a route's backend (issue 11, item 4), end to end: the caller gets 503 and both
the tap and `meshline explain` say "backend inventroy has no instances", with the route and
the closest known service (apply's warning and inspect are tests/unit/test_unknown_services.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from meshline.testing.mesh import MeshHarness, wait_until
from meshline.testing.servers import HttpTestServer
from tests.e2e.test_observability import Tap

ROUTE = """kind: HTTPRoute
mesh: default
name: to-inventory
spec:
  destinations: [{match: {service: inventory}}]
  rules:
    - backends: [{service: inventroy}]
"""
SAYS = "backend inventroy has no instances (HTTPRoute to-inventory; did you mean 'inventory'?)"


def test_explain_names_the_backend_with_no_instances(tmp_path: Path) -> None:
    with HttpTestServer("inventory-1") as app, MeshHarness(tmp_path) as mesh:
        mesh.sidecar("inventory", app.port)
        web = mesh.sidecar("web", 1, upstreams=["inventory"])
        mesh.apply(ROUTE)
        mesh.wait_in_sync()
        with Tap(mesh, service="inventory", status="5xx") as tap:
            def failed() -> bool:
                return httpx.get(web.url("inventory") + "/", timeout=5).status_code == 503 and bool(tap.records)

            wait_until(failed, 15, what="the route to be live and its failure tapped")
        record = tap.records[-1]
        assert record["flags"] == ["UH"] and record["explanation"] == SAYS
        assert app.count() == 0
        env = {**os.environ, "MESHLINE_API": mesh.api_url, "MESHLINE_TOKEN": ""}
        out = subprocess.run([sys.executable, "-m", "meshline", "explain", record["requestId"]],
                             capture_output=True, text=True, env=env, timeout=30).stdout
        assert out.startswith(f"{record['requestId']}: {SAYS}"), out
