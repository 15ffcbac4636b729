"""Resilience policies end to end: real control plane, real Envoys, real upstream servers.

One mesh serves the whole module (sidecars take seconds to start); each test uses its own
service, or resets the one it shares, and removes its policies when done. The caller,
web, is in zone a and calls every service through its sidecar.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from meshline.api.client import resource_path
from meshline.kinds import default_kinds
from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import Behaviour, HttpTestServer

pytestmark = pytest.mark.e2e

# service -> (instance name, zone) of each instance
# (few sidecars: the machine has two cores; without a LoadBalancer policy zones do not matter)
TOPOLOGY: dict[str, list[tuple[str, str]]] = {
    "solo": [("solo-1", "a")],
    "pair": [("pair-a", "a"), ("pair-b", "b")],
    "sticky": [("sticky-1", "a"), ("sticky-2", "a"), ("sticky-3", "a")],
}


@dataclass
class World:
    mesh: MeshHarness
    web: Sidecar
    apps: dict[str, HttpTestServer]

    def url(self, service: str) -> str:
        return self.web.url(service)

    def stat(self, name: str) -> int:
        return self.web.stats(name).get(name, 0)

    def cluster(self, service: str) -> str:
        """The caller's view of a cluster's config (config_dump JSON text)."""
        dump = self.web.admin("/config_dump?resource=dynamic_active_clusters").json()
        found = [c["cluster"] for c in dump.get("configs", []) if c["cluster"]["name"] == service]
        return str(found[0]) if found else ""

    def routes(self, service: str) -> str:
        dump = self.web.admin("/config_dump?resource=dynamic_route_configs").json()
        name = f"outbound_{self.web.port(service)}"
        found = [c["route_config"] for c in dump.get("configs", []) if c["route_config"]["name"] == name]
        return str(found[0]) if found else ""

    def health(self, service: str) -> dict[str, str]:
        """instance address -> Envoy health flags, from the caller's /clusters."""
        out = {}
        for line in self.web.admin("/clusters").text.splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == service and parts[2] == "health_flags":
                out[parts[1]] = parts[3]
        return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    apps: dict[str, HttpTestServer] = {}
    mesh = MeshHarness(Path(tmp_path_factory.mktemp("resilience")))
    mesh.start()
    try:
        started = []
        for service, instances in TOPOLOGY.items():
            for name, zone in instances:
                apps[name] = HttpTestServer(name).start()
                started.append(mesh.sidecar(service, apps[name].port, name=name, tags={"zone": zone}, wait=False))
        web = mesh.sidecar("web", 1, tags={"zone": "a"}, upstreams=list(TOPOLOGY), wait=False)
        for sidecar in (*started, web):
            mesh.wait_ready(sidecar)
        world = World(mesh, web, apps)
        for service in TOPOLOGY:  # every instance is known to the caller before a test starts
            wait_until(lambda s=service: len(world.health(s)) == len(TOPOLOGY[s]), 15, what=f"{service} endpoints")
        yield world
    finally:
        with ThreadPoolExecutor(8) as pool:  # each agent deregisters and drains Envoy: stop them together
            list(pool.map(lambda sidecar: sidecar.stop(), mesh.sidecars))
        mesh.stop()
        for app in apps.values():
            app.stop()


@contextmanager
def policies(world: World, text: str, live: Callable[[], bool]) -> Iterator[None]:
    """Apply policies, wait until the caller's Envoy has them (``live``); remove them afterwards."""
    docs = [d for d in yaml.safe_load_all(text) if d]
    world.mesh.apply(docs)
    wait_until(live, 15, what="the policy to reach the caller's Envoy")
    try:
        yield
    finally:
        kinds = default_kinds()
        for doc in docs:
            plural = kinds.get(doc["kind"]).plural
            world.mesh.api.request("DELETE", resource_path(doc["kind"], "default", doc["name"], plural))
        wait_until(lambda: not live(), 15, what="the policy to be removed from the caller's Envoy")


