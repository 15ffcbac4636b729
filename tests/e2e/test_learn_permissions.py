"""Least-privilege permissions learned from traffic, end to end: a strict (default-deny) mesh
observed under an allow-everything permission, real Envoys streaming their access logs, the
suggestion applied, and what it lets through checked with real requests; the dry-run report
checked against the requests a removed rule would refuse.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner

from meshline.cli.main import cli
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import HttpTestServer

pytestmark = pytest.mark.e2e

_numbers = itertools.count(1)
OBSERVE_ALL = {"sources": [{"match": {"service": "*"}}], "destinations": [{"match": {"service": "*"}}],
               "action": "allow"}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshHarness]:
    with MeshHarness(tmp_path_factory.mktemp("learn"), mtls="strict") as h:
        yield h


@pytest.fixture(scope="module")
def apps() -> Iterator[tuple[HttpTestServer, HttpTestServer, HttpTestServer]]:
    with HttpTestServer("orders") as orders, HttpTestServer("inventory") as inventory, \
            HttpTestServer("client") as client:
        yield orders, inventory, client


Mesh = tuple[str, Sidecar, Sidecar]


@pytest.fixture
def observed_mesh(harness: MeshHarness, apps: tuple[HttpTestServer, ...]) -> Iterator[Mesh]:
    """A strict mesh (deny by default) where everything is allowed while it is observed:
    orders and inventory; web may call both, legacy calls orders."""
    mesh = f"learn-{next(_numbers)}"
    harness.api.put({"kind": "Mesh", "name": mesh, "spec": {"mtls": {"mode": "strict"}}})
    harness.apply([{"kind": "TrafficPermission", "mesh": mesh, "name": "observe-all", "spec": OBSERVE_ALL}])
    orders, inventory, client = apps
    harness.sidecar("orders", app_port=orders.port, mesh=mesh)
    harness.sidecar("inventory", app_port=inventory.port, mesh=mesh)
    web = harness.sidecar("web", app_port=client.port, upstreams=["orders", "inventory"], mesh=mesh)
    legacy = harness.sidecar("legacy", app_port=client.port, upstreams=["orders"], mesh=mesh)
    yield mesh, web, legacy
    for sc in harness.sidecars:
        if sc.mesh == mesh:
            sc.kill()


def get(sc: Sidecar, service: str, path: str, method: str = "GET") -> int:
    return httpx.request(method, sc.url(service) + path, timeout=10).status_code


def until_ok(sc: Sidecar, service: str, path: str = "/ready-check") -> None:
    wait_until(lambda: get(sc, service, path) == 200, 20, what=f"{sc.service} -> {service} to answer")


def observed_requests(h: MeshHarness, mesh: str) -> dict[tuple[str, str], int]:
    stats = h.api.get(f"/api/v1/meshes/{mesh}/stats", params={"window": "5m"})
    return {(e["source"], e["destination"]): e["requests"] for e in stats["edges"]}


def wait_observed(h: MeshHarness, mesh: str, want: dict[tuple[str, str], int]) -> None:
    wait_until(lambda: all(observed_requests(h, mesh).get(k, 0) >= n for k, n in want.items()), 20,
               what=f"the intake to count {want}")


def suggestion(h: MeshHarness, mesh: str, **params: str) -> dict[str, Any]:
    return dict(h.api.get(f"/api/v1/meshes/{mesh}/permissions/suggest", params={"since": "10m", **params}))


def test_suggested_permissions_allow_every_observed_edge_and_nothing_else(
    harness: MeshHarness, observed_mesh: Mesh
) -> None:
    mesh, web, legacy = observed_mesh
    until_ok(web, "orders")
    until_ok(legacy, "orders")
    for path in ("/items/1", "/items/2", "/items/3", "/health"):
        assert get(web, "orders", path) == 200
    assert get(legacy, "orders", "/health", "POST") == 200
    wait_observed(harness, mesh, {("web", "orders"): 5, ("legacy", "orders"): 2})

    data = suggestion(harness, mesh)
    names = [d["name"] for d in data["documents"]]
    assert names == ["learned-legacy-to-orders", "learned-web-to-orders", "learned-deny-unobserved"]
    text = data["yaml"]
    assert "# web -> orders: 5 request(s), last seen" in text
    assert "# legacy -> orders: 2 request(s), last seen" in text
    assert [d["spec"] for d in yaml.safe_load_all(text) if d][:2] == [d["spec"] for d in data["documents"][:2]]

    # Enforce it: the observation permission goes, the learned ones come.
    harness.api.request("DELETE", f"/api/v1/meshes/{mesh}/trafficpermissions/observe-all")
    harness.apply(data["documents"])
    wait_until(lambda: get(web, "inventory", "/anything") == 403, 20, what="web -> inventory refused")
    assert get(web, "orders", "/items/9") == 200  # observed edges stay allowed
    assert get(legacy, "orders", "/health") == 200
    body = httpx.get(web.url("inventory") + "/x", timeout=10).text
    assert "learned-deny-unobserved" in body  # the unobserved edge stays denied, by the learned deny


def test_l7_suggestion_collapses_sibling_paths_and_allows_only_what_was_seen(
    harness: MeshHarness, observed_mesh: Mesh
) -> None:
    mesh, web, legacy = observed_mesh
    until_ok(web, "orders", "/health")
    for path in ("/items/1", "/items/2", "/items/3", "/health"):
        assert get(web, "orders", path) == 200
    until_ok(legacy, "orders", "/health")
    wait_observed(harness, mesh, {("web", "orders"): 5, ("legacy", "orders"): 1})

    data = suggestion(harness, mesh, l7="true")
    web_doc = next(d for d in data["documents"] if d["name"] == "learned-web-to-orders")
    assert web_doc["spec"]["rules"] == [
        {"paths": [{"exact": "/health"}], "methods": ["GET"]},
        {"paths": [{"prefix": "/items/"}], "methods": ["GET"]},
    ]
    assert "# 3 request(s), last seen" in data["yaml"]  # the collapsed /items/ rule's own count
    harness.api.request("DELETE", f"/api/v1/meshes/{mesh}/trafficpermissions/observe-all")
    harness.apply(data["documents"])
    wait_until(lambda: get(web, "orders", "/admin") == 403, 20, what="an unseen path refused")
    assert get(web, "orders", "/items/42") == 200  # under the collapsed prefix
    assert get(web, "orders", "/health", "DELETE") == 403  # a method never seen on it
    assert get(legacy, "orders", "/health") == 200


def test_dry_run_report_counts_exactly_what_a_removed_rule_would_deny(
    harness: MeshHarness, observed_mesh: Mesh
) -> None:
    mesh, web, legacy = observed_mesh
    until_ok(web, "orders", "/health")
    until_ok(legacy, "orders", "/health")
    wait_observed(harness, mesh, {("web", "orders"): 1, ("legacy", "orders"): 1})
    data = suggestion(harness, mesh, mode="dry-run")
    assert all(d["spec"]["mode"] == "dry-run" for d in data["documents"])
    # Review: legacy -> orders is left out, so enforcing this set would refuse legacy.
    kept = [d for d in data["documents"] if d["name"] != "learned-legacy-to-orders"]
    harness.apply(kept)
    orders = next(sc for sc in harness.sidecars if sc.mesh == mesh and sc.service == "orders")

    def shadow_on() -> bool:  # the dry-run set reached orders' sidecar (probes are not counted below)
        assert get(legacy, "orders", "/probe") == 200
        return any(k.endswith("learned-deny-unobserved.shadow_denied") for k in orders.stats("rbac"))

    wait_until(shadow_on, 20, what="the dry-run permissions on orders' sidecar")
    for i in range(4):
        assert get(legacy, "orders", f"/legacy/{i % 2}") == 200  # dry-run: nothing is refused
    for _ in range(3):
        assert get(web, "orders", "/health") == 200

    def report() -> list[dict[str, Any]]:
        rows = harness.api.get(f"/api/v1/meshes/{mesh}/permissions/report", params={"since": "10m"})["denials"]
        return [r for r in rows if r["path"].startswith("/legacy/")]

    wait_until(lambda: sum(r["requests"] for r in report()) >= 4, 20, what="the would-be denials in the report")
    rows = report()
    assert {(r["mode"], r["policy"], r["source"], r["destination"], r["path"], r["requests"]) for r in rows} == {
        ("dry-run", "learned-deny-unobserved", "legacy", "orders", "/legacy/0", 2),
        ("dry-run", "learned-deny-unobserved", "legacy", "orders", "/legacy/1", 2),
    }
    all_rows = harness.api.get(f"/api/v1/meshes/{mesh}/permissions/report", params={"since": "10m"})["denials"]
    assert not [r for r in all_rows if r["source"] == "web"]  # web's requests stay allowed by its rule

    # The CLI prints the same, and the command that allows the missing edge.
    out = CliRunner().invoke(cli, ["--api", harness.api_url, "permissions", "report", "--mesh", mesh,
                                   "--since", "10m"])
    assert out.exit_code == 0, out.output
    assert "learned-deny-unobserved" in out.output and "/legacy/0" in out.output
    assert "--only 'legacy->orders' | meshline apply -f -" in out.output


def test_enforcing_mesh_report_groups_denials_by_rule(harness: MeshHarness, observed_mesh: Mesh) -> None:
    mesh, web, legacy = observed_mesh
    until_ok(legacy, "orders", "/health")
    harness.api.request("DELETE", f"/api/v1/meshes/{mesh}/trafficpermissions/observe-all")
    wait_until(lambda: get(legacy, "orders", "/x") == 403, 20, what="the mesh default to refuse legacy")
    for _ in range(2):
        assert get(legacy, "orders", "/x") == 403

    def rows() -> list[dict[str, Any]]:
        found = harness.api.get(f"/api/v1/meshes/{mesh}/permissions/report", params={"since": "10m"})["denials"]
        return [r for r in found if r["mode"] == "enforced" and r["source"] == "legacy"]

    wait_until(lambda: sum(r["requests"] for r in rows()) >= 3, 20, what="the denials in the report")
    assert {(r["policy"], r["destination"], r["path"]) for r in rows()} == {("mesh_default", "orders", "/x")}
    # The missing rule, one command away: that edge alone, its refused paths included (once
    # the sidecars' counters, which the suggestion reads, have the edge).
    wait_until(lambda: ("legacy", "orders") in observed_requests(harness, mesh), 20, what="legacy -> orders counted")
    data = suggestion(harness, mesh, includeDenied="true", l7="true", only="legacy->orders")
    [doc] = data["documents"]
    assert doc["name"] == "learned-legacy-to-orders"
    assert {"paths": [{"exact": "/x"}], "methods": ["GET"]} in doc["spec"]["rules"]
    harness.apply(data["documents"])
    wait_until(lambda: get(legacy, "orders", "/x") == 200, 20, what="legacy allowed again")


def test_suggest_refuses_a_window_longer_than_what_is_kept(harness: MeshHarness) -> None:
    r = httpx.get(f"{harness.api_url}/api/v1/meshes/default/permissions/suggest", params={"since": "2h"}, timeout=5)
    assert r.status_code == 422
    assert "keeps the last hour" in r.text
    # No traffic: nothing is suggested (a deny of everything else alone would refuse everything).
    out = CliRunner().invoke(cli, ["--api", harness.api_url, "permissions", "suggest", "--since", "5m"])
    assert out.exit_code != 0 and "no service-to-service traffic to allow was observed" in str(out.exception)
