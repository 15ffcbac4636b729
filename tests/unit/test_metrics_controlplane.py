"""The control plane's own metrics: pushes timed until ACKed, NACKs, API requests, and the
Prometheus service discovery document."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from meshline.agent.metrics import parse
from meshline.controlplane.metrics import (
    UNMATCHED_ROUTE,
    ControlPlaneMetrics,
    metrics_text,
    prometheus_targets,
)
from meshline.controlplane.read_model import ReadModel
from meshline.controlplane.results import RenderResults
from meshline.testing.golden import load_resources
from meshline.xds.status import StatusRegistry

NODE = "default.web-1"


class FakeReconciler:
    def __init__(self, resources: list[Any] | None = None) -> None:
        self.listeners: list[Any] = []
        self.model = ReadModel()  # the real read model and results registry, filled by hand
        self.results = RenderResults()
        for r in resources or ():
            self.model.replace(r.key, r)

    def config(self, node: str, **versions: str) -> None:
        self.results.rendered(node, SimpleNamespace(snapshot=SimpleNamespace(versions=lambda: dict(versions))))  # type: ignore[arg-type]


def connected(status: StatusRegistry, node: str, **versions: str) -> None:
    status.connected(node)
    for t, v in versions.items():
        ts = status.get(node).type(t)
        ts.sent = ts.acked = v
        ts.acked_at = time.time()


def ack(status: StatusRegistry, node: str, at: float, **versions: str) -> None:
    for t, v in versions.items():
        ts = status.get(node).type(t)
        ts.sent = ts.acked = v
        ts.acked_at = at


def ctx(reconciler: FakeReconciler, status: StatusRegistry, metrics: ControlPlaneMetrics) -> Any:
    return SimpleNamespace(reconciler=reconciler, model=reconciler.model, results=reconciler.results,
                           status=status, metrics=metrics, services={})


def value(text: str, name: str, **labels: str) -> float:
    return sum(s.value for f in parse(text).values() for s in f.samples
               if s.name == name and labels.items() <= s.labels.items())


def test_push_latency_runs_from_the_change_to_the_last_type_acked() -> None:
    rec, status, m = FakeReconciler(), StatusRegistry(), ControlPlaneMetrics()
    m.watch(rec, status)  # type: ignore[arg-type]
    assert rec.listeners == [m.on_push]
    connected(status, NODE, CDS="c1", LDS="l1", RDS="r1")
    rec.config(NODE, CDS="c2", LDS="l2", RDS="r1")
    changed = time.monotonic() - 0.3  # the store change happened 300 ms ago
    m.on_push("default", [NODE], changed)
    text = m.render(ctx(rec, status, m))
    assert value(text, "meshline_xds_pushes_total", mesh="default") == 1
    assert value(text, "meshline_xds_push_latency_seconds_count") == 0  # not ACKed yet
    now = time.time()
    ack(status, NODE, now + 0.1, CDS="c2")
    assert value(m.render(ctx(rec, status, m)), "meshline_xds_push_latency_seconds_count") == 0  # LDS pending
    ack(status, NODE, now + 0.2, LDS="l2")
    text = m.render(ctx(rec, status, m))
    assert value(text, "meshline_xds_push_latency_seconds_count", mesh="default") == 1
    assert 0.45 <= value(text, "meshline_xds_push_latency_seconds_sum") <= 1.0  # 300 ms + 200 ms (+ test time)
    assert value(text, "meshline_xds_push_latency_seconds_bucket", le="0.25") == 0
    assert value(text, "meshline_xds_push_latency_seconds_bucket", le="1.0") == 1


def test_a_route_the_sidecar_has_not_asked_for_does_not_hold_the_push_open() -> None:
    # A new route config (a new service) changes the RDS version, but the stream sends RDS only
    # when a route it subscribed to changed: the push is complete once the listener is ACKed.
    rec, status, m = FakeReconciler(), StatusRegistry(), ControlPlaneMetrics()
    m.watch(rec, status)  # type: ignore[arg-type]
    connected(status, NODE, LDS="l1", RDS="r1")
    rec.config(NODE, LDS="l2", RDS="r2")
    m.on_push("default", [NODE], time.monotonic())
    ack(status, NODE, time.time(), LDS="l2")  # RDS stays at r1: sent r1, acked r1
    assert value(m.render(ctx(rec, status, m)), "meshline_xds_push_latency_seconds_count") == 1


def test_a_push_superseded_before_its_ack_is_observed_with_the_later_ack() -> None:
    rec, status, m = FakeReconciler(), StatusRegistry(), ControlPlaneMetrics()
    m.watch(rec, status)  # type: ignore[arg-type]
    connected(status, NODE, CDS="c1")
    rec.config(NODE, CDS="c2")
    m.on_push("default", [NODE], time.monotonic())
    rec.config(NODE, CDS="c3")
    m.on_push("default", [NODE], time.monotonic())
    ack(status, NODE, time.time(), CDS="c3")
    text = m.render(ctx(rec, status, m))
    assert value(text, "meshline_xds_pushes_total") == 2
    assert value(text, "meshline_xds_push_latency_seconds_count") == 2  # both changes reached Envoy with c3


def test_first_configs_of_new_sidecars_are_not_push_latency() -> None:
    rec, status, m = FakeReconciler(), StatusRegistry(), ControlPlaneMetrics()
    m.watch(rec, status)  # type: ignore[arg-type]
    rec.config(NODE, CDS="c1")
    m.on_push("default", [NODE], time.monotonic())  # not connected yet: Envoy is still starting
    connected(status, NODE, CDS="c1")
    text = m.render(ctx(rec, status, m))
    assert value(text, "meshline_xds_pushes_total") == 0 and value(text, "meshline_xds_push_latency_seconds_count") == 0


def test_nacks_stay_counted_when_the_dataplane_is_forgotten() -> None:
    rec, status, m = FakeReconciler(load_resources("kind: Mesh\nname: default\n")), StatusRegistry(), ControlPlaneMetrics()
    m.watch(rec, status)  # type: ignore[arg-type]
    assert value(m.render(ctx(rec, status, m)), "meshline_xds_nacks_total", mesh="default") == 0  # present from 0
    status.get(NODE).nacks = 2
    assert value(m.render(ctx(rec, status, m)), "meshline_xds_nacks_total", mesh="default") == 2
    status.forget(NODE)
    status.get(NODE).nacks = 1  # re-registered and rejected once more
    assert value(m.render(ctx(rec, status, m)), "meshline_xds_nacks_total", mesh="default") == 3


def test_api_requests_to_unknown_paths_share_one_label() -> None:
    m = ControlPlaneMetrics()
    m.known_routes = frozenset({"/api/v1/meshes/{mesh}"})
    m.api_request("GET", "/api/v1/meshes/{mesh}", 200, 0.01)
    for i in range(50):
        m.api_request("GET", f"/random/{i}", 404, 0.001)
    text = m.render()
    assert value(text, "meshline_api_requests_total", route="/api/v1/meshes/{mesh}", code="200") == 1
    assert value(text, "meshline_api_requests_total", route=UNMATCHED_ROUTE, code="404") == 50
    assert len(parse(text)["meshline_api_requests_total"].samples) == 2
    assert value(text, "meshline_api_request_duration_seconds_count") == 51


def test_dataplane_gauges_and_extra_series() -> None:
    rec = FakeReconciler(load_resources(DATAPLANES))
    status, m = StatusRegistry(), ControlPlaneMetrics()
    m.watch(rec, status)  # type: ignore[arg-type]
    connected(status, "default.orders-1", CDS="c1")
    rec.results.failed("default.web-1", "boom")
    c = ctx(rec, status, m)
    c.services["metrics_extra"] = lambda: {'meshline_certificate_expiry_timestamp_seconds{mesh="default",dataplane="x"}': 5.0}
    text = metrics_text(c)
    assert value(text, "meshline_dataplanes_connected", mesh="default") == 1
    assert value(text, "meshline_dataplanes", mesh="default", state="in-sync") == 1
    assert value(text, "meshline_dataplanes", mesh="default", state="offline") == 1
    assert value(text, "meshline_dataplane_render_errors", mesh="default") == 1
    assert value(text, "meshline_certificate_expiry_timestamp_seconds", dataplane="x") == 5
    assert parse(text)["meshline_certificate_expiry_timestamp_seconds"].type == "gauge"


DATAPLANES = """
kind: Mesh
name: default
---
kind: Mesh
name: other
---
kind: Dataplane
mesh: default
name: orders-1
spec:
  address: 10.0.0.5
  inbound: [{port: 18080, servicePort: 8080, tags: {service: orders, version: v1, zone: east}}]
  metrics: {port: 19090}
---
kind: Dataplane
mesh: default
name: web-1
spec:
  address: 10.0.0.6
  inbound: [{port: 18080, servicePort: 8080, tags: {service: web}}]
---
kind: Dataplane
mesh: other
name: batch-1
spec:
  address: "::1"
  inbound: [{port: 18080, servicePort: 8080, tags: {service: batch}}]
  metrics: {port: 19091, path: /stats}
"""


def test_prometheus_targets_list_every_dataplane_with_a_metrics_endpoint() -> None:
    rec = FakeReconciler(load_resources(DATAPLANES))
    assert prometheus_targets(rec) == [  # type: ignore[arg-type]
        {"targets": ["10.0.0.5:19090"], "labels": {"__metrics_path__": "/metrics", "mesh": "default",
                                                   "dataplane": "orders-1", "service": "orders", "version": "v1",
                                                   "zone": "east"}},
        {"targets": ["[::1]:19091"], "labels": {"__metrics_path__": "/stats", "mesh": "other",
                                                "dataplane": "batch-1", "service": "batch"}},
    ]
    assert [g["labels"]["dataplane"] for g in prometheus_targets(rec, ["other"])] == ["batch-1"]  # type: ignore[arg-type]
