"""One definition of success: a mesh denial (TrafficPermission 403) is not a success, counted in
its own column by stat/edges and as response_code_class="denied" in Prometheus; no response
(code 0) is a failure in the documented Prometheus query and the Grafana dashboards too."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from meshline.agent.metrics import code_class
from meshline.testing.mesh import MeshHarness, wait_until
from meshline.testing.servers import HttpTestServer

ROOT = Path(__file__).parents[2]


def test_mesh_denials_are_their_own_column_not_successes(tmp_path: Path) -> None:
    with HttpTestServer("orders-1") as orders, MeshHarness(tmp_path, mtls="strict") as mesh:
        mesh.sidecar("orders", orders.port)
        web = mesh.sidecar("web", 1, upstreams=["orders"])
        for _ in range(6):  # strict mTLS, no TrafficPermission: the mesh's default deny
            assert httpx.get(web.url("orders") + "/", timeout=5).status_code == 403
        assert orders.count() == 0

        def counted() -> dict | None:
            stats = mesh.api.get("/api/v1/meshes/default/stats", params={"window": "1m"})
            row = next((s for s in stats["services"] if s["service"] == "orders"), None)
            return row if row and row["requests"] >= 6 else None

        row = wait_until(counted, 20, what="the six requests in stat")
        assert row["denied"] == 6 and row["failures"] == 0 and row["successRate"] == 0.0
        stats = mesh.api.get("/api/v1/meshes/default/stats", params={"window": "1m"})
        edge = next(e for e in stats["edges"] if (e["source"], e["destination"]) == ("web", "orders"))
        assert edge["denied"] == 6 and edge["failures"] == 0 and edge["successRate"] == 0.0  # edges, the same
        env = {**os.environ, "MESHLINE_API": mesh.api_url, "MESHLINE_TOKEN": ""}
        for command in ("stat", "edges"):  # the CLI's tables: a DENIED column, 0% success
            out = subprocess.run([sys.executable, "-m", "meshline", command], capture_output=True, text=True,
                                 env=env, timeout=30).stdout
            rows = [ln.split() for ln in out.splitlines() if ln.strip()]
            header = next(r for r in rows if "DENIED" in r)  # one word per column
            row = next(r for r in rows if r[0] in ("orders", "web"))
            assert (row[header.index("SUCCESS")], row[header.index("DENIED")]) == ("0.0%", "6"), out

        metrics_port = mesh.api.get(f"/api/v1/meshes/default/dataplanes/{web.name}")["spec"]["metrics"]["port"]
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        lines = [ln for ln in text.splitlines() if ln.startswith("meshline_requests_total{")]
        assert any('response_code_class="denied"' in ln and 'response_code="403"' in ln for ln in lines), lines
        assert not any('response_code_class="4xx"' in ln for ln in lines), lines


def test_code_0_and_denials_are_never_success_in_the_queries() -> None:
    assert code_class("0") == "" and code_class("503") == "5xx"
    success = re.compile(r"^\[1-4\]xx$")  # what the success queries select
    assert not success.match("") and not success.match("denied")
    docs = (ROOT / "docs" / "observability.md").read_text()
    assert 'response_code_class=~"[1-4]xx"' in docs and 'response_code_class!="5xx"' not in docs
    for board in (ROOT / "src" / "meshline" / "telemetry" / "grafana").glob("*.json"):
        exprs = [t["expr"] for p in json.loads(board.read_text())["panels"] for t in p.get("targets", [])]
        assert not any('response_code_class!="5xx"' in e for e in exprs), board.name
