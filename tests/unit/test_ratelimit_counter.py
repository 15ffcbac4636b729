"""The global limiter's counting, against a real Redis (``MESHLINE_TEST_REDIS``, default
redis://127.0.0.1:6379/15). Unreachable: skipped locally, a failure when ``CI=true``.

Each test uses its own random domain, so tests (and concurrent runs) never share counters.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import RedisError

from meshline.ratelimit.counter import KEY_PREFIX, WindowCounter, counter_key
from meshline.ratelimit.service import redis_client
from meshline.xds.rls_descriptor import Limit

pytestmark = pytest.mark.redis

REDIS_URL = os.environ.get("MESHLINE_TEST_REDIS", "redis://127.0.0.1:6379/15")


async def redis_or_skip() -> Any:
    client = redis_client(REDIS_URL, timeout=5)  # these tests are about counting, on a busy machine
    try:
        await client.ping()
    except (RedisError, OSError) as err:
        await client.aclose()
        reason = (
            f"Redis not reachable at {REDIS_URL}; start it with `sudo service redis-server start` or"
            f" `docker run -d -p 6379:6379 redis:7` (or set MESHLINE_TEST_REDIS). Error: {err}"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return client


@pytest.fixture
async def redis() -> AsyncIterator[Any]:
    client = await redis_or_skip()
    yield client
    await client.aclose()


@pytest.fixture
def domain() -> str:
    return f"test_{secrets.token_hex(6)}"


async def server_ms(redis: Any) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def at_window_start(redis: Any, window_ms: int, room_ms: int = 300) -> None:
    """Wait until at least ``room_ms`` remain in the current window (by Redis' clock)."""
    left = window_ms - (await server_ms(redis)) % window_ms
    if left < room_ms:
        await asyncio.sleep(left / 1000 + 0.01)


def test_limits_round_trip_through_their_descriptor_value() -> None:
    limit = Limit(200, 60, "sliding")
    assert limit.encode() == "200/1m/sliding"
    assert Limit.decode(limit.encode()) == limit
    assert Limit.find([("destination_service", "orders"), ("meshline_limit", "5/1s/fixed")]) == Limit(5, 1)
    for bad in ("", "5", "0/1s/fixed", "-1/1s/fixed", "5/10s/fixed", "5/1s/leaky", "x/1s/fixed"):
        assert Limit.decode(bad) is None, bad


def test_counter_keys_separate_every_entry_and_domain() -> None:
    a = counter_key("meshline_default", [("destination_service", "orders"), ("path", "/a")])
    assert a.startswith(f"{KEY_PREFIX}:meshline_default:{{")
    assert a == counter_key("meshline_default", [("destination_service", "orders"), ("path", "/a")])
    assert a != counter_key("meshline_default", [("destination_service", "orders"), ("path", "/b")])
    assert a != counter_key("meshline_other", [("destination_service", "orders"), ("path", "/a")])
    # entries are joined unambiguously
    assert counter_key("d", [("a", "b=c")]) != counter_key("d", [("a=b", "c")])


async def test_fixed_window_allows_the_limit_then_refuses(redis: Any, domain: str) -> None:
    counter, limit = WindowCounter(redis), Limit(5, 1, "fixed")
    key = counter_key(domain, [("destination_service", "orders")])
    await at_window_start(redis, limit.window_ms, room_ms=500)
    counts = [await counter.hit(key, limit) for _ in range(8)]
    assert [c.allowed for c in counts] == [True] * 5 + [False] * 3
    assert [c.remaining for c in counts] == [4, 3, 2, 1, 0, 0, 0, 0]
    assert all(0 < c.reset_ms <= 1000 for c in counts)
    # another descriptor has its own counter
    other = await counter.hit(counter_key(domain, [("destination_service", "inventory")]), limit)
    assert other.allowed and other.remaining == 4


async def test_fixed_window_starts_over_in_the_next_window(redis: Any, domain: str) -> None:
    counter, limit = WindowCounter(redis), Limit(2, 1, "fixed")
    key = counter_key(domain, [("destination_service", "orders")])
    await at_window_start(redis, limit.window_ms, room_ms=500)
    first = [await counter.hit(key, limit) for _ in range(3)]
    assert [c.allowed for c in first] == [True, True, False]
    await asyncio.sleep(first[-1].reset_ms / 1000 + 0.02)
    assert (await counter.hit(key, limit)).allowed
    # the finished window's key expires on its own
    ttl = [await redis.pttl(k) for k in await redis.keys(f"{KEY_PREFIX}:{domain}:*")]
    assert ttl and all(0 < t <= 2000 for t in ttl)


async def test_hits_addend_counts_several_requests_at_once(redis: Any, domain: str) -> None:
    counter, limit = WindowCounter(redis), Limit(10, 60, "fixed")
    key = counter_key(domain, [("destination_service", "orders")])
    await at_window_start(redis, limit.window_ms, room_ms=2000)
    assert (await counter.hit(key, limit, hits=7)).remaining == 3
    refused = await counter.hit(key, limit, hits=4)
    assert not refused.allowed and refused.remaining == 0


async def test_concurrent_hits_never_overshoot(redis: Any, domain: str) -> None:
    """Atomic scripts: 50 hits at once against a limit of 20 allow exactly 20."""
    counter = WindowCounter(redis)
    key = counter_key(domain, [("destination_service", "orders")])
    for limit in (Limit(20, 60, "fixed"), Limit(20, 60, "sliding")):
        await at_window_start(redis, limit.window_ms, room_ms=2000)
        k = f"{key}:{limit.algorithm}"
        counts = await asyncio.gather(*(counter.hit(k, limit) for _ in range(50)))
        assert sum(c.allowed for c in counts) == 20, limit


async def test_sliding_window_weighs_the_previous_window(redis: Any, domain: str) -> None:
    counter, limit = WindowCounter(redis), Limit(10, 1, "sliding")
    key = counter_key(domain, [("destination_service", "orders")])
    await at_window_start(redis, limit.window_ms, room_ms=900)
    first = [await counter.hit(key, limit) for _ in range(12)]
    assert sum(c.allowed for c in first) == 10  # refused hits are not counted
    # Early in the next window most of the previous window still overlaps the last second:
    # 10 * (1 - elapsed) weighted hits leave only a few allowed, where a fixed window would allow 10.
    await asyncio.sleep(first[-1].reset_ms / 1000 + 0.02)
    elapsed = (await server_ms(redis)) % limit.window_ms
    early = [await counter.hit(key, limit) for _ in range(10)]
    allowed = sum(c.allowed for c in early)
    assert allowed <= 10 * elapsed / 1000 + 2, (allowed, elapsed)
    assert not early[-1].allowed
    # two windows later the old hits no longer count
    await asyncio.sleep(early[-1].reset_ms / 1000 + 1.02)
    assert sum([(await counter.hit(key, limit)).allowed for _ in range(10)]) == 10


async def test_a_dead_redis_fails_at_once(domain: str) -> None:
    """A closed port: the error comes back immediately (no retries, no waiting)."""
    from meshline.testing.servers import free_port

    client = redis_client(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises((RedisError, OSError)):
            await asyncio.wait_for(WindowCounter(client).hit(counter_key(domain, []), Limit(1, 1)), timeout=2)
    finally:
        await client.aclose()
