"""Golden files for the telemetry render step (access loggers, tracing, source header,
policy metadata), each also accepted by the real Envoy (``--mode validate``).

UPDATE_GOLDEN=1 rewrites the golden files; review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.config.trace.v3 import opentelemetry_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from meshline.policies import plugins
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.render import RenderResult, render
from meshline.telemetry import render_step
from meshline.testing.golden import load_resources, to_yaml
from meshline.testing.policy_kit import envoy_accepts as kit_envoy_accepts
from meshline.xds import names
from meshline.xds.snapshot import CLUSTER, LISTENER, ROUTE

HERE = Path(__file__).parent
CASES: dict[str, dict[str, Any]] = yaml.safe_load((HERE / "cases.yaml").read_text())
DATAPLANES = ["web-1", "orders-v1", "payments-1"]


def rendered(case: str, dataplane: str) -> RenderResult:
    spec = CASES[case]
    docs = (HERE / "mesh.input.yaml").read_text() + "\n---\n" + spec.get("policies", "")
    resources = load_resources(docs)
    mesh = load_resources(yaml.safe_dump({"kind": "Mesh", "name": "default", "spec": spec["mesh"]}))[0]
    snapshot = MeshSnapshot.build(mesh, resources, revision=1)
    return render(snapshot.dataplanes[dataplane], snapshot, [*plugins(), render_step.PLUGIN])


def envoy_accepts(result: RenderResult, work: Path) -> None:
    # Envoy refuses a listener whose access-log file it cannot open: the directory must exist.
    Path("/tmp/meshline-telemetry-golden/default").mkdir(parents=True, exist_ok=True)
    kit_envoy_accepts(result, work)


@pytest.mark.parametrize("dataplane", DATAPLANES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str, dataplane: str, tmp_path: Path) -> None:
    result = rendered(case, dataplane)
    golden = HERE / "golden" / f"{case}.{dataplane}.golden.yaml"
    actual = to_yaml(result)
    if os.environ.get("UPDATE_GOLDEN") == "1" or not golden.exists():
        golden.write_text(actual)
        assert os.environ.get("UPDATE_GOLDEN") == "1", f"{golden} did not exist; wrote it. Review it and re-run."
    assert actual == golden.read_text(), f"{golden} differs; if intended, re-run with UPDATE_GOLDEN=1 and review"
    envoy_accepts(result, tmp_path)


def _unpacked(result: RenderResult, type_url: str, name: str, cls: type) -> Any:
    msg = cls()
    result.snapshot.slots[type_url].resources[name].any.Unpack(msg)
    return msg


def _hcm(result: RenderResult, listener: str) -> hcm_pb2.HttpConnectionManager:
    lst = _unpacked(result, LISTENER, listener, listener_pb2.Listener)
    h = hcm_pb2.HttpConnectionManager()
    lst.filter_chains[0].filters[-1].typed_config.Unpack(h)
    return h


def test_every_http_side_streams_its_log_and_traces() -> None:
    web = rendered("file-and-tracing", "web-1")
    for listener in ("outbound_15001", "inbound_18080"):
        h = _hcm(web, listener)
        assert [a.name for a in h.access_log] == ["envoy.access_loggers.http_grpc", "envoy.access_loggers.file"]
        assert h.tracing.provider.name == "envoy.tracers.opentelemetry"
        # the connection manager samples all; the tracer's parent-based sampler starts 10% of new traces
        assert h.tracing.random_sampling.value == 100
        otel = opentelemetry_pb2.OpenTelemetryConfig()
        h.tracing.provider.typed_config.Unpack(otel)
        assert otel.sampler.name == "envoy.tracers.opentelemetry.samplers.parent_based"
    assert names.TRACING_CLUSTER in web.snapshot.slots[CLUSTER].resources


def test_the_caller_names_itself_and_policies_travel_in_metadata() -> None:
    web = rendered("file-and-tracing", "web-1")
    rc = _unpacked(web, ROUTE, "outbound_15001", route_pb2.RouteConfiguration)
    assert [(h.header.key, h.header.value) for h in rc.request_headers_to_add] == [("x-meshline-source", "web")]
    meta = rc.virtual_hosts[0].routes[0].metadata.filter_metadata["meshline"]
    assert meta["policies"] == "Timeout/orders-timeouts" and meta["timeoutMs"] == "2000"
    orders = _unpacked(web, CLUSTER, "orders", cluster_pb2.Cluster)
    assert orders.metadata.filter_metadata["meshline"]["policies"] == "Timeout/orders-timeouts"


def test_logging_off_adds_no_logger() -> None:
    web = rendered("logging-off", "web-1")
    assert not _hcm(web, "outbound_15001").access_log
    assert not _hcm(web, "outbound_15001").HasField("tracing")


ROUTE_FOR_ORDERS = """
kind: HTTPRoute
mesh: default
name: orders-canary
spec:
  destinations: [{match: {service: orders}}]
  rules:
  - matches: [{headers: [{name: x-canary, exact: "1"}]}]
    timeout: 3s
"""


def test_a_route_change_leaves_the_callers_clusters_alone() -> None:
    # The route names every policy (what a request's log reports); clusters only cluster-level
    # ones, so adding an HTTPRoute re-pushes routes, not every caller's clusters.
    CASES["with-route"] = {**CASES["file-and-tracing"],
                           "policies": CASES["file-and-tracing"]["policies"] + "\n---\n" + ROUTE_FOR_ORDERS}  # fmt: skip
    try:
        before, after = rendered("file-and-tracing", "web-1"), rendered("with-route", "web-1")
    finally:
        del CASES["with-route"]
    assert after.snapshot.version(CLUSTER) == before.snapshot.version(CLUSTER)
    assert after.snapshot.version(ROUTE) != before.snapshot.version(ROUTE)
    rc = _unpacked(after, ROUTE, "outbound_15001", route_pb2.RouteConfiguration)
    assert {r.metadata.filter_metadata["meshline"]["policies"] for r in rc.virtual_hosts[0].routes} == {
        "HTTPRoute/orders-canary,Timeout/orders-timeouts"
    }
    orders = _unpacked(after, CLUSTER, "orders", cluster_pb2.Cluster)
    assert orders.metadata.filter_metadata["meshline"]["policies"] == "Timeout/orders-timeouts"
