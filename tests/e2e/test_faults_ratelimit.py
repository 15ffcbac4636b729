"""FaultInjection and RateLimit end to end: real control plane (with its rate-limit service),
real agents and Envoys, real upstream servers, and Redis for the global limit.

One mesh serves the module, with strict mTLS (callers are told apart by their identity,
and sidecars reach the rate-limit service over the control plane's TLS xDS port): two
``orders`` instances (apps ``orders-a``/``orders-b``) called by two ``web`` sidecars and a
``mobile`` one. Each test applies its policy, waits until the orders sidecars run the
filter, measures, and deletes the policy again.

Global-limit tests need Redis at 127.0.0.1:6379 (skipped without it; a failure when
``CI=true``).
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from meshline.testing.mesh import MeshHarness, Sidecar, wait_until
from meshline.testing.servers import HttpTestServer, free_port

REDIS_URL = "redis://127.0.0.1:6379/0"


class Mesh:
    def __init__(
        self, harness: MeshHarness, orders: list[Sidecar], webs: list[Sidecar], mobile: Sidecar
    ) -> None:
        self.harness, self.orders, self.webs, self.mobile = harness, orders, webs, mobile

    def apply(self, policy: str, filter_name: str) -> None:
        """Apply a policy and wait until every orders sidecar runs its Envoy filter."""
        self.harness.apply(policy)
        self.wait_for(filter_name, present=True)

    def delete(self, kind_plural: str, name: str, filter_name: str) -> None:
        self.harness.api.request("DELETE", f"/api/v1/meshes/default/{kind_plural}/{name}")
        self.wait_for(filter_name, present=False)

    def wait_for(self, filter_name: str, present: bool) -> None:
        wait_until(
            lambda: all(serving(sc, filter_name) == present for sc in self.orders),
            15,
            what=f"{filter_name} {'in' if present else 'out of'} the orders sidecars",
        )


def serving(sc: Sidecar, filter_name: str) -> bool:
    """Whether the sidecar's inbound listener runs ``filter_name`` for every connection.

    A changed listener first warms; then connections opened before the change (pooled by
    callers) keep the old filters until drained (the agent's --drain-time-s), so wait for both.
    """
    configs = sc.admin("/config_dump?resource=dynamic_listeners").json()["configs"]
    inbound = [c for c in configs if c["name"].startswith("inbound_")]
    if not inbound or any("warming_state" in c or "draining_state" in c for c in inbound):
        raise AssertionError("inbound listener missing, warming or draining")
    draining = sc.stats("listener_manager.total_filter_chains_draining")
    if draining.get("listener_manager.total_filter_chains_draining", 0):
        raise AssertionError("old filter chains still draining")
    return all(filter_name in json.dumps(c["active_state"]) for c in inbound)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with (
        HttpTestServer("orders-a") as a,
        HttpTestServer("orders-b") as b,
        secure_mesh(tmp_path_factory.mktemp("faults")) as harness,
    ):
        # started (and stopped) together: each agent takes seconds on a busy machine
        orders = [harness.sidecar("orders", app.port, wait=False) for app in (a, b)]
        webs = [harness.sidecar("web", 1, upstreams=["orders"], wait=False) for _ in range(2)]
        mobile = harness.sidecar("mobile", 1, upstreams=["orders"], wait=False)
        try:
            for sc in harness.sidecars:
                harness.wait_ready(sc)
            for web in webs:  # both orders instances known to both callers before anything is measured
                wait_until(
                    lambda web=web: len({get(web, "/").json()["instance"] for _ in range(6)}) == 2,
                    10,
                    what="both orders instances reachable",
                )
            yield Mesh(harness, orders, webs, mobile)
        finally:
            stop_all(harness.sidecars)


def secure_mesh(tmp: Path) -> MeshHarness:
    # defaultPermission allow: TrafficPermission is not what these tests are about
    spec = {"mtls": {"mode": "strict"}, "defaultPermission": "allow"}
    return MeshHarness(tmp, mtls="strict", auth=True, mesh_spec=spec)


def stop_all(sidecars: list[Sidecar]) -> None:
    threads = [threading.Thread(target=sc.stop) for sc in sidecars]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


@pytest.fixture(scope="module")
def redis_up() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except (redis.RedisError, OSError) as err:
        reason = (
            f"Redis not reachable at {REDIS_URL} (start it with `sudo service redis-server start`): {err}"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def get(web: Sidecar, path: str, headers: dict[str, str] | None = None, timeout: float = 5) -> httpx.Response:
    return httpx.get(web.url("orders") + path, headers=headers, timeout=timeout)


def timed_calls(web: Sidecar, n: int, headers: dict[str, str] | None = None) -> list[float]:
    out = []
    with httpx.Client(timeout=5) as c:
        for _ in range(n):
            start = time.perf_counter()
            assert c.get(web.url("orders") + "/", headers=headers).status_code == 200
            out.append(time.perf_counter() - start)
    return out


# When each request of a paced run was sent, by the id of its run's response list.
SENT_AT: defaultdict[int, list[float]] = defaultdict(list)


def paced(web: Sidecar, rate: float, start: float, duration: float, out: list[httpx.Response]) -> None:
    """Send ``rate`` requests a second from ``start`` (time.time()) for ``duration`` seconds."""
    n = int(rate * duration)
    with httpx.Client(timeout=5) as c:
        for i in range(n):
            wait = start + i / rate - time.time()
            if wait > 0:
                time.sleep(wait)
            SENT_AT[id(out)].append(time.time())
            out.append(c.get(web.url("orders") + "/"))


def run_paced_windows(webs: list[Sidecar], rate_each: float, start: float,
                      duration: float) -> tuple[list[httpx.Response], int]:  # fmt: skip
    """Every web sends ``rate_each`` requests a second (``paced``); the responses, and how many
    one-second windows the requests were sent in."""
    results: list[list[httpx.Response]] = [[] for _ in webs]
    threads = [threading.Thread(target=paced, args=(w, rate_each, start, duration, r))
               for w, r in zip(webs, results, strict=True)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 30)
    windows = {int(at) for r in results for at in SENT_AT.pop(id(r), [])}
    return [r for rs in results for r in rs], len(windows)


# -- faults ----------------------------------------------------------------------------------

DELAY = """
kind: FaultInjection
mesh: default
name: orders-slow
spec:
  destinations: [{match: {service: orders}}]
  conf:
    faults:
      - delay: {percentage: 100, value: 200ms}
"""


def test_an_injected_delay_shows_in_the_callers_latency(mesh: Mesh) -> None:
    web = mesh.webs[0]
    assert statistics.median(timed_calls(web, 10)) < 0.1
    mesh.apply(DELAY, "envoy.filters.http.fault")
    try:
        assert statistics.median(timed_calls(web, 10)) >= 0.2
    finally:
        mesh.delete("faultinjections", "orders-slow", "envoy.filters.http.fault")
    assert statistics.median(timed_calls(web, 10)) < 0.1


ABORT_HALF = """
kind: FaultInjection
mesh: default
name: orders-flaky
spec:
  destinations: [{match: {service: orders}}]
  conf:
    faults:
      - abort: {percentage: 50, httpStatus: 503}
"""


def test_half_of_the_requests_are_aborted(mesh: Mesh) -> None:
    mesh.apply(ABORT_HALF, "envoy.filters.http.fault")
    try:
        with httpx.Client(timeout=5) as c:
            codes = Counter(c.get(mesh.webs[0].url("orders") + "/").status_code for _ in range(300))
    finally:
        mesh.delete("faultinjections", "orders-flaky", "envoy.filters.http.fault")
    assert set(codes) == {200, 503}
    assert 0.4 <= codes[503] / 300 <= 0.6, codes


MARKED_ONLY = """
kind: FaultInjection
mesh: default
name: orders-testers
spec:
  destinations: [{match: {service: orders}}]
  conf:
    faults:
      - match: {headers: {x-meshline-fault: "true"}}
        abort: {percentage: 100, httpStatus: 503}
"""


def test_a_header_selected_fault_hits_only_marked_requests(mesh: Mesh) -> None:
    mesh.apply(MARKED_ONLY, "envoy.filters.http.fault")
    try:
        with httpx.Client(timeout=5) as c:
            url = mesh.webs[0].url("orders") + "/"
            marked = Counter(c.get(url, headers={"x-meshline-fault": "true"}).status_code for _ in range(20))
            other = Counter(c.get(url, headers={"x-meshline-fault": "no"}).status_code for _ in range(20))
            plain = Counter(c.get(url).status_code for _ in range(20))
    finally:
        mesh.delete("faultinjections", "orders-testers", "envoy.filters.http.fault")
    assert marked == Counter({503: 20})
    assert other == Counter({200: 20}) and plain == Counter({200: 20})


PER_CALLER = """
kind: FaultInjection
mesh: default
name: orders-fail-web
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: orders}}]
  conf:
    faults:
      - abort: {percentage: 100, httpStatus: 503}
