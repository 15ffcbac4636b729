"""The rate-limit service over gRPC, as Envoy calls it, with a real Redis behind it
(``MESHLINE_TEST_REDIS``; unreachable: skipped locally, a failure when ``CI=true``).

Each test runs against a mesh of its own (a fresh name: counters of earlier runs never
mix in) whose RateLimit policies say which descriptors the service counts."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import yaml
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from meshline.kinds import default_kinds
from meshline.ratelimit.counter import KEY_PREFIX
from meshline.ratelimit.service import RateLimitService
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.testing.servers import free_port
from meshline.xds import names
from meshline.xds.server import AuthenticatingInterceptor, StreamRefused
from tests.unit.test_ratelimit_counter import REDIS_URL, at_window_start, redis_or_skip

pytestmark = pytest.mark.redis

Code = rls_pb2.RateLimitResponse.Code
Stub = Callable[[rls_pb2.RateLimitRequest], Any]
KINDS = default_kinds()

POLICIES = """
kind: RateLimit
name: orders-3m
spec:
  destinations: [{match: {service: orders}}]
  conf: {global: {requests: 3, interval: 1m}}
---
kind: RateLimit
name: a-small
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: a}}]
  conf: {global: {requests: 1, interval: 1h, perHeader: x-user}}
---
kind: RateLimit
name: b-big
spec:
  destinations: [{match: {service: b}}]
  conf: {global: {requests: 100, interval: 1h}}
"""


def snapshot_of(mesh: str, policies: str = POLICIES) -> Callable[[str], MeshSnapshot | None]:
    resources = [KINDS.decode({**doc, "mesh": mesh}) for doc in yaml.safe_load_all(policies)]
    snap = MeshSnapshot.build(KINDS.decode({"kind": "Mesh", "name": mesh}), resources, revision=1)
    return lambda name: snap if name == mesh else None


def descriptor(policy: str, destination: str, limit: str, source: str = "*",
               extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    return [("meshline_policy", policy), ("destination_service", destination), ("source_service", source),
            *extra, ("meshline_limit", limit)]


ORDERS = descriptor("orders-3m", "orders", "3/1m/fixed")


def request(domain: str, *descriptors: Iterable[tuple[str, str]], hits: int = 0) -> rls_pb2.RateLimitRequest:
    return rls_pb2.RateLimitRequest(
        domain=domain,
        hits_addend=hits,
        descriptors=[
            ratelimit_pb2.RateLimitDescriptor(
                entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in d]
            )
            for d in descriptors
        ],
    )


@dataclass(frozen=True)
class FakeCaller:
    """A caller as the xDS port's authenticator would find it (tests/security do it for real)."""

    mesh: str | None
    service: str | None

    def describe(self) -> str:
        return f"test caller ({self.mesh}, {self.service})"

    def refusal_for(self, node: str) -> str | None:
        return None

    def lapsed(self) -> str | None:
        return None


def by_metadata(context: grpc.aio.ServicerContext) -> FakeCaller:
    md = dict(context.invocation_metadata() or ())
    if "caller" not in md:
        raise StreamRefused(grpc.StatusCode.UNAUTHENTICATED, "no caller")
    mesh, _, service = str(md["caller"]).partition("/")
    return FakeCaller(mesh or None, service or None)


async def serve(
    redis_url: str, snapshot: Callable[[str], MeshSnapshot | None], authenticated: bool = False
) -> tuple[grpc.aio.Server, RateLimitService, int]:
    service = RateLimitService(redis_url, snapshot)
    server = grpc.aio.server(interceptors=[AuthenticatingInterceptor(by_metadata)] if authenticated else [])
    service.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, service, port


@dataclass
class Rls:
    mesh: str
    call: Stub
    service: RateLimitService

    @property
    def domain(self) -> str:
        return names.ratelimit_domain(self.mesh)


@pytest.fixture
async def rls() -> AsyncIterator[Rls]:
    await (await redis_or_skip()).aclose()  # skip (or fail in CI) without Redis
    mesh = f"t{secrets.token_hex(6)}"
    server, service, port = await serve(REDIS_URL, snapshot_of(mesh))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Rls(mesh, rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit, service)
    await server.stop(0)
    await service.close()


async def redis_keys(mesh: str) -> list[bytes]:
    client = await redis_or_skip()
    try:
        return [k async for k in client.scan_iter(f"{KEY_PREFIX}:{names.ratelimit_domain(mesh)}:*")]
    finally:
        await client.aclose()


