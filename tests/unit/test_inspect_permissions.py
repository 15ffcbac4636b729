"""When two TrafficPermissions match the same traffic, `meshline inspect` says which decides,
for which callers and why (issue 11, item 14)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshline.api.client import ApiClient
from meshline.controlplane.settings import Settings
from meshline.testing.mesh import ControlPlaneThread, wait_until
from meshline.testing.servers import free_port

POLICIES = """kind: TrafficPermission
mesh: default
name: deny-all-to-orders
spec:
  sources: [{match: {service: '*'}}]
  destinations: [{match: {service: orders}}]
  action: deny
---
kind: TrafficPermission
mesh: default
name: web-to-orders
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: orders}}]
  action: allow
---
kind: TrafficPermission
mesh: default
name: web-admin-dry-run
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: orders}}]
  action: deny
  mode: dry-run
"""


@pytest.fixture
def api(tmp_path: Path) -> Iterator[str]:
    cp = ControlPlaneThread(Settings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path / 'db'}", auth=False,
                                     api_address=f"127.0.0.1:{free_port()}", xds_address=f"127.0.0.1:{free_port()}"))
    cp.start()
    with ApiClient(cp.cp.api_url, token="") as c:
        c.put({"kind": "Mesh", "name": "default", "spec": {"mtls": {"mode": "strict"}}})
        c.put({"kind": "Dataplane", "mesh": "default", "name": "orders-1",
               "spec": {"address": "127.0.0.1", "inbound": [{"port": free_port(), "servicePort": free_port(),
                        "tags": {"service": "orders", "protocol": "http"}}]}})
    yield cp.cp.api_url
    cp.stop()


def test_inspect_names_the_permission_that_decides(api: str) -> None:
    env = {**os.environ, "MESHLINE_API": api, "MESHLINE_TOKEN": ""}

    def meshline(*args: str, stdin: str | None = None) -> str:
        out = subprocess.run([sys.executable, "-m", "meshline", *args], input=stdin, capture_output=True, text=True,
                             env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        return " ".join(out.stdout.split())

    meshline("apply", "-f", "-", stdin=POLICIES)
    with ApiClient(api, token="") as c:
        def reasons() -> dict[str, str] | None:
            pols = c.get("/api/v1/meshes/default/dataplanes/orders-1/inspect", params={"config": "0"})["policies"]
            found = {p["name"]: p["reason"] for p in pols if p["kind"] == "TrafficPermission"}
            return found if len(found) == 3 else None

        why = wait_until(reasons, 10, what="the three permissions in inspect")
    assert why["deny-all-to-orders"].endswith(
        "; for web: web-to-orders (allow) decides instead, its source is more specific")
    assert why["web-to-orders"].endswith(
        "; for web: decides over deny-all-to-orders (deny), its source is more specific")
    assert "decides" not in why["web-admin-dry-run"]  # a dry run decides nothing
    text = meshline("inspect", "dataplane", "orders-1")
    assert "for web: web-to-orders (allow) decides instead" in text
