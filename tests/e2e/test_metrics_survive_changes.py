"""Destination-side counters survive inbound policy changes (issue 11, item 9): a no-op
FaultInjection on an HTTP service and a TrafficPermission that adds RBAC to a TCP inbound
replace those listeners in the callee's Envoy, and the counters go on from where they were,
in Envoy's own /stats/prometheus, in the agent's /metrics and in a real Prometheus scraping it
(no counter reset). Only a sidecar restart may reset them."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from meshline.agent.metrics import parse
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import HttpTestServer, TcpEchoServer, tcp_exchange
from tests.e2e.test_metrics_prometheus import Prometheus, prometheus_binary

NOOP_FAULT = """kind: FaultInjection
mesh: default
name: orders-noop
spec:
  destinations: [{match: {service: orders}}]
  conf: {faults: [{abort: {percentage: 0, httpStatus: 500}}]}
"""
TCP_DENY = """kind: TrafficPermission
mesh: default
name: nobody-to-db
spec:
  sources: [{match: {service: nobody}}]
  destinations: [{match: {service: db}}]
  action: deny
"""


def envoy_requests(sc: Sidecar) -> float:
    """orders' own count of the requests it received, from Envoy's /stats/prometheus."""
    fams = parse(sc.admin("/stats/prometheus").text)
    fam = fams.get("envoy_meshline_requests")
    return sum(s.value for s in fam.samples if s.labels.get("reporter") == "destination") if fam else 0.0


def agent_series(mesh: MeshHarness, sc: Sidecar, family: str) -> float:
    port = mesh.api.get(f"/api/v1/meshes/default/dataplanes/{sc.name}")["spec"]["metrics"]["port"]
    fams = parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
    fam = fams.get(family)
    return sum(s.value for s in fam.samples if s.labels.get("reporter") == "destination") if fam else 0.0


def listener_version(sc: Sidecar, name_prefix: str) -> str:
    """The inbound listener Envoy runs (its config and when it got it)."""
    dump = sc.admin("/config_dump?resource=dynamic_listeners").json()
    return json.dumps(next(c["active_state"] for c in dump["configs"] if c["name"].startswith(name_prefix)))


def draining(sc: Sidecar) -> int:
    gauges = sc.stats("listener_manager.total_filter_chains_draining")
    return gauges.get("listener_manager.total_filter_chains_draining", -1)


def test_destination_counters_survive_inbound_policy_changes(tmp_path: Path) -> None:
    assert prometheus_binary()
    with HttpTestServer("orders-1") as app, TcpEchoServer("db-1") as db_app, MeshHarness(
            tmp_path / "mesh", mtls="strict", mesh_spec={"defaultPermission": "allow"}) as mesh:
        orders = mesh.sidecar("orders", app.port)
        db = mesh.sidecar("db", db_app.port, protocol="tcp")
        web = mesh.sidecar("web", 1, upstreams=["orders", "db"])
        mesh.wait_in_sync()
        prom = Prometheus(tmp_path / "prometheus", mesh.api_url, "unused: authentication is off")
        try:
            with httpx.Client(timeout=5) as client:
                for _ in range(5):
                    assert client.get(web.url("orders") + "/").status_code == 200
            for _ in range(3):
                assert tcp_exchange(web.port("db")) == b"db-1:hello\n"
            wait_until(lambda: envoy_requests(orders) == 5, 10, what="orders' Envoy to count 5 requests")
            wait_until(lambda: agent_series(mesh, db, "meshline_tcp_connections_opened_total") == 3, 10,
                       what="db's agent to count 3 connections")
            query = 'sum(meshline_requests_total{reporter="destination",destination_service="orders"})'
            wait_until(lambda: prom.scalar(query) == 5, 20, what="Prometheus to scrape orders' 5 requests")

            inbound = listener_version(orders, "inbound"), listener_version(db, "inbound")
            mesh.apply(NOOP_FAULT)
            mesh.apply(TCP_DENY)
            mesh.wait_in_sync()
            wait_until(lambda: listener_version(orders, "inbound") != inbound[0]
                       and listener_version(db, "inbound") != inbound[1], 10, what="both inbound listeners replaced")
            # the old filter chains are drained and gone (nothing left holding their stats)
            for sc in (orders, db):
                wait_until(lambda sc=sc: draining(sc) == 0, 20, what=f"{sc.name}'s old filter chains to be gone")

            assert envoy_requests(orders) == 5  # not gone, not reset
            assert agent_series(mesh, orders, "meshline_requests_total") == 5
            with httpx.Client(timeout=5) as client:
                for _ in range(2):
                    assert client.get(web.url("orders") + "/").status_code == 200
            assert tcp_exchange(web.port("db")) == b"db-1:hello\n"
            wait_until(lambda: envoy_requests(orders) == 7, 10, what="orders' Envoy to count on: 7")
            wait_until(lambda: agent_series(mesh, db, "meshline_tcp_connections_opened_total") == 4, 10,
                       what="db's agent to count on: 4 connections")
            wait_until(lambda: prom.scalar(query) == 7, 20, what="Prometheus to see 7")
            resets = prom.scalar('sum(resets(meshline_requests_total{reporter="destination"}[10m]))')
            assert resets == 0, "a destination counter was reset by a policy change"
        finally:
            prom.close()