---
kind: RateLimit
mesh: default
name: orders-mobile
spec:
  sources: [{match: {service: mobile}}]
  destinations: [{match: {service: orders}}]
  conf:
    local:
      http: {requests: 3, interval: 1m}
"""


def test_policies_for_one_caller_hit_only_that_caller(mesh: Mesh) -> None:
    """Callers are told apart by their mTLS identity, not by anything they could claim."""
    mesh.harness.apply(PER_CALLER)
    try:
        mesh.wait_for("envoy.filters.http.local_ratelimit", present=True)
        mesh.wait_for("envoy.filters.http.fault", present=True)
        with httpx.Client(timeout=5) as c:
            web = Counter(c.get(mesh.webs[0].url("orders") + "/").status_code for _ in range(10))
            mobile = [c.get(mesh.mobile.url("orders") + "/").status_code for _ in range(10)]
    finally:
        mesh.harness.api.request("DELETE", "/api/v1/meshes/default/faultinjections/orders-fail-web")
        mesh.delete("ratelimits", "orders-mobile", "envoy.filters.http.local_ratelimit")
        mesh.wait_for("envoy.filters.http.fault", present=False)
    assert web == Counter({503: 10})  # web's faults, not mobile's limit
    # mobile's limit (3 a minute in each orders instance), not web's faults
    assert mobile.count(200) == 6 and mobile.count(429) == 4, mobile


# -- rate limits -------------------------------------------------------------------------------

LOCAL = """
kind: RateLimit
mesh: default
name: orders-local
spec:
  destinations: [{match: {service: orders}}]
  conf:
    local:
      http: {requests: 20, interval: 1s}
