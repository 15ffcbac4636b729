"""With ``sampling`` below 100, an incoming sampled trace context is kept and traced by every
sidecar, for every tracer (issue 11, item 16): the caller's sidecar never turns the W3C flag
``-01`` into ``-00``, and each of 20 sampled requests leaves its spans at the collector. A
context the caller did not sample stays unsampled; requests without one start a trace at the
configured rate."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshline.testing.mesh import MeshHarness, wait_until
from meshline.testing.servers import HttpTestServer
from tests.e2e.test_observability_tracing import ForwardingApp, OtlpReceiver, ZipkinReceiver, _header

pytestmark = pytest.mark.e2e

COUNT = 20
SAMPLING = 10


@pytest.fixture(scope="module")
def sampled_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("sampling")
    with OtlpReceiver() as receiver, HttpTestServer("inventory-1") as inventory_app, \
            ForwardingApp("orders-1") as orders_app:
        spec = {"tracing": {"otlp": f"127.0.0.1:{receiver.port}", "sampling": SAMPLING}}
        with MeshHarness(Path(tmp), mesh_spec=spec) as mesh:
            mesh.sidecar("inventory", inventory_app.port)
            orders = mesh.sidecar("orders", orders_app.port, upstreams=["inventory"])
            orders_app.target = orders.url("inventory")
            web = mesh.sidecar("web", 1, upstreams=["orders"])
            mesh.wait_in_sync()
            yield {"mesh": mesh, "web": web, "receiver": receiver, "orders_app": orders_app}


def _get(url: str, headers: dict[str, str]) -> None:
    assert httpx.get(url, headers=headers, timeout=10).status_code == 200


def test_otlp_keeps_and_traces_every_sampled_context(sampled_mesh: dict[str, Any]) -> None:
    web, receiver, orders_app = sampled_mesh["web"], sampled_mesh["receiver"], sampled_mesh["orders_app"]
    traces, flags = [], []
    for i in range(COUNT):
        trace = secrets.token_hex(16)
        traces.append(trace)
        _get(web.url("orders") + f"/sampled/{i}", {"traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"})
        flags.append(_header(orders_app.requests[-1]["headers"], "traceparent").rsplit("-", 1)[1])
    assert flags == ["01"] * COUNT  # the caller's sidecar kept the caller's decision

    def all_traced() -> bool:
        return all(len(receiver.of_trace(t)) >= 4 for t in traces)  # web out, orders in/out, inventory in

    try:
        wait_until(all_traced, 30, interval=0.2, what=f"the spans of all {COUNT} sampled traces")
    except TimeoutError:
        done = sum(len(receiver.of_trace(t)) >= 4 for t in traces)
        raise AssertionError(f"only {done} of {COUNT} sampled traces reached the collector") from None


def test_otlp_keeps_an_unsampled_context_unsampled(sampled_mesh: dict[str, Any]) -> None:
    web, orders_app = sampled_mesh["web"], sampled_mesh["orders_app"]
    flags = []
    for i in range(COUNT):
        _get(web.url("orders") + f"/unsampled/{i}",
             {"traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"})
        flags.append(_header(orders_app.requests[-1]["headers"], "traceparent").rsplit("-", 1)[1])
    assert flags == ["00"] * COUNT


def test_new_traces_start_at_the_sampling_rate(sampled_mesh: dict[str, Any]) -> None:
    web, orders_app = sampled_mesh["web"], sampled_mesh["orders_app"]
    flags = []
    for i in range(60):
        _get(web.url("orders") + f"/fresh/{i}", {})
        flags.append(_header(orders_app.requests[-1]["headers"], "traceparent").rsplit("-", 1)[1])
    # 10%: about 6 of 60; all 60 (what sampling 100 gives) has a chance of 1e-60
    assert flags.count("00") > 0 and set(flags) <= {"00", "01"}


def test_zipkin_keeps_and_traces_every_sampled_context(sampled_mesh: dict[str, Any]) -> None:
    mesh: MeshHarness = sampled_mesh["mesh"]
    web, orders_app = sampled_mesh["web"], sampled_mesh["orders_app"]
    with ZipkinReceiver("zipkin") as zipkin:
        zipkin.spans = []
        spec = mesh.api.get("/api/v1/meshes/default")["spec"]
        mesh.api.put({"kind": "Mesh", "name": "default",
                      "spec": {**spec, "tracing": {"zipkin": f"127.0.0.1:{zipkin.port}", "sampling": SAMPLING}}})
        mesh.wait_in_sync()
        # keep-alive connections opened under the OTLP settings drain first
        wait_until(lambda: all("zipkin" in sc.admin("/config_dump?resource=dynamic_listeners").text
                               and sc.stats("listener_manager.total_filter_chains_draining").get(
                                   "listener_manager.total_filter_chains_draining") == 0
                               for sc in mesh.sidecars), 20, what="every sidecar on the Zipkin tracer")
        traces, flags = [], []
        for i in range(COUNT):
            trace = secrets.token_hex(16)
            traces.append(trace)
            if i % 2:
                headers = {"x-b3-traceid": trace, "x-b3-spanid": secrets.token_hex(8), "x-b3-sampled": "1"}
            else:
                headers = {"traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"}
            _get(web.url("orders") + f"/zipkin/{i}", headers)
            seen = orders_app.requests[-1]["headers"]
            flags.append((_header(seen, "x-b3-sampled"), _header(seen, "traceparent").rsplit("-", 1)[-1]))
        assert flags == [("1", "01")] * COUNT

        def all_traced() -> bool:
            return all(len([s for s in list(zipkin.spans) if s.get("traceId") == t]) >= 4 for t in traces)

        wait_until(all_traced, 30, interval=0.2, what=f"the spans of all {COUNT} sampled traces at Zipkin")
