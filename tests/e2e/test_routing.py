"""Routing end to end: real control plane, real agents and Envoys, real servers on loopback.

One mesh for the module (starting sidecars is the slow part): web calls orders (v1, v2),
grpc-echo (v1, v2) and ledger (tcp, v1, v2); orders-shadow receives mirrored traffic.
Each test applies its routes, measures where traffic lands, and deletes them again.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from meshline.core.errors import ValidationError
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import GrpcTestServer, HttpTestServer, TcpEchoServer, grpc_echo, tcp_exchange

pytestmark = pytest.mark.e2e

WORKERS = 8
# start sidecars in parallel; no connection draining at the end (nothing is in flight by then)
FAST: dict[str, Any] = {"wait": False, "extra_args": ["--drain-seconds", "0"]}


@dataclass
class Demo:
    mesh: MeshHarness
    web: Sidecar
    orders: dict[str, HttpTestServer]
    shadow: HttpTestServer
    echo: dict[str, GrpcTestServer]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with ExitStack() as stack:
        servers = {name: stack.enter_context(HttpTestServer(name)) for name in ("orders-v1", "orders-v2", "orders-shadow")}
        echo = {v: stack.enter_context(GrpcTestServer(f"echo-{v}")) for v in ("v1", "v2")}
        ledger = {v: stack.enter_context(TcpEchoServer(f"ledger-{v}")) for v in ("v1", "v2")}
        mesh = MeshHarness(Path(tmp_path_factory.mktemp("routing")))
        mesh.start()
        stack.callback(mesh.stop)
        for v in ("v1", "v2"):
            mesh.sidecar("orders", servers[f"orders-{v}"].port, tags={"version": v}, **FAST)
            mesh.sidecar("grpc-echo", echo[v].port, protocol="grpc", tags={"version": v}, **FAST)
            mesh.sidecar("ledger", ledger[v].port, protocol="tcp", tags={"version": v}, **FAST)
        mesh.sidecar("orders-shadow", servers["orders-shadow"].port, **FAST)
        web = mesh.sidecar("web", 1, upstreams=["orders", "grpc-echo", "ledger"], **FAST)
        for sc in mesh.sidecars:
            mesh.wait_ready(sc)
        demo = Demo(mesh, web, {v: servers[f"orders-{v}"] for v in ("v1", "v2")}, servers["orders-shadow"], echo)
        # every instance is in web's endpoints before any test measures anything
        wait_until(lambda: spread(demo, 40) == {"orders-v1", "orders-v2"}, 20, what="both orders versions reachable")
        yield demo


def spread(d: Demo, n: int) -> set[str]:
    with httpx.Client(timeout=5) as c:
        return {c.get(d.web.url("orders") + "/").json()["instance"] for _ in range(n)}


@contextmanager
def applied(d: Demo, docs: str, marker: str) -> Iterator[list[dict[str, Any]]]:
    """Apply ``docs``; wait until web's Envoy has ``marker`` (a route name); delete them afterwards."""
    result = d.mesh.apply(docs)["items"]
    try:
        wait_until(lambda: marker in d.web.admin("/config_dump").text, 15, what=f"{marker} in web's Envoy")
        yield result
    finally:
        for item in result:
            kind, _, rest = item["resource"].partition(" ")
            mesh, _, name = rest.partition("/")
            plural = {"HTTPRoute": "httproutes", "TCPRoute": "tcproutes"}[kind]
            d.mesh.api.request("DELETE", f"/api/v1/meshes/{mesh}/{plural}/{name}")
        wait_until(lambda: marker not in d.web.admin("/config_dump").text, 15, what=f"{marker} gone from web's Envoy")


