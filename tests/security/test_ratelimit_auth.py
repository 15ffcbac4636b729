"""Finding 2: the rate-limit service on the xDS port took calls without credentials.

The attack: one unauthenticated ``ShouldRateLimit`` with ``hits_addend=1e9`` exhausted a global
limit (every web -> orders request got 429 for the rest of a ``1d`` window), and anyone could
create Redis keys that live a day. Against a real control plane, real sidecars and Redis:

* without a credential (or with a bad one) the call is refused, and web -> orders still gets
  200 with the limit's headers (the sidecars' own, authenticated, calls go through);
* with a valid dataplane credential a huge hits_addend is refused, and so is any descriptor
  the mesh's policies do not make that caller's sidecar send; no Redis key appears.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import redis
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from meshline.ratelimit.counter import KEY_PREFIX
from meshline.testing.mesh import wait_until
from meshline.xds import names
from tests.e2e.test_faults_ratelimit import serving
from tests.security.world import World, bearer, secured_world

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

REDIS_URL = "redis://127.0.0.1:6379/0"
DOMAIN = names.ratelimit_domain("default")
# A day's window (the attack's worst case); a fresh policy name per run: its counter is new.
POLICY = f"orders-day-{secrets.token_hex(4)}"
LIMIT = "1000/1d/fixed"
GLOBAL = f"""
kind: RateLimit
mesh: default
name: {POLICY}
spec:
  destinations: [{{match: {{service: orders}}}}]
  conf:
    global: {{requests: 1000, interval: 24h, timeout: 1s}}
"""


def descriptor(*entries: tuple[str, str]) -> ratelimit_pb2.RateLimitDescriptor:
    return ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )


# exactly what the orders sidecar sends for a request from web
THE_SIDECARS = descriptor(("meshline_policy", POLICY), ("destination_service", "orders"),
                          ("source_service", "*"), ("meshline_limit", LIMIT))


def call(world: World, hits: int, descriptors: Iterable[ratelimit_pb2.RateLimitDescriptor] = (THE_SIDECARS,),
         metadata: tuple[tuple[str, str], ...] = (), domain: str = DOMAIN) -> rls_pb2.RateLimitResponse:
    with world.channel() as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        request = rls_pb2.RateLimitRequest(domain=domain, hits_addend=hits, descriptors=list(descriptors))
        return stub.ShouldRateLimit(request, metadata=metadata, timeout=5)


def refused(world: World, hits: int, **kw: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(world, hits, **kw)  # type: ignore[arg-type]
    return info.value


def counters(client: redis.Redis) -> set[bytes]:
    return set(client.scan_iter(f"{KEY_PREFIX}:{DOMAIN}:*"))


def traffic_is_served(world: World, n: int = 5) -> None:
    """web -> orders answers 200, and the answer carries the global limit's headers: the
    orders sidecar asked the rate-limit service (with its own credential) and was allowed."""
    with httpx.Client(timeout=5) as c:
        for _ in range(n):
            r = c.get(world.web.url("orders") + "/")
            assert r.status_code == 200, r.text
            assert r.headers["x-ratelimit-limit"] == "1000, 1000;w=86400"
            assert int(r.headers["x-ratelimit-remaining"]) > 900


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except (redis.RedisError, OSError) as err:
        if os.environ.get("CI"):
            pytest.fail(f"Redis not reachable at {REDIS_URL}: {err}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {err}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_client: redis.Redis) -> Iterator[World]:
    with secured_world(Path(tmp_path_factory.mktemp("rls"))) as w:
        w.harness.apply(GLOBAL)
        wait_until(lambda: serving(w.orders, "envoy.filters.http.ratelimit"), 15, what="the global limit in orders")
        wait_until(lambda: httpx.get(w.web.url("orders") + "/", timeout=5).headers.get("x-ratelimit-limit"),
                   15, what="the sidecar's verdicts from the rate-limit service")
        yield w


def test_an_unauthenticated_call_cannot_exhaust_a_global_limit(world: World, redis_client: redis.Redis) -> None:
    before = counters(redis_client)
    assert refused(world, 10**9).code() == grpc.StatusCode.UNAUTHENTICATED
    not_a_token = bearer("not-a-token")
    assert refused(world, 10**9, metadata=not_a_token).code() == grpc.StatusCode.UNAUTHENTICATED
    # keys of the attacker's choosing: refused before Redis is touched
    junk = [descriptor(("k", secrets.token_hex(8)), ("meshline_limit", "1/1d/fixed")) for _ in range(3)]
    assert refused(world, 1, descriptors=junk).code() == grpc.StatusCode.UNAUTHENTICATED
    assert counters(redis_client) == before
    traffic_is_served(world)


def test_a_dataplane_credential_counts_only_its_own_policies_one_hit_at_a_time(
    world: World, redis_client: redis.Redis
) -> None:
    orders = bearer(world.token(mesh="default", service="orders"))
    web = bearer(world.token(mesh="default", service="web"))
    before = counters(redis_client)

    huge = refused(world, 10**9, metadata=orders)
    assert huge.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hits_addend 1000000000 is more than the 1" in (huge.details() or "")
    unknown = {
        "a descriptor no policy sends": [descriptor(("k", secrets.token_hex(8)), ("meshline_limit", "1/1d/fixed"))],
        "a stricter limit of its own": [descriptor(*[(e.key, e.value) for e in THE_SIDECARS.entries][:-1],
                                                   ("meshline_limit", "1/1d/fixed"))],
        "a policy that does not exist": [descriptor(("meshline_policy", "nope"), *[
            (e.key, e.value) for e in THE_SIDECARS.entries][1:])],
    }
    for why, descriptors in unknown.items():
        err = refused(world, 1, descriptors=descriptors, metadata=orders)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, why
    # another service's sidecar cannot drain orders' limit, nor count in another mesh
    other = refused(world, 1, metadata=web)
    assert other.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not the caller's own 'web'" in (other.details() or "")
    elsewhere = refused(world, 1, metadata=orders, domain=names.ratelimit_domain("other"))
    assert elsewhere.code() == grpc.StatusCode.PERMISSION_DENIED
    readonly = refused(world, 1, metadata=bearer(world.token("readonly")))
    assert readonly.code() == grpc.StatusCode.PERMISSION_DENIED
    assert counters(redis_client) == before

    # the credential itself works: one hit, as the sidecar counts it
    answer = call(world, 1, metadata=orders)
    assert answer.overall_code == rls_pb2.RateLimitResponse.OK
    assert answer.statuses[0].current_limit.requests_per_unit == 1000
    traffic_is_served(world)
