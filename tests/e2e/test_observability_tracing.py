"""Tracing with real Envoys: a request web -> orders -> inventory yields one span per sidecar
side (four), correctly parented, received by an OTLP/gRPC collector written here; W3C
traceparent is continued or generated; an unreachable collector does not break traffic;
an invalid sampling rate is refused at apply time. B3: the OpenTelemetry tracer ignores it
(measured here), the Zipkin collector option continues B3 traces and sends both formats."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from meshline.core.errors import ValidationError
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import HttpTestServer, free_port

pytestmark = pytest.mark.e2e

CLIENT, SERVER = trace_pb2.Span.SPAN_KIND_CLIENT, trace_pb2.Span.SPAN_KIND_SERVER


class OtlpReceiver:
    """An OTLP/gRPC trace collector: keeps (service.name, span) for every exported span."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[tuple[str, trace_pb2.Span]] = []
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None

    def _export(self, request: trace_service_pb2.ExportTraceServiceRequest,
                context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for rs in request.resource_spans:
                service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
                # xds-protos bundles pre-1.0 OTLP: scope_spans is still called instrumentation_library_spans
                for scope in rs.instrumentation_library_spans:
                    self.spans.extend((service, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[tuple[str, trace_pb2.Span]]:
        with self._lock:
            return [(s, span) for s, span in self.spans if span.trace_id.hex() == trace_id]

    def __enter__(self) -> OtlpReceiver:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {"Export": grpc.unary_unary_rpc_method_handler(
                self._export,
                request_deserializer=trace_service_pb2.ExportTraceServiceRequest.FromString,
                response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
            )},
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop(0).wait(5)


class ForwardingApp(HttpTestServer):
    """The orders app: calls inventory through its own sidecar, passing the trace context on."""

    target = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("traceparent", "tracestate")}
        self.requests.append({"path": request.path, "headers": dict(request.headers)})
        async with httpx.AsyncClient(timeout=5) as client:
            resp = await client.get(self.target + request.path, headers=headers)
        return web.json_response({"instance": self.name, "inventory": resp.status_code}, status=resp.status_code)


class ZipkinReceiver(HttpTestServer):
    """A Zipkin v2 collector: POST /api/v2/spans with a JSON list of spans."""

    spans: list[dict[str, Any]]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and request.path == "/api/v2/spans":
            self.spans.extend(await request.json())
        return web.Response(status=202)


def attrs(span: trace_pb2.Span) -> dict[str, str]:
    return {a.key: a.value.string_value for a in span.attributes}


@pytest.fixture(scope="module")
def traced() -> Iterator[dict[str, Any]]:
    import tempfile
    from pathlib import Path

    with OtlpReceiver() as receiver, HttpTestServer("inventory-1") as inventory_app, \
            ForwardingApp("orders-1") as orders_app, HttpTestServer("web-1") as web_app, \
            tempfile.TemporaryDirectory() as tmp:
        spec = {"tracing": {"otlp": f"127.0.0.1:{receiver.port}", "sampling": 100}}
        with MeshHarness(Path(tmp), mesh_spec=spec) as mesh:
            mesh.sidecar("inventory", inventory_app.port, tags={"version": "v3"})
            orders = mesh.sidecar("orders", orders_app.port, tags={"version": "v1"}, upstreams=["inventory"])
            orders_app.target = orders.url("inventory")
            web_sc = mesh.sidecar("web", web_app.port, upstreams=["orders"])
            mesh.wait_in_sync()
            yield {"mesh": mesh, "web": web_sc, "receiver": receiver, "orders_app": orders_app}


def test_two_hops_make_four_parented_spans(traced: dict[str, Any]) -> None:
    web_sc: Sidecar = traced["web"]
    receiver: OtlpReceiver = traced["receiver"]
    trace_id, root = secrets.token_hex(16), secrets.token_hex(8)
    resp = httpx.get(web_sc.url("orders") + "/checkout", headers={"traceparent": f"00-{trace_id}-{root}-01"}, timeout=10)
    assert resp.status_code == 200 and resp.json()["inventory"] == 200

    spans = wait_until(lambda: receiver.of_trace(trace_id) if len(receiver.of_trace(trace_id)) >= 4 else None,
                       20, what="four spans of the trace at the collector")
    assert spans is not None and len(spans) == 4
    by_side = {(service, span.kind): span for service, span in spans}
    assert set(by_side) == {("web", CLIENT), ("orders", SERVER), ("orders", CLIENT), ("inventory", SERVER)}
    web_out, orders_in = by_side["web", CLIENT], by_side["orders", SERVER]
    orders_out, inventory_in = by_side["orders", CLIENT], by_side["inventory", SERVER]
    assert web_out.parent_span_id.hex() == root  # continues the caller's trace
    assert orders_in.parent_span_id == web_out.span_id
    assert orders_out.parent_span_id == orders_in.span_id  # the app passed traceparent on
    assert inventory_in.parent_span_id == orders_out.span_id
    assert attrs(web_out)["meshline.peer"] == "orders"
    # no mTLS in this mesh: the callee knows the caller only by the header its sidecar wrote
    assert attrs(orders_in)["meshline.source_claimed"] == "web" and attrs(orders_in).get("meshline.peer") in (None, "", "-")
    assert attrs(inventory_in)["meshline.version"] == "v3" and attrs(orders_in)["meshline.version"] == "v1"
    assert attrs(inventory_in)["http.status_code"] == "200"

    # The access logs of all four sides carry the trace id: `meshline explain <trace id>` finds them.
    def logged() -> Any:
        data = traced["mesh"].api.get(f"/api/v1/meshes/default/requests/{trace_id}")
        return data if len(data["records"]) == 4 else None

    records = wait_until(logged, 10, what="the four access-log entries of the trace")["records"]
    assert sorted((r["direction"], r["destination"]) for r in records) == [
        ("inbound", "inventory"), ("inbound", "orders"), ("outbound", "inventory"), ("outbound", "orders")]


def test_a_trace_starts_when_the_caller_sends_none(traced: dict[str, Any]) -> None:
    resp = httpx.get(traced["web"].url("orders") + "/fresh", timeout=10)
    assert resp.status_code == 200
    seen = traced["orders_app"].requests[-1]["headers"]
    traceparent = next(v for k, v in seen.items() if k.lower() == "traceparent")
    version, trace_id, parent, flags = traceparent.split("-")
    assert (version, flags, len(trace_id), len(parent)) == ("00", "01", 32, 16)
    receiver: OtlpReceiver = traced["receiver"]
    spans = wait_until(lambda: receiver.of_trace(trace_id) if len(receiver.of_trace(trace_id)) >= 4 else None,
                       20, what="the spans of the generated trace")
    assert spans is not None
    web_out = next(span for service, span in spans if service == "web")
    assert web_out.parent_span_id == b""  # the first sidecar started the trace


def _header(seen: dict[str, str], name: str) -> str:
    return next((v for k, v in seen.items() if k.lower() == name), "")


B3_TRACE, B3_SPAN = "463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312"
B3 = {"x-b3-traceid": B3_TRACE, "x-b3-spanid": B3_SPAN, "x-b3-sampled": "1"}


def test_the_opentelemetry_tracer_does_not_read_b3(traced: dict[str, Any]) -> None:
    """Envoy 1.40's OpenTelemetry tracer knows only W3C: a B3-only request starts a new trace,
    and the B3 headers pass through untouched (so B3 apps still see their own context)."""
    assert httpx.get(traced["web"].url("orders") + "/b3", headers=B3, timeout=10).status_code == 200
    seen = traced["orders_app"].requests[-1]["headers"]
    assert _header(seen, "x-b3-traceid") == B3_TRACE and _header(seen, "x-b3-spanid") == B3_SPAN
    assert _header(seen, "traceparent").split("-")[1] != B3_TRACE


def test_an_invalid_sampling_rate_is_refused(traced: dict[str, Any]) -> None:
    mesh: MeshHarness = traced["mesh"]
    before = mesh.api.get("/api/v1/meshes/default")["spec"]
    with pytest.raises(ValidationError) as info:
        mesh.apply([{"kind": "Mesh", "name": "default",
                     "spec": {**before, "tracing": {"otlp": "127.0.0.1:4317", "sampling": 150}}}])
    assert [p.path for p in info.value.problems] == ["document 1 (Mesh default): spec.tracing.sampling"]
    assert mesh.api.get("/api/v1/meshes/default")["spec"] == before  # nothing changed


def test_an_unreachable_collector_does_not_break_traffic(traced: dict[str, Any]) -> None:
    mesh: MeshHarness = traced["mesh"]
    spec = mesh.api.get("/api/v1/meshes/default")["spec"]
    dead = free_port()  # nothing listens there
    mesh.api.put({"kind": "Mesh", "name": "default", "spec": {**spec, "tracing": {"otlp": f"127.0.0.1:{dead}"}}})
    mesh.wait_in_sync()
    with httpx.Client(base_url=traced["web"].url("orders"), timeout=10) as client:
        statuses = [client.get(f"/dead-collector/{i}").status_code for i in range(30)]
    assert statuses == [200] * 30
    config = mesh.api.get("/api/v1/meshes/default/dataplanes/web-1/inspect")["config"]
    clusters = {c["name"]: c for c in config["Cluster"]}
    address = clusters["meshline_tracing"]["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]
    assert address["address"]["socketAddress"]["portValue"] == dead  # really tracing to the dead port


def test_zipkin_continues_b3_traces_and_sends_both_formats(traced: dict[str, Any]) -> None:
    mesh: MeshHarness = traced["mesh"]
    with ZipkinReceiver("zipkin") as zipkin:
        zipkin.spans = []
        spec = mesh.api.get("/api/v1/meshes/default")["spec"]
        mesh.api.put({"kind": "Mesh", "name": "default",
                      "spec": {**spec, "tracing": {"zipkin": f"127.0.0.1:{zipkin.port}"}}})
        mesh.wait_in_sync()

        # Keep-alive connections opened under the old settings finish on them (they drain
        # within the agent's drain time), so look for a trace that went through new ones.
        sent: dict[str, dict[str, Any]] = {}  # trace id -> the headers the app saw

        def complete_trace() -> tuple[str, list[dict[str, Any]]] | None:
            trace = secrets.token_hex(16)
            headers = {"x-b3-traceid": trace, "x-b3-spanid": B3_SPAN, "x-b3-sampled": "1"}
            assert httpx.get(traced["web"].url("orders") + "/b3-zipkin", headers=headers, timeout=10).status_code == 200
            sent[trace] = traced["orders_app"].requests[-1]["headers"]
            for t in sent:
                found = [x for x in list(zipkin.spans) if x.get("traceId") == t]
                if len(found) >= 4:
                    return t, found
            return None

        done = wait_until(complete_trace, 30, interval=0.5, what="a B3 trace with spans from all four sides")
        assert done is not None
        trace, found = done
        assert _header(sent[trace], "x-b3-traceid") == trace  # B3 continued...
        assert _header(sent[trace], "traceparent").split("-")[1] == trace  # ...and the same trace as W3C
        assert sorted((x["localEndpoint"]["serviceName"], x["kind"]) for x in found) == [
            ("inventory", "SERVER"), ("orders", "CLIENT"), ("orders", "SERVER"), ("web", "CLIENT")]
        web_out = next(x for x in found if x["localEndpoint"]["serviceName"] == "web")
        orders_in = next(x for x in found if x["kind"] == "SERVER" and x["localEndpoint"]["serviceName"] == "orders")
        assert web_out["parentId"] == B3_SPAN and orders_in["parentId"] == web_out["id"]
