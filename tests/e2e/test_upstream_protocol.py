"""An upstream with no instance keeps its declared or its last known protocol (issue 11,
item 7): an HTTP caller gets a 503 that says why, not an empty reply from a TCP proxy, and
HTTP policies (timeouts, retries) stay in its config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import HttpTestServer, free_port
from tests.e2e.test_observability import Tap

TIMEOUT = """kind: Timeout
mesh: default
name: web-to-orders
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: orders}}]
  conf: {http: {requestTimeout: 4s}}
"""


def route_timeouts(mesh: MeshHarness, sc: Sidecar) -> list[str]:
    config = mesh.api.get(f"/api/v1/meshes/default/dataplanes/{sc.name}/inspect")["config"]
    return [r["route"].get("timeout", "") for rc in config.get("RouteConfiguration", [])
            for vh in rc.get("virtualHosts", []) for r in vh.get("routes", []) if "route" in r]


def explained_503(mesh: MeshHarness, url: str) -> dict[str, Any]:
    """Once the caller's sidecar has no instance left: an HTTP answer (not a closed connection)
    and its tapped record."""
    with Tap(mesh, service="orders", status="failed,5xx") as tap:
        def unanswered() -> httpx.Response | None:
            r = httpx.get(url, timeout=5)
            return r if r.status_code != 200 else None

        resp = wait_until(unanswered, 15, what="a request with no instance to answer it")
        assert resp.status_code == 503 and "no healthy upstream" in resp.text, resp.text
        wait_until(lambda: tap.records, 10, what="the failed request in the tap")
    return tap.records[-1]


def test_a_declared_protocol_holds_before_any_instance_registers(tmp_path: Path) -> None:
    with MeshHarness(tmp_path) as mesh:
        mesh.apply(TIMEOUT)
        port = free_port()
        web = mesh.sidecar("web", 1, extra_args=["--upstream", f"orders={port}/http"])
        mesh.wait_in_sync()
        r = explained_503(mesh, f"http://127.0.0.1:{port}/")
        assert r["protocol"] == "http" and r["flags"] == ["UH"]
        assert r["explanation"] == "no healthy instance of orders (no instance is registered)"
        assert "4s" in route_timeouts(mesh, web)  # the Timeout applies


def test_the_last_known_protocol_holds_while_no_instance_is_registered(tmp_path: Path) -> None:
    with HttpTestServer("orders-1") as app, MeshHarness(tmp_path) as mesh:
        mesh.apply(TIMEOUT)
        orders = mesh.sidecar("orders", app.port)
        web = mesh.sidecar("web", 1, upstreams=["orders"])
        mesh.wait_in_sync()
        assert httpx.get(web.url("orders") + "/", timeout=5).status_code == 200
        orders.stop()  # deregisters: orders has no instance now
        r = explained_503(mesh, web.url("orders") + "/")
        assert r["protocol"] == "http" and r["explanation"] == "no healthy instance of orders (no instance is registered)"
        assert "4s" in route_timeouts(mesh, web)
        # kept in the store: a restarted control plane renders the same
        mesh.restart_control_plane()
        mesh.wait_in_sync()
        r = explained_503(mesh, web.url("orders") + "/")
        assert r["protocol"] == "http"
        assert mesh.api.get("/api/v1/meshes/default/dataplanes/web-1/inspect")["config"]["Listener"]

        with HttpTestServer("orders-2") as app2:  # a new instance is reached at once
            mesh.sidecar("orders", app2.port)
            wait_until(lambda: httpx.get(web.url("orders") + "/", timeout=5).status_code == 200, 15,
                       what="orders back")
