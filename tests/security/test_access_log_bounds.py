"""Finding 4: access logs were accepted without a token and grew the control plane without bound.

The attack: 300k fake entries with unique service names took the control plane from 110 to
637 MB and made ``/stats`` big and slow. Against a real control plane and real sidecars:

* a stream without a credential is refused (and changes nothing), while the sidecars' own
  streams (the token comes from their bootstrap's xDS cluster) keep feeding the stats;
* a valid credential for one service cannot report another's traffic: entries for another
  node, or for another service's side of a request, are dropped and counted;
* a flood of unique services, edges, paths and request ids from a valid credential leaves
  every index of the intake within its documented bound (TelemetryLimits), and the API answers.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from meshline.core.errors import NotFound
from meshline.telemetry import tags as t
from meshline.testing.mesh import wait_until
from tests.security.world import World, bearer, secured_world

pytestmark = pytest.mark.e2e


def entry(direction: str, source: str, destination: str, path: str, rid: str, ms: int = 5) -> accesslog_pb2.HTTPAccessLogEntry:
    e = accesslog_pb2.HTTPAccessLogEntry()
    e.common_properties.start_time.GetCurrentTime()
    e.common_properties.duration.FromMilliseconds(ms)
    tags = {t.T_DIRECTION: direction, t.T_DESTINATION: destination}
    tags[t.T_SOURCE if direction == "outbound" else t.T_SOURCE_HEADER] = source
    e.common_properties.custom_tags.update(tags)
    e.request.request_method = base_pb2.GET
    e.request.path = path
    e.request.request_id = rid
    e.response.response_code.value = 200
    return e


def message(node: str | None, entries: list[accesslog_pb2.HTTPAccessLogEntry]) -> als_pb2.StreamAccessLogsMessage:
    msg = als_pb2.StreamAccessLogsMessage()
    if node is not None:
        msg.identifier.node.id = node
        msg.identifier.log_name = "attack"
    msg.http_logs.log_entry.extend(entries)
    return msg


def stream(world: World, messages: list[als_pb2.StreamAccessLogsMessage], token: str | None = None) -> None:
    with world.channel() as channel:
        als_pb2_grpc.AccessLogServiceStub(channel).StreamAccessLogs(
            iter(messages), metadata=bearer(token) if token else (), timeout=60
        )


def stats(world: World, **params: str) -> dict[str, Any]:
    return dict(world.harness.api.get("/api/v1/meshes/default/stats", params=params))


def found(world: World, request_id: str) -> bool:
    try:
        world.harness.api.get(f"/api/v1/meshes/default/requests/{request_id}")
    except NotFound:
        return False
    return True


def orders_total(world: World) -> int:
    return sum(int(s["total"]) for s in stats(world)["services"] if s["service"] == "orders")


def sidecar_traffic_is_counted(world: World) -> None:
    """The sidecars' own telemetry still arrives: a success is counted (its sidecar's counters;
    successes are only sampled in the stream) and a failure is streamed and found by its id."""
    before = orders_total(world)
    assert httpx.get(world.web.url("orders") + "/real", timeout=5).status_code == 200
    wait_until(lambda: orders_total(world) > before, 15, what="the sidecars' counters to count the request")
    rid = f"real-{secrets.token_hex(4)}"
    world.app.behaviour.status = 500
    try:
        assert httpx.get(world.web.url("orders") + "/real", headers={"x-request-id": rid}, timeout=5).status_code == 500
    finally:
        world.app.behaviour.status = 200
    wait_until(lambda: found(world, rid), 15, what="the sidecars' own access logs to arrive")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with secured_world(Path(tmp_path_factory.mktemp("als"))) as w:
        yield w


def test_a_stream_without_credentials_is_refused(world: World) -> None:
    forged = [entry("outbound", "web", "orders", "/forged", f"anon-{i}") for i in range(10)]
    for token in (None, "not-a-token"):
        with pytest.raises(grpc.RpcError) as info:
            stream(world, [message("default.web-1", forged)], token)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert not found(world, "anon-0")
    sidecar_traffic_is_counted(world)


def test_a_credential_for_one_service_cannot_report_another(world: World) -> None:
    web = world.token(mesh="default", service="web")
    before = stats(world).get("dropped", {})
    as_orders_node = [entry("inbound", "web", "orders", "/forged", f"node-{i}") for i in range(4)]
    stream(world, [message("default.orders-1", as_orders_node)], web)  # orders' sidecar, not web's
    orders_side = [entry("inbound", "web", "orders", "/forged", f"side-{i}") for i in range(3)]
    orders_side += [entry("outbound", "orders", "payments", "/forged", f"side-out-{i}") for i in range(2)]
    honest = [entry("outbound", "web", "orders", "/honest", f"honest-{i}") for i in range(2)]
    stream(world, [message("default.web-1", orders_side + honest)], web)
    unnamed = [entry("outbound", "web", "orders", "/forged", f"unnamed-{i}") for i in range(2)]
    stream(world, [message(None, unnamed)], web)  # no node named: nothing to check them against

    wait_until(lambda: found(world, "honest-1"), 10, what="web's own entries")
    dropped = stats(world).get("dropped", {})
    assert dropped.get("not-its-node", 0) - before.get("not-its-node", 0) == 4
    assert dropped.get("not-its-service", 0) - before.get("not-its-service", 0) == 5
    for rid in ("node-0", "side-0", "side-out-0", "unnamed-0"):
        assert not found(world, rid)
    assert all(p["path"] != "/forged" for p in stats(world, paths="1000")["paths"])


def test_a_flood_of_unique_services_stays_within_the_bounds(world: World) -> None:
    from meshline.telemetry.intake import TelemetryLimits
    from meshline.telemetry.record import MAX_TEXT

    web = world.token(mesh="default", service="web")
    limits = TelemetryLimits()
    n, batch = 30_000, 1_000
    long_path = "/" + "x" * 3000

    def flood() -> None:
        for start in range(0, n, batch):
            entries = [entry("outbound", "web", f"svc-{i}", f"{long_path}/{i}", f"flood-{i}", ms=1 + i % 500)
                       for i in range(start, start + batch)]
            stream(world, [message("default.web-1", entries)], web)

    sender = threading.Thread(target=flood)
    sender.start()
    answered = 0
    try:
        while sender.is_alive():  # the API keeps answering while entries pour in
            assert httpx.get(world.harness.api_url + "/api/v1/health", timeout=5).status_code == 200
            answered += 1
            sender.join(0.2)
    finally:
        sender.join(120)
    assert answered > 0

    def took_all() -> dict[str, int] | None:
        sizes: dict[str, int] = world.on_loop(lambda cp: cp.ctx.services["telemetry"].sizes("default"))
        return sizes if found(world, f"flood-{n - 1}") else None

    sizes = wait_until(took_all, 30, what="the flood to be ingested")
    assert sizes is not None
    assert sizes["services"] <= limits.services and sizes["edges"] <= limits.edges
    assert sizes["paths"] <= limits.paths and sizes["cells"] <= limits.cells
    assert sizes["edgeProtocols"] <= limits.edges and sizes["edgeTls"] <= limits.edges
    assert sizes["records"] <= limits.records and sizes["recordBytes"] <= limits.record_bytes
    assert sizes["requestIds"] <= limits.records and sizes["pending"] <= limits.pending
    data = stats(world, paths="1000")
    assert len(data["services"]) <= limits.services and len(data["edges"]) <= limits.edges
    assert data["evicted"] >= n - limits.services  # the least recently updated keys made room
    assert all(len(p["path"]) <= MAX_TEXT for p in data["paths"])
    assert not found(world, "flood-0")  # the oldest entries went first
    sidecar_traffic_is_counted(world)  # and real traffic still comes in