def land(url: str, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
    """Send ``n`` GETs over keep-alive connections from a few threads; count which instance answered."""

    def batch(count: int) -> list[str]:
        with httpx.Client(timeout=10) as c:
            out = []
            for _ in range(count):
                resp = c.get(url, headers=headers)
                assert resp.status_code == 200, resp.text
                out.append(resp.json()["instance"])
            return out

    with ThreadPoolExecutor(WORKERS) as pool:
        return Counter(itertools.chain.from_iterable(pool.map(batch, [n // WORKERS] * WORKERS)))


def assert_share(counts: Counter[str], instance: str, expected: float, tolerance: float) -> None:
    share = 100.0 * counts[instance] / sum(counts.values())
    assert abs(share - expected) <= tolerance, f"{instance} got {share:.1f}% of {dict(counts)}, expected {expected}±{tolerance}"


def warm(url: str) -> None:
    """New subset clusters may still be warming when the route arrives; wait for clean answers."""
    wait_until(lambda: all(httpx.get(url, timeout=5).status_code == 200 for _ in range(10)), 10, what="routes warm")


NATIVE_CANARY = """
kind: HTTPRoute
mesh: default
name: orders-canary
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: orders}}]
  rules:
    - backends:
        - {tags: {version: v1}, weight: 90}
        - {tags: {version: v2}, weight: 10}
"""


def test_a_90_10_split_lands_within_3_points_and_inspect_names_the_route(demo: Demo) -> None:
    with applied(demo, NATIVE_CANARY, "orders-canary_rule0_match0"):
        warm(demo.web.url("orders"))
        counts = land(demo.web.url("orders") + "/", 2000)
        assert sum(counts.values()) == 2000
        assert_share(counts, "orders-v2", 10, 3)
        inspected = demo.mesh.api.get(f"/api/v1/meshes/default/dataplanes/{demo.web.name}/inspect", params={"config": "0"})
        expected = {"kind": "HTTPRoute", "name": "orders-canary", "target": f"outbound orders (port {demo.web.port('orders')})",
                    "reason": "from service=web to service=orders"}
        assert any(expected.items() <= p.items() for p in inspected["policies"]), inspected["policies"]


def test_a_gateway_api_httproute_applied_as_is_splits_like_the_native_route(demo: Demo) -> None:
    gamma = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orders-gamma, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: orders, port: 8080}]
  rules:
    - backendRefs:
        - {name: orders-v1, port: 8080, weight: 90}
        - {name: orders-v2, port: 8080, weight: 10}
"""
    with applied(demo, gamma, "orders-gamma_rule0_match0") as result:
        assert result[0]["resource"] == "HTTPRoute default/orders-gamma"
        warm(demo.web.url("orders"))
        assert_share(land(demo.web.url("orders") + "/", 2000), "orders-v2", 10, 3)


def test_an_smi_traffic_split_applied_as_is_splits_like_the_native_route(demo: Demo) -> None:
    smi = """
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: orders-smi, namespace: default}
spec:
  service: orders
  backends:
    - {service: orders-v1, weight: 90}
    - {service: orders-v2, weight: 10}
"""
    with applied(demo, smi, "orders-smi_rule0_match0"):
        warm(demo.web.url("orders"))
        assert_share(land(demo.web.url("orders") + "/", 2000), "orders-v2", 10, 3)


def test_a_header_match_sends_only_marked_requests_to_v2(demo: Demo) -> None:
    ab = """
kind: HTTPRoute
mesh: default
name: orders-ab
spec:
  destinations: [{match: {service: orders}}]
  rules:
    - matches: [{headers: [{name: x-canary, exact: "true"}]}]
      backends: [{tags: {version: v2}}]
    - backends: [{tags: {version: v1}}]
"""
    with applied(demo, ab, "orders-ab_rule0_match0"):
        warm(demo.web.url("orders"))
        assert land(demo.web.url("orders") + "/", 200, {"x-canary": "true"}) == Counter({"orders-v2": 200})
        assert land(demo.web.url("orders") + "/", 200, {"x-canary": "false"}) == Counter({"orders-v1": 200})
        assert land(demo.web.url("orders") + "/", 200) == Counter({"orders-v1": 200})


def test_mirrored_requests_reach_the_shadow_and_the_caller_sees_only_the_primary(demo: Demo) -> None:
    mirror = """
kind: HTTPRoute
mesh: default
name: orders-mirror
spec:
  destinations: [{match: {service: orders}}]
  rules:
    - backends: [{tags: {version: v1}}]
      mirrors: [{service: orders-shadow}]
"""
    demo.shadow.behaviour.status = 500  # a failing shadow must not reach the caller
    try:
        with applied(demo, mirror, "orders-mirror_rule0_match0"):
            warm(demo.web.url("orders"))
            before = demo.shadow.count()
            with httpx.Client(timeout=5) as c:
                answers = [c.get(demo.web.url("orders") + f"/mirror/{i}") for i in range(50)]
            assert {(r.status_code, r.json()["instance"]) for r in answers} == {(200, "orders-v1")}
            wait_until(lambda: demo.shadow.count() - before >= 50, 10, what="50 mirrored requests at the shadow")
            mirrored = [r for r in demo.shadow.requests[before:] if r["path"].startswith("/mirror/")]
            assert {r["path"] for r in mirrored} == {f"/mirror/{i}" for i in range(50)}
            assert all("-shadow" in r["headers"]["Host"] for r in mirrored)  # Envoy marks copies: 127.0.0.1-shadow:port
    finally:
        demo.shadow.behaviour.status = 200


def test_a_grpc_method_route_sends_that_method_to_v2(demo: Demo) -> None:
    methods = """
kind: HTTPRoute
mesh: default
name: echo-methods
spec:
  destinations: [{match: {service: grpc-echo}}]
  rules:
    - matches: [{grpc: {service: meshline.test.Echo, method: Echo}}]
      backends: [{tags: {version: v2}}]
    - backends: [{tags: {version: v1}}]
"""
    target = f"127.0.0.1:{demo.web.port('grpc-echo')}"
    with applied(demo, methods, "echo-methods_rule0_match0"):
        wait_until(lambda: grpc_echo(target, b"warm") == b"echo-v2:warm", 10, what="gRPC route warm")
        assert {grpc_echo(target, f"m{i}".encode()) for i in range(30)} == {f"echo-v2:m{i}".encode() for i in range(30)}
        # another method of the same service takes the catch-all rule to v1 (which answers UNIMPLEMENTED)
        v1_requests = "cluster.grpc-echo_version-v1.upstream_rq_total"
        before = demo.web.stats(v1_requests).get(v1_requests, 0)
        with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/meshline.test.Echo/Other")(b"x", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert demo.web.stats(v1_requests)[v1_requests] == before + 1


def test_a_tcp_route_splits_connections_by_weight(demo: Demo) -> None:
    split = """
kind: TCPRoute
mesh: default
name: ledger-split
spec:
  destinations: [{match: {service: ledger}}]
  backends:
    - {tags: {version: v1}, weight: 80}
    - {tags: {version: v2}, weight: 20}
"""
    port = demo.web.port("ledger")
    with applied(demo, split, "ledger_version-v2"):
        wait_until(lambda: tcp_exchange(port).startswith(b"ledger-"), 10, what="tcp route warm")

        def connect(_: int) -> str:
            return tcp_exchange(port, b"hi\n").split(b":")[0].decode()

        with ThreadPoolExecutor(WORKERS) as pool:
            counts = Counter(pool.map(connect, range(1000)))
        # 1,000 connections: one standard deviation of the v2 share is 1.3 points
        assert_share(counts, "ledger-v2", 20, 5)


def test_a_subset_no_instance_has_is_refused_and_nothing_changes(demo: Demo) -> None:
    bad = yaml.safe_load(NATIVE_CANARY)
    bad["spec"]["rules"][0]["backends"][1]["tags"]["version"] = "v9"
    with pytest.raises(ValidationError) as info:
        demo.mesh.apply([bad])
    assert any(p.path.endswith("spec.rules[0].backends[1].tags") and "version=v9" in p.message
               for p in info.value.problems), info.value.problems
    assert demo.mesh.api.get("/api/v1/meshes/default/httproutes")["items"] == []
    assert "orders_version-v9" not in demo.web.admin("/config_dump").text
