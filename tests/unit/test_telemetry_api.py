"""The intake through its real doors, without Envoy: entries sent to the control plane's gRPC
AccessLogService come out of the stats, tap and explain API and the CLI commands."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from click.testing import CliRunner
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from meshline.cli.main import cli
from meshline.telemetry import tags as t
from meshline.testing.mesh import MeshHarness, wait_until

DATAPLANES = """
kind: Dataplane
mesh: default
name: web-1
spec: {address: 127.0.0.1, inbound: [{port: 18080, servicePort: 8080, tags: {service: web, protocol: http}}],
       outbound: [{port: 15001, service: orders}]}
---
kind: Dataplane
mesh: default
name: orders-1
spec: {address: 127.0.0.1, inbound: [{port: 18081, servicePort: 8081, tags: {service: orders, protocol: http}}]}
"""


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MeshHarness]:
    with MeshHarness(tmp_path) as harness:
        harness.apply(DATAPLANES)
        cp = harness.control_plane
        assert cp is not None

        def rendered() -> bool:  # explanations read the reconciler's view: let it catch up first
            snap = cp.call(lambda: cp.cp.ctx.results.snapshot("default"))
            return snap is not None and "orders-1" in snap.dataplanes

        wait_until(rendered, 10, what="the reconciler to see the dataplanes")
        yield harness


def entry(path: str, status: int, rid: str, direction: str = "outbound", **extra: Any) -> accesslog_pb2.HTTPAccessLogEntry:
    e = accesslog_pb2.HTTPAccessLogEntry()
    e.common_properties.start_time.GetCurrentTime()
    e.common_properties.duration.FromMilliseconds(extra.pop("ms", 12))
    tags = {t.T_DIRECTION: direction, t.T_DESTINATION: "orders", t.T_SECTION: f"{direction} orders"}
    tags[t.T_SOURCE if direction == "outbound" else t.T_SOURCE_HEADER] = "web"
    e.common_properties.custom_tags.update(tags)
    e.request.request_method = base_pb2.GET
    e.request.path = path
    e.request.request_id = rid
    e.response.response_code.value = status
    e.response.response_code_details = extra.pop("details", "via_upstream")
    if extra.pop("uh", False):
        e.common_properties.response_flags.no_healthy_upstream = True
    return e


def send(mesh: MeshHarness, node: str, entries: list[accesslog_pb2.HTTPAccessLogEntry]) -> None:
    msg = als_pb2.StreamAccessLogsMessage()
    msg.identifier.node.id = node
    msg.identifier.log_name = "test"
    msg.http_logs.log_entry.extend(entries)
    with grpc.insecure_channel(f"127.0.0.1:{mesh.xds_port}") as channel:
        als_pb2_grpc.AccessLogServiceStub(channel).StreamAccessLogs(iter([msg]), timeout=10)


NO_HEALTHY = ("no healthy instance of orders (1 online, but the caller's sidecar had none healthy:"
              " not told yet, or failing checks)")


def stats(mesh: MeshHarness, **params: str) -> dict[str, Any]:
    return dict(mesh.api.get("/api/v1/meshes/default/stats", params=params))


def run_cli(mesh: MeshHarness, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--api", mesh.api_url, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_streamed_entries_become_stats_and_explanations(mesh: MeshHarness) -> None:
    send(mesh, "default.web-1", [entry("/ok", 200, f"ok-{i}") for i in range(8)]
         + [entry("/down", 503, "uh-1", uh=True, details="no_healthy_upstream")])
    send(mesh, "default.orders-1", [entry("/ok", 200, f"ok-{i}", "inbound") for i in range(8)])
    send(mesh, "default.ghost-1", [entry("/ok", 200, "ghost")])  # not a registered dataplane: dropped

    def counted() -> dict[str, Any] | None:
        s = stats(mesh)
        return s if s["services"] and s["services"][0]["total"] == 9 else None

    data = wait_until(counted, 10, what="9 requests counted")
    assert data is not None
    orders = data["services"][0]
    assert (orders["service"], orders["total"], orders["totalFailures"], orders["requests"]) == ("orders", 9, 1, 9)
    assert [(e["source"], e["destination"], e["mtls"]) for e in data["edges"]] == [("web", "orders", "no")]
    assert data["received"] == 17

    explained = mesh.api.get("/api/v1/meshes/default/requests/uh-1")
    assert explained["explanation"] == NO_HEALTHY
    assert run_cli(mesh, "explain", "uh-1").startswith("uh-1: no healthy instance of orders")

    out = run_cli(mesh, "stat")
    assert "orders" in out and "88.9%" in out
    assert "web -> orders" in run_cli(mesh, "stat", "orders")
    assert "web" in run_cli(mesh, "edges") and "no" in run_cli(mesh, "edges")
    assert "/down" in run_cli(mesh, "top", "--iterations", "1")
    assert json.loads(run_cli(mesh, "stat", "-o", "json"))["services"][0]["total"] == 9


def test_an_unknown_request_is_a_clear_404(mesh: MeshHarness) -> None:
    result = CliRunner().invoke(cli, ["--api", mesh.api_url, "explain", "nope"])
    assert result.exit_code == 1
    assert "no request 'nope' among the last" in str(result.exception) + result.output


def test_tap_streams_matching_requests_as_they_arrive(mesh: MeshHarness) -> None:
    lines: list[dict[str, Any]] = []
    started = threading.Event()

    def tap() -> None:
        params = {"service": "orders", "path": "/api", "status": "5xx"}
        with httpx.stream("GET", f"{mesh.api_url}/api/v1/meshes/default/tap", params=params, timeout=20) as resp:
            for line in resp.iter_lines():
                if not line.strip():
                    continue
                lines.append(json.loads(line))
                started.set()
                if len(lines) == 3:
                    return

    reader = threading.Thread(target=tap, daemon=True)
    reader.start()
    assert started.wait(10)  # the first line confirms the tap is on before anything is sent
    assert lines[0]["tap"]["status"] == "5xx"
    send(mesh, "default.web-1", [entry("/api/a", 200, "t1"), entry("/other", 503, "t2"),
                                  entry("/api/b", 503, "t3", details="upstream_reset_before_response_started"),
                                  entry("/api/c", 502, "t4", uh=True)])
    reader.join(10)
    assert [x["requestId"] for x in lines[1:]] == ["t3", "t4"]
    assert lines[2]["explanation"] == NO_HEALTHY


def test_the_tap_command_prints_lines_with_explanations(mesh: MeshHarness) -> None:
    out: dict[str, str] = {}

    def run() -> None:
        out["text"] = run_cli(mesh, "tap", "orders", "--status", "failed", "--max", "1")

    th = threading.Thread(target=run, daemon=True)
    th.start()

    def tapping() -> bool:
        intake = mesh.control_plane.cp.ctx.services["telemetry"]  # type: ignore[union-attr]
        return bool(intake.subscriptions)

    wait_until(tapping, 10, what="the tap to subscribe")
    send(mesh, "default.web-1", [entry("/fine", 200, "f1"), entry("/x", 503, "f2", uh=True)])
    th.join(10)
    assert "web -> orders" in out["text"] and "GET /x" in out["text"]
    assert "!! no healthy instance of orders" in out["text"]


def test_bad_filters_are_refused_with_the_field(mesh: MeshHarness) -> None:
    resp = httpx.get(f"{mesh.api_url}/api/v1/meshes/default/tap", params={"status": "7xx"}, timeout=5)
    assert resp.status_code == 422 and resp.json()["problems"][0]["path"] == "status"
    resp = httpx.get(f"{mesh.api_url}/api/v1/meshes/default/stats", params={"window": "2h"}, timeout=5)
    assert resp.status_code == 422 and resp.json()["problems"][0]["path"] == "window"


def test_a_replayed_failure_shows_at_once_and_only_once(mesh: MeshHarness) -> None:
    """A failure whose callee's half has not come in is held for the join window before the
    live taps get it; a tap that replays it shows it at once and not again when it is let go."""
    send(mesh, "default.web-1", [entry("/held", 503, "held-1")])  # via the upstream: waits for orders' half
    intake = mesh.control_plane.cp.ctx.services["telemetry"]  # type: ignore[union-attr]
    wait_until(lambda: mesh.control_plane.call(lambda: bool(intake.meshes.get("default")
                                                               and intake.meshes["default"].pending)),
               10, what="the failure to be held for its other half")
    seen: list[float] = []
    began = time.monotonic()
    params = {"service": "orders", "replay": "5", "idle": "3"}
    with httpx.stream("GET", f"{mesh.api_url}/api/v1/meshes/default/tap", params=params, timeout=20) as resp:
        for line in resp.iter_lines():
            if line.strip() and json.loads(line).get("requestId") == "held-1":
                seen.append(time.monotonic() - began)
    assert len(seen) == 1, f"the failure was shown {len(seen)} times (at {seen} s)"
    assert seen[0] < 1.0  # in the replay, not after the join window