"""


def test_a_local_limit_allows_its_rate_per_instance(mesh: Mesh) -> None:
    mesh.apply(LOCAL, "envoy.filters.http.local_ratelimit")
    try:
        web = mesh.webs[0]
        # Empty both buckets (round robin: half each) with bursts of concurrent requests, so a
        # slow machine cannot send them slower than the buckets refill; bounded.
        drained: list[int] = []
        with httpx.Client(timeout=5, limits=httpx.Limits(max_connections=30)) as c, \
                ThreadPoolExecutor(30) as pool:  # fmt: skip
            for _ in range(5):
                burst = list(pool.map(lambda _: c.get(web.url("orders") + "/").status_code, range(90)))
                drained += burst
                if burst.count(429) >= 10:
                    break
        assert drained.count(429) > 0
        # 30 requests/s to each instance for 3s; each may pass 20/s: 60 each (+-10%)
        responses, windows = run_paced_windows([web], 60, time.time(), 3.0)
        limited = [r for r in responses if r.status_code == 429]
        allowed = Counter(r.json()["instance"] for r in responses if r.status_code == 200)
        assert len(limited) + sum(allowed.values()) == len(responses) == 180
        for instance in ("orders-a", "orders-b"):  # a busy machine may spread the sends wider
            assert 54 <= allowed[instance] <= 22 * windows < 90, (allowed, windows)
        headers = limited[-1].headers
        assert headers["x-ratelimit-limit"] == "20"
        assert headers["x-ratelimit-remaining"] == "0"
        assert 0 <= int(headers["x-ratelimit-reset"]) <= 1
        assert headers["retry-after"] == "1"
    finally:
        mesh.delete("ratelimits", "orders-local", "envoy.filters.http.local_ratelimit")


GLOBAL = """
kind: RateLimit
mesh: default
name: orders-global
spec:
  destinations: [{match: {service: orders}}]
  conf:
    global:
      requests: 20
      interval: 1s
      timeout: 1s