async def test_counts_each_descriptor_and_reports_the_limit(rls: Rls) -> None:
    client = await redis_or_skip()
    await at_window_start(client, 60_000, room_ms=5000)
    await client.aclose()
    answers = [await rls.call(request(rls.domain, ORDERS)) for _ in range(4)]
    assert [a.overall_code for a in answers] == [Code.OK] * 3 + [Code.OVER_LIMIT]
    first, last = answers[0].statuses[0], answers[-1].statuses[0]
    assert first.current_limit.requests_per_unit == 3
    assert first.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.MINUTE
    assert first.limit_remaining == 2 and last.limit_remaining == 0
    assert 0 < last.duration_until_reset.seconds <= 60
    # only a limited answer tells the client when to come back
    assert [(h.key, h.value) for h in answers[0].response_headers_to_add] == []
    retry_after = {h.key: h.value for h in answers[-1].response_headers_to_add}
    assert 1 <= int(retry_after["retry-after"]) <= 60


async def test_descriptors_no_policy_sends_are_refused_without_touching_redis(rls: Rls) -> None:
    """The service counts only what the mesh's RateLimit policies make sidecars send: a caller
    cannot create counters (Redis keys) of its choosing."""
    refused = {
        "not a policy's": [("generic_key", "anything")],
        "no such policy": descriptor("nope", "orders", "3/1m/fixed"),
        "another limit": descriptor("orders-3m", "orders", "1000000000/1d/fixed"),
        "another service": descriptor("orders-3m", "payments", "3/1m/fixed"),
        "an unnamed caller": descriptor("a-small", "a", "1/1h/fixed", source="*"),
        "an unknown entry": descriptor("b-big", "b", "100/1h/fixed", extra=[("x", "y")]),
        "a header the policy does not count by": descriptor("b-big", "b", "100/1h/fixed", extra=[("header_x-user", "u")]),
        "entries out of order": list(reversed(ORDERS)),
    }
    for why, entries in refused.items():
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rls.call(request(rls.domain, entries))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, why
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rls.call(request("meshline_other-mesh", ORDERS))  # a mesh without that policy
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no RateLimit 'orders-3m' with a global limit in mesh 'other-mesh'" in str(info.value.details())
    assert await redis_keys(rls.mesh) == []
    assert rls.service.servicer is not None and rls.service.servicer.refused == len(refused) + 1
    per_user = descriptor("a-small", "a", "1/1h/fixed", source="web", extra=[("header_x-user", "u1")])
    assert (await rls.call(request(rls.domain, per_user))).overall_code == Code.OK
    assert len(await redis_keys(rls.mesh)) == 1


async def test_a_call_adds_one_hit_at_most(rls: Rls) -> None:
    """One call must not drain a limit (the attack: hits_addend=1e9 on a day's limit)."""
    for hits in (2, 10**9):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rls.call(request(rls.domain, ORDERS, hits=hits))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"hits_addend {hits} is more than the 1" in str(info.value.details())
    big = request(rls.domain, ORDERS)
    big.descriptors[0].hits_addend.value = 10**9  # the per-descriptor override too
    with pytest.raises(grpc.aio.AioRpcError):
        await rls.call(big)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rls.call(request(rls.domain, *[ORDERS] * 5))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await redis_keys(rls.mesh) == []
    assert (await rls.call(request(rls.domain, ORDERS, hits=1))).statuses[0].limit_remaining == 2


async def test_a_caller_counts_only_for_its_own_mesh_and_service() -> None:
    await (await redis_or_skip()).aclose()
    mesh = f"t{secrets.token_hex(6)}"
    server, service, port = await serve(REDIS_URL, snapshot_of(mesh), authenticated=True)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit
            domain = names.ratelimit_domain(mesh)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(request(domain, ORDERS))  # no credential at all
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            for caller, why in ((f"{mesh}/web", "not the caller's own 'web'"), ("other/orders", "cannot count in mesh")):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(request(domain, ORDERS), metadata=(("caller", caller),))
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and why in str(info.value.details())
            assert await redis_keys(mesh) == []
            for caller in (f"{mesh}/orders", f"{mesh}/"):  # its own service; a mesh-wide credential
                answer = await call(request(domain, ORDERS), metadata=(("caller", caller),))
                assert answer.overall_code == Code.OK
    finally:
        await server.stop(0)
        await service.close()


async def test_one_descriptor_over_its_limit_limits_the_request(rls: Rls) -> None:
    small = descriptor("a-small", "a", "1/1h/fixed", source="web")
    big = descriptor("b-big", "b", "100/1h/fixed")
    assert (await rls.call(request(rls.domain, small, big))).overall_code == Code.OK
    answer = await rls.call(request(rls.domain, small, big))
    assert answer.overall_code == Code.OVER_LIMIT
    assert [s.code for s in answer.statuses] == [Code.OVER_LIMIT, Code.OK]


async def test_redis_down_answers_unavailable_at_once() -> None:
    """What the sidecar's failureMode acts on: an error, not a verdict and not a wait."""
    server, service, port = await serve(f"redis://127.0.0.1:{free_port()}/0", snapshot_of("down"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ShouldRateLimit(request(names.ratelimit_domain("down"), ORDERS), timeout=2)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "rate-limit counters unavailable (Redis redis://127.0.0.1:" in str(info.value.details())
    finally:
        await server.stop(0)
        await service.close()