@contextmanager
def behaving(app: HttpTestServer, behaviour: Behaviour) -> Iterator[HttpTestServer]:
    app.behaviour = behaviour
    try:
        yield app
    finally:
        app.behaviour = Behaviour()


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 10) -> httpx.Response:
    with httpx.Client(timeout=timeout) as client:
        return client.get(url, headers=headers)


def sequential(url: str, n: int, headers: dict[str, str] | None = None) -> list[httpx.Response]:
    with httpx.Client(timeout=10) as client:
        return [client.get(url, headers=headers) for _ in range(n)]


def concurrent(url: str, workers: int, per_worker: int) -> list[httpx.Response]:
    with ThreadPoolExecutor(workers) as pool:
        batches = pool.map(lambda _: sequential(url, per_worker), range(workers))
        return [r for batch in batches for r in batch]


def landed(responses: list[httpx.Response]) -> Counter[str]:
    return Counter(r.json()["instance"] for r in responses if r.status_code == 200)


def statuses(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(r.status_code for r in responses)


# -- Retry ---------------------------------------------------------------------------------

RETRY_FLAKY = """
kind: Retry
mesh: default
name: solo-retries
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: solo}}]
  conf:
    http:
      attempts: 6
      retryOn: [5xx]
      backoff: {baseInterval: 2ms, maxInterval: 10ms}
"""


def test_retries_turn_a_flaky_upstream_into_full_success(world: World) -> None:
    app = world.apps["solo-1"]
    with behaving(app, Behaviour(fail_ratio=0.3)):
        control = sequential(world.url("solo"), 60)
        assert statuses(control)[503] > 5, "without a Retry policy the failures reach the caller"

        with policies(world, RETRY_FLAKY, lambda: "previous_hosts" in world.routes("solo")):
            before = app.count()
            responses = sequential(world.url("solo"), 100)
            attempts = app.count() - before
    assert statuses(responses) == Counter({200: 100})
    assert attempts > 110, f"the upstream saw {attempts} attempts: the successes came from retries"
    assert world.stat("cluster.solo.upstream_rq_retry_success") > 10


BUDGET = """
kind: Retry
mesh: default
name: solo-budget
spec:
  destinations: [{match: {service: solo}}]
  conf:
    http:
      attempts: 5
      retryOn: [5xx]
      backoff: {baseInterval: 5ms, maxInterval: 20ms}
      budget: {percent: 20, minRetryConcurrency: 1}
"""
NO_BUDGET = """
kind: Retry
mesh: default
name: solo-no-budget
spec:
  destinations: [{match: {service: solo}}]
  conf:
    http:
      attempts: 5
      retryOn: [5xx]
      backoff: {baseInterval: 5ms, maxInterval: 20ms}
      budget: {disabled: true}
---
kind: CircuitBreaker
mesh: default
name: solo-many-retries
spec:
  destinations: [{match: {service: solo}}]
  conf:
    limits: {maxRetries: 1000}
"""
WORKERS, PER_WORKER = 16, 6


def _attempts_under_outage(world: World) -> tuple[int, int]:
    app = world.apps["solo-1"]
    before = app.count()
    responses = concurrent(world.url("solo"), WORKERS, PER_WORKER)
    assert statuses(responses) == Counter({503: len(responses)})
    return len(responses), app.count() - before


def test_a_retry_budget_keeps_retries_from_multiplying_an_outage(world: World) -> None:
    with behaving(world.apps["solo-1"], Behaviour(status=503, delay=0.05)):
        with policies(world, NO_BUDGET, lambda: "'max_retries': 1000" in world.cluster("solo")):
            requests, unbounded = _attempts_under_outage(world)
        assert unbounded >= 4 * requests, f"{unbounded} attempts for {requests} requests without a budget"

        with policies(world, BUDGET, lambda: "retry_budget" in world.cluster("solo")):
            overflow_before = world.stat("cluster.solo.upstream_rq_retry_overflow")
            requests, budgeted = _attempts_under_outage(world)
            overflowed = world.stat("cluster.solo.upstream_rq_retry_overflow") - overflow_before
    # Retries in flight <= 20% of requests in flight (retries included), so retries stay near
    # 0.2 / (1 - 0.2) = 25% of first tries; min concurrency and the tail of the run add a little.
    assert budgeted <= requests * 1.25 + WORKERS, f"{budgeted} attempts for {requests} requests with a 20% budget"
    assert overflowed > requests / 2, "Envoy refused retries for lack of budget"


# -- Timeout -------------------------------------------------------------------------------

TIMEOUT = """
kind: Timeout
mesh: default
name: solo-timeout
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: solo}}]
  conf:
    http: {requestTimeout: 500ms}
"""


def test_a_request_timeout_answers_504_instead_of_waiting(world: World) -> None:
    with behaving(world.apps["solo-1"], Behaviour(delay=2.0)):
        start = time.monotonic()
        assert get(world.url("solo")).status_code == 200  # the 15s default lets it finish
        assert time.monotonic() - start >= 2.0

        with policies(world, TIMEOUT, lambda: "'timeout': '0.500s'" in world.routes("solo")):
            start = time.monotonic()
            resp = get(world.url("solo"))
            took = time.monotonic() - start
    assert resp.status_code == 504
    assert 0.45 <= took < 1.5, f"answered after {took:.2f}s"


# -- CircuitBreaker ------------------------------------------------------------------------

LIMITS = """
kind: CircuitBreaker
mesh: default
name: solo-limits
spec:
  destinations: [{match: {service: solo}}]
  conf:
    limits: {maxConnections: 1, maxPendingRequests: 1, maxRequests: 1}
"""


def test_circuit_breaker_limits_overflow_with_503(world: World) -> None:
    with (
        behaving(world.apps["solo-1"], Behaviour(delay=0.5)),
        policies(world, LIMITS, lambda: "'max_requests': 1" in world.cluster("solo")),
    ):
        before = world.stat("cluster.solo.upstream_rq_pending_overflow")
        responses = concurrent(world.url("solo"), 8, 1)
        overflowed = world.stat("cluster.solo.upstream_rq_pending_overflow") - before
    codes = statuses(responses)
    assert codes[200] >= 1 and codes[503] >= 4, codes
    assert all(r.headers.get("x-envoy-overloaded") == "true" for r in responses if r.status_code == 503)
    assert overflowed == codes[503]


OUTLIER = """
kind: CircuitBreaker
mesh: default
name: pair-outliers
spec:
  destinations: [{match: {service: pair}}]
  conf:
    outlierDetection:
      interval: 1s
      baseEjectionTime: 1m
      maxEjectionPercent: 50
      consecutive5xx: 3
"""


def test_outlier_detection_ejects_the_failing_instance(world: World) -> None:
    with (
        behaving(world.apps["pair-a"], Behaviour(status=503)),
        policies(world, OUTLIER, lambda: "outlier_detection" in world.cluster("pair")),
    ):
        first = sequential(world.url("pair"), 10)
        ejected = world.stat("cluster.pair.outlier_detection.ejections_active")
        after = sequential(world.url("pair"), 30)
    assert statuses(first)[503] == 3, "three consecutive 5xx from pair-a, then it is ejected"
    assert ejected == 1
    assert statuses(after) == Counter({200: 30})
    assert landed(after) == Counter({"pair-b": 30})


# -- HealthCheck ---------------------------------------------------------------------------

def health_check(service: str) -> str:
    return f"""
kind: HealthCheck
mesh: default
name: {service}-health
spec:
  destinations: [{{match: {{service: {service}}}}}]
  conf:
    interval: 200ms
    timeout: 500ms
    unhealthyThreshold: 2
    healthyThreshold: 1
    http: {{path: /health}}
"""


def _healthy(world: World, service: str, count: int) -> bool:
    return list(world.health(service).values()).count("healthy") == count


def _settle(world: World, service: str, instance: str) -> None:
    """Envoy merges host-set changes for up to 1s (update_merge_window) before balancing on them."""
    wait_until(lambda: landed(sequential(world.url(service), 3)) == Counter({instance: 3}), 5,
               what=f"traffic to {service} to move to {instance}")


def test_active_health_check_steers_traffic_away_from_a_stopped_app(world: World) -> None:
    app = world.apps["pair-a"]
    with policies(world, health_check("pair"), lambda: "health_checks" in world.cluster("pair")):
        wait_until(lambda: _healthy(world, "pair", 2), 10, what="both pair instances healthy")
        assert set(landed(sequential(world.url("pair"), 10))) == {"pair-a", "pair-b"}
        app.stop()
        try:
            wait_until(lambda: _healthy(world, "pair", 1), 10, what="pair-a marked unhealthy")
            assert "/failed_active_hc" in world.health("pair").values()
            _settle(world, "pair", "pair-b")
            responses = sequential(world.url("pair"), 20)
        finally:
            app.start()
        wait_until(lambda: _healthy(world, "pair", 2), 10, what="pair-a healthy again")
        failures = world.stat("cluster.pair.health_check.failure")
    assert statuses(responses) == Counter({200: 20})
    assert landed(responses) == Counter({"pair-b": 20})
    assert failures >= 1  # the active checker saw the stopped app fail (count depends on check timing)
    assert any(r["path"] == "/health" for r in world.apps["pair-b"].requests)  # checks reach the app


# -- LoadBalancer --------------------------------------------------------------------------

LOCALITY = """
kind: LoadBalancer
mesh: default
name: pair-locality
spec:
  destinations: [{match: {service: pair}}]
  conf: {}
"""


def test_callers_stay_in_their_zone_and_fail_over_when_it_is_down(world: World) -> None:
    assert set(landed(sequential(world.url("pair"), 10))) == {"pair-a", "pair-b"}  # no policy: both zones
    app = world.apps["pair-a"]
    text = LOCALITY + "---" + health_check("pair")
    with policies(world, text, lambda: "health_checks" in world.cluster("pair")):
        wait_until(lambda: _healthy(world, "pair", 2), 10, what="both zones healthy")
        assert landed(sequential(world.url("pair"), 20)) == Counter({"pair-a": 20})
        app.stop()
        try:
            wait_until(lambda: _healthy(world, "pair", 1), 10, what="zone a marked unhealthy")
            _settle(world, "pair", "pair-b")
            failed_over = sequential(world.url("pair"), 20)
        finally:
            app.start()
        wait_until(lambda: _healthy(world, "pair", 2), 10, what="zone a healthy again")
        _settle(world, "pair", "pair-a")
        back = sequential(world.url("pair"), 20)
    assert landed(failed_over) == Counter({"pair-b": 20})
    assert landed(back) == Counter({"pair-a": 20})


RING_HASH = """
kind: LoadBalancer
mesh: default
name: sticky-users
spec:
  destinations: [{match: {service: sticky}}]
  conf:
    type: RingHash
    hashPolicies: [{header: x-user}]
"""


def test_ring_hash_sends_one_header_value_to_one_instance(world: World) -> None:
    url = world.url("sticky")
    assert len(landed(sequential(url, 6, {"x-user": "u0"}))) == 3  # round robin: everywhere
    with policies(world, RING_HASH, lambda: "RING_HASH" in world.cluster("sticky")):
        homes = {}
        for user in (f"u{i}" for i in range(12)):
            seen = landed(sequential(url, 5, {"x-user": user}))
            assert len(seen) == 1 and sum(seen.values()) == 5, f"{user} landed on {seen}"
            homes[user] = next(iter(seen))
    assert len(set(homes.values())) >= 2, f"every user hashed to one instance: {homes}"


def test_policies_show_up_in_inspect(world: World) -> None:
    text = RETRY_FLAKY + "---" + TIMEOUT
    with policies(world, text, lambda: "previous_hosts" in world.routes("solo")):
        inspected = world.mesh.api.get(f"/api/v1/meshes/default/dataplanes/{world.web.name}/inspect?config=0")
    applied = {(p["kind"], p["name"], p["target"]) for p in inspected["policies"]}
    assert ("Retry", "solo-retries", f"outbound solo (port {world.web.port('solo')})") in applied
    assert ("Timeout", "solo-timeout", f"outbound solo (port {world.web.port('solo')})") in applied