"""


def test_a_global_limit_is_shared_by_all_instances(mesh: Mesh, redis_up: None) -> None:
    mesh.apply(GLOBAL, "envoy.filters.http.ratelimit")
    try:
        # two callers at 20/s each for three whole windows of 1s: 120 requests, 60 allowed in
        # total (+-10%). Per-instance counting would let all 120 through.
        start = int(time.time()) + 1.05
        responses, windows = run_paced_windows(mesh.webs, 20, start, 2.9)
        codes = Counter(r.status_code for r in responses)
        assert set(codes) == {200, 429} and sum(codes.values()) == 116, codes
        # 20 per window in total; a busy machine may spread the sends over a fourth window.
        assert 54 <= codes[200] <= 22 * windows < 116, (codes, windows)
        landed = Counter(r.json()["instance"] for r in responses if r.status_code == 200)
        assert set(landed) == {"orders-a", "orders-b"}  # both instances served within one limit
        limited = next(r for r in responses if r.status_code == 429)
        assert limited.headers["x-ratelimit-limit"] == "20, 20;w=1"
        assert limited.headers["x-ratelimit-remaining"] == "0"
        assert 0 <= int(limited.headers["x-ratelimit-reset"]) <= 1
        assert limited.headers["retry-after"] == "1"
        allowed = next(r for r in responses if r.status_code == 200)
        assert allowed.headers["x-ratelimit-limit"] == "20, 20;w=1"
    finally:
        mesh.delete("ratelimits", "orders-global", "envoy.filters.http.ratelimit")


# -- the limiter's store is down ---------------------------------------------------------------

FAILING = """
kind: RateLimit
mesh: default
name: orders-global
spec:
  destinations: [{match: {service: orders}}]
  conf:
    global: {requests: 1000, interval: 1s, failureMode: MODE, timeout: 200ms}
"""


def test_redis_unreachable_applies_the_failure_mode_without_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A control plane whose Redis is a closed port: failureMode open lets requests through,
    closed answers 503; either way at once (a hang would hit the 2s client timeout)."""
    monkeypatch.setenv("MESHLINE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    with HttpTestServer("orders-app") as app, secure_mesh(tmp_path) as h:
        orders = h.sidecar("orders", app.port, wait=False)
        web = h.sidecar("web", 1, upstreams=["orders"], wait=False)
        try:
            for sc in (orders, web):
                h.wait_ready(sc)
            answers: dict[str, Counter[int]] = {}
            for mode in ("open", "closed"):
                h.apply(FAILING.replace("MODE", mode))
                wait_until(
                    lambda mode=mode: (
                        serving(orders, "envoy.filters.http.ratelimit")
                        and serving(orders, '"failure_mode_deny": true') == (mode == "closed")
                    ),
                    15,
                    what=f"failureMode {mode} in the orders sidecar",
                )
                before = app.count()
                with httpx.Client(timeout=2) as c:
                    answers[mode] = Counter(c.get(web.url("orders") + "/").status_code for _ in range(10))
                answers[mode]["reached the app"] = app.count() - before
        finally:
            stop_all(h.sidecars)
    assert answers["open"] == Counter({200: 10, "reached the app": 10})
    assert answers["closed"] == Counter({503: 10, "reached the app": 0})
