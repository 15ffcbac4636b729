"""The OpenAPI document is built from the routes the API serves: none missing, none invented."""

from __future__ import annotations

from pathlib import Path

import httpx

from meshline.controlplane.settings import Settings
from meshline.testing.mesh import ControlPlaneThread
from meshline.testing.servers import free_port


def test_every_api_route_is_documented_and_every_documented_route_exists(tmp_path: Path) -> None:
    cp = ControlPlaneThread(Settings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path / 'db'}", auth=False,
                                     api_address=f"127.0.0.1:{free_port()}",
                                     xds_address=f"127.0.0.1:{free_port()}"))  # fmt: skip
    cp.start()
    try:
        served = {r for r in cp.cp.ctx.metrics.known_routes if r.startswith("/api/") and "{plural}" not in r}
        doc = httpx.get(cp.cp.api_url + "/openapi.json").json()
        plurals = [k["plural"] for k in httpx.get(cp.cp.api_url + "/api/v1/kinds").json()["items"]]
    finally:
        cp.stop()
    documented = {p for p in doc["paths"] if p.startswith("/api/")}
    # the generic /meshes/{mesh}/{plural}[/{name}] routes are documented once per kind
    per_kind = {f"/api/v1/meshes/{{mesh}}/{k}{tail}" for k in plurals for tail in ("", "/{name}")}
    assert served - documented == set(), "routes the document does not describe"
    assert documented - served - per_kind == set(), "documented routes nobody serves"
    # the subsystems' routes are there, documented by their own declarations
    assert doc["paths"]["/api/v1/meshes/{mesh}/stats"]["get"]["summary"].startswith("Golden signals")
    assert "post" in doc["paths"]["/api/v1/tokens"] and "get" in doc["paths"]["/api/v1/tokens"]
    assert doc["paths"]["/api/v1/prometheus/targets"]["get"]["parameters"] == []
