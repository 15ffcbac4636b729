"""Observability under strict mTLS with real Envoys: the callee names its caller by the
certificate (not by a header anyone could send), `edges` reports the connections as mTLS,
and a TrafficPermission denial is explained with the policy's name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from meshline.cli.main import cli
from meshline.testing.mesh import MeshHarness, wait_until
from meshline.testing.servers import HttpTestServer
from tests.e2e.test_observability import Tap

pytestmark = pytest.mark.e2e

DENY_ADMIN = """
kind: TrafficPermission
mesh: default
name: deny-web-admin
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: orders}}]
  action: deny
  rules: [{paths: [{prefix: /admin/}]}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with HttpTestServer("orders-1") as orders_app, HttpTestServer("web-1") as web_app, \
            MeshHarness(tmp_path_factory.mktemp("mtls"), mtls="strict",
                        mesh_spec={"defaultPermission": "allow"}) as harness:
        harness.apply(DENY_ADMIN)
        harness.sidecar("orders", orders_app.port)
        web = harness.sidecar("web", web_app.port, upstreams=["orders"])
        harness.wait_in_sync()
        yield {"harness": harness, "web": web}


def test_the_caller_is_known_by_its_certificate(mesh: dict[str, Any]) -> None:
    harness: MeshHarness = mesh["harness"]
    with Tap(harness, service="orders") as tap:
        resp = httpx.get(mesh["web"].url("orders") + "/ok", headers={"x-meshline-source": "intruder"}, timeout=10)
        assert resp.status_code == 200
        wait_until(lambda: tap.records, 10, what="the request in the tap")
    both = wait_until(
        lambda: (d := harness.api.get(f"/api/v1/meshes/default/requests/{tap.records[0]['requestId']}"))
        and len(d["records"]) == 2 and d, 10, what="both halves")
    outbound, inbound = both["records"]
    assert (outbound["source"], inbound["source"]) == ("web", "web")  # the app's header was overwritten
    assert inbound["peer"] == "spiffe://meshline.local/default/web" and inbound["mtls"] is True
    edges = CliRunner().invoke(cli, ["--api", harness.api_url, "edges"], catch_exceptions=False).output
    assert any(line.split()[:2] == ["web", "orders"] and line.split()[-1] == "yes" for line in edges.splitlines()), edges


def test_a_denial_names_the_traffic_permission(mesh: dict[str, Any]) -> None:
    harness: MeshHarness = mesh["harness"]
    with Tap(harness, service="orders", status="403") as tap:
        assert httpx.get(mesh["web"].url("orders") + "/admin/users", timeout=10).status_code == 403
        wait_until(lambda: tap.records, 10, what="the denied request in the tap")
    assert tap.records[0]["explanation"] == "denied by TrafficPermission deny-web-admin (at orders's sidecar)"
