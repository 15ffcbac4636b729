"""The rate-limit service over gRPC, as Envoy calls it, with a real Redis behind it
(``MESHLINE_TEST_REDIS``; unreachable: skipped locally, a failure when ``CI=true``)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from meshline.ratelimit.service import RateLimitService
from meshline.testing.servers import free_port
from tests.unit.test_ratelimit_counter import REDIS_URL, at_window_start, redis_or_skip

pytestmark = pytest.mark.redis

Code = rls_pb2.RateLimitResponse.Code
Stub = Callable[[rls_pb2.RateLimitRequest], Any]


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


async def serve(redis_url: str) -> tuple[grpc.aio.Server, RateLimitService, int]:
    service = RateLimitService(redis_url)
    server = grpc.aio.server()
    service.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, service, port


@pytest.fixture
async def rls() -> AsyncIterator[Stub]:
    await (await redis_or_skip()).aclose()  # skip (or fail in CI) without Redis
    server, service, port = await serve(REDIS_URL)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit
    await server.stop(0)
    await service.close()


async def test_counts_each_descriptor_and_reports_the_limit(rls: Stub) -> None:
    domain = f"test_{secrets.token_hex(6)}"
    orders = [("destination_service", "orders"), ("meshline_limit", "3/1m/fixed")]
    client = await redis_or_skip()
    await at_window_start(client, 60_000, room_ms=5000)
    await client.aclose()
    answers = [await rls(request(domain, orders)) for _ in range(4)]
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


async def test_descriptors_without_a_meshline_limit_are_allowed(rls: Stub) -> None:
    answer = await rls(request("test_other", [("generic_key", "anything")]))
    assert answer.overall_code == Code.OK
    assert answer.statuses[0].code == Code.OK


async def test_one_descriptor_over_its_limit_limits_the_request(rls: Stub) -> None:
    domain = f"test_{secrets.token_hex(6)}"
    small = [("destination_service", "a"), ("meshline_limit", "1/1h/fixed")]
    big = [("destination_service", "b"), ("meshline_limit", "100/1h/fixed")]
    assert (await rls(request(domain, small, big))).overall_code == Code.OK
    answer = await rls(request(domain, small, big))
    assert answer.overall_code == Code.OVER_LIMIT
    assert [s.code for s in answer.statuses] == [Code.OVER_LIMIT, Code.OK]


async def test_redis_down_answers_unavailable_at_once() -> None:
    """What the sidecar's failureMode acts on: an error, not a verdict and not a wait."""
    server, service, port = await serve(f"redis://127.0.0.1:{free_port()}/0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ShouldRateLimit(
                    request("test_down", [("meshline_limit", "1/1s/fixed")]), timeout=2
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "rate-limit counters unavailable (Redis redis://127.0.0.1:" in str(info.value.details())
    finally:
        await server.stop(0)
        await service.close()
