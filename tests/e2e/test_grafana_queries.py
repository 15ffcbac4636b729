"""The shipped Grafana dashboards' queries against a real Prometheus scraping a mesh with HTTP
(versioned and not), gRPC and TCP services and an HTTP upstream with no instance (issue 11,
item 10): every variable lists what it should (TCP services too), "Requests no instance
answered" is 0 for healthy services whatever their version tags and counts the requests to
the missing one, and every stat panel shows a number (0, never "No data")."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import (
    GrpcTestServer,
    HttpTestServer,
    TcpEchoServer,
    free_port,
    grpc_echo,
    tcp_exchange,
)
from tests.e2e.test_metrics_prometheus import Prometheus, prometheus_binary
from tests.unit.test_metrics_dashboards import DASHBOARDS

pytestmark = pytest.mark.e2e

SERVICES = {"orders", "inventory", "echo", "db", "ghost"}


def board(name: str) -> dict[str, Any]:
    return dict(json.loads(next(p for p in DASHBOARDS if p.stem == name).read_text()))


def filled(expr: str, service: str = "orders", dataplane: str = "web-1") -> str:
    for var, value in {"$__rate_interval": "5m", "$mesh": "default", "$service": service,
                       "$dataplane": dataplane}.items():
        expr = expr.replace(var, value)
    return expr


def variable_values(prom: Prometheus, query: str) -> set[str]:
    """What Grafana lists for a ``label_values(selector, label)`` variable."""
    found = re.fullmatch(r"label_values\((.*),\s*(\w+)\s*\)", query, re.S)
    assert found, query
    selector, label = filled(found.group(1)), found.group(2)
    r = httpx.get(prom.url + "/api/v1/series", params={"match[]": selector}, timeout=10)
    r.raise_for_status()
    return {s[label] for s in r.json()["data"] if label in s}


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshHarness, Sidecar, Prometheus]]:
    assert prometheus_binary()
    tmp = tmp_path_factory.mktemp("grafana")
    with HttpTestServer("orders-v1") as orders, HttpTestServer("inventory-1") as inventory, \
            GrpcTestServer("echo-1") as echo, TcpEchoServer("db-1") as db, MeshHarness(tmp / "mesh") as mesh:
        mesh.sidecar("orders", orders.port, tags={"version": "v1"})
        mesh.sidecar("inventory", inventory.port)  # no version tag
        mesh.sidecar("echo", echo.port, protocol="grpc")
        mesh.sidecar("db", db.port, protocol="tcp")
        ghost = free_port()  # declared HTTP, never deployed
        web = mesh.sidecar("web", 1, upstreams=["orders", "inventory", "echo", "db"],
                           extra_args=["--upstream", f"ghost={ghost}/http"])
        web.outbounds["ghost"] = ghost
        mesh.wait_in_sync()
        prom = Prometheus(tmp / "prometheus", mesh.api_url, "unused: authentication is off")
        try:
            wait_until(lambda: len(prom.query('up{job="meshline-dataplanes"} == 1')) == 5, 30,
                       what="Prometheus to scrape the five dataplanes")
            for _ in range(2):  # two scrapes apart: rate() needs two samples of each series
                with httpx.Client(timeout=5) as client:
                    for _ in range(5):
                        assert client.get(web.url("orders") + "/").status_code == 200
                        assert client.get(web.url("inventory") + "/").status_code == 200
                        assert client.get(web.url("ghost") + "/").status_code == 503
                        assert grpc_echo(f"127.0.0.1:{web.port('echo')}") == b"echo-1:ping"
                        assert tcp_exchange(web.port("db")) == b"db-1:hello\n"
                n = prom.scalar('sum(meshline_requests_total{reporter="source",destination_service="ghost"})') or 0
                wait_until(lambda n=n: (prom.scalar('sum(meshline_requests_total{reporter="source",'
                                                    'destination_service="ghost"})') or 0) > n, 20,
                           what="a scrape of the new requests")
            yield mesh, web, prom
        finally:
            prom.close()


def test_the_service_and_mesh_variables_list_every_protocol(scraped: tuple[MeshHarness, Sidecar, Prometheus]) -> None:
    _, _, prom = scraped
    variables = {v["name"]: v for v in board("service")["templating"]["list"]}
    assert variable_values(prom, variables["service"]["query"]["query"]) >= SERVICES  # db is TCP
    assert variable_values(prom, variables["mesh"]["query"]["query"]) == {"default"}
    for name in ("mesh", "dataplane", "control-plane"):
        for v in board(name)["templating"]["list"]:
            if v.get("type") == "query":
                assert variable_values(prom, v["query"]["query"]), f"{name}: variable {v['name']} lists nothing"


def test_requests_no_instance_answered(scraped: tuple[MeshHarness, Sidecar, Prometheus]) -> None:
    _, _, prom = scraped
    panel = next(p for p in board("service")["panels"] if p["title"].startswith("Requests no instance answered"))
    expr = panel["targets"][0]["expr"]
    for healthy in ("orders", "inventory", "echo"):  # inventory and echo have no version tag
        assert prom.scalar(filled(expr, healthy)) == 0, healthy
    missing = prom.scalar(filled(expr, "ghost"))
    assert missing is not None and missing > 0


def test_every_stat_panel_shows_a_number(scraped: tuple[MeshHarness, Sidecar, Prometheus]) -> None:
    _, _, prom = scraped
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            if panel.get("type") != "stat":
                continue
            for target in panel.get("targets", []):
                value = prom.scalar(filled(target["expr"]))
                assert value is not None, f"{path.stem}: '{panel['title']}' shows No data"
    not_in_sync = next(p for p in board("control-plane")["panels"] if p["title"] == "Not in sync")
    assert prom.scalar(filled(not_in_sync["targets"][0]["expr"])) == 0
