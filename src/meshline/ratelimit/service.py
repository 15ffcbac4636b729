"""``envoy.service.ratelimit.v3.RateLimitService`` on the control plane's gRPC server.

Failure handling: when Redis cannot be reached the call ends at once with
UNAVAILABLE, and the sidecar's filter applies the policy's ``failureMode``
(``failure_mode_deny``). Redis timeouts are short and never retried, and the filter has
its own timeout, so a request never waits on a dead Redis.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from redis import asyncio as redis_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from meshline.ratelimit.counter import Count, WindowCounter, counter_key
from meshline.ratelimit.descriptor import Limit

log = logging.getLogger("meshline.ratelimit")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Short: a dead Redis must turn into an error quickly, not into piled-up waits. Sidecars
# wait at most their policy's ``timeout`` anyway (200ms by default).
REDIS_TIMEOUT_S = 0.25

Code = rls_pb2.RateLimitResponse.Code


def redis_client(url: str, timeout: float = REDIS_TIMEOUT_S) -> Any:
    """A client that fails fast: short connect/read timeouts, no retries."""
    return redis_asyncio.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def _status(limit: Limit, count: Count) -> rls_pb2.RateLimitResponse.DescriptorStatus:
    status = rls_pb2.RateLimitResponse.DescriptorStatus(
        code=Code.OK if count.allowed else Code.OVER_LIMIT,
        current_limit=rls_pb2.RateLimitResponse.RateLimit(requests_per_unit=limit.requests, unit=limit.unit),
        limit_remaining=count.remaining,
    )
    status.duration_until_reset.FromMilliseconds(count.reset_ms)
    return status


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, counter: WindowCounter, redis_url: str = "") -> None:
        self.counter = counter
        self.redis_url = redis_url
        self._down_since = 0.0

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        hits = request.hits_addend or 1
        response = rls_pb2.RateLimitResponse(overall_code=Code.OK)
        reset_ms = 0
        for descriptor in request.descriptors:
            entries = [(e.key, e.value) for e in descriptor.entries]
            limit = Limit.find(entries)
            if limit is None:  # not ours: nothing to count against
                response.statuses.append(rls_pb2.RateLimitResponse.DescriptorStatus(code=Code.OK))
                continue
            try:
                count = await self.counter.hit(counter_key(request.domain, entries), limit, hits)
            except (RedisError, OSError) as err:
                self._note_down(err)
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"rate-limit counters unavailable (Redis {self.redis_url}): {err}",
                )
            self._note_up()
            response.statuses.append(_status(limit, count))
            if not count.allowed:
                response.overall_code = Code.OVER_LIMIT
                reset_ms = max(reset_ms, count.reset_ms)
        if response.overall_code == Code.OVER_LIMIT:
            retry_after = max(1, math.ceil(reset_ms / 1000))
            response.response_headers_to_add.append(
                base_pb2.HeaderValue(key="retry-after", value=str(retry_after))
            )
        return response

    def _note_down(self, err: Exception) -> None:
        if not self._down_since:
            self._down_since = time.monotonic()
            log.warning(
                "Redis at %s is unreachable (%s); sidecars apply each policy's failureMode until it is back",
                self.redis_url,
                err,
            )

    def _note_up(self) -> None:
        if self._down_since:
            log.info(
                "Redis at %s is reachable again after %.1fs",
                self.redis_url,
                time.monotonic() - self._down_since,
            )
            self._down_since = 0.0


class RateLimitService:
    """Adds the servicer to a gRPC server; the Redis client is made on first use (in the server's loop)."""

    def __init__(self, redis_url: str = DEFAULT_REDIS_URL) -> None:
        self.redis_url = redis_url or DEFAULT_REDIS_URL
        self._redis: Any = None

    def register(self, server: grpc.aio.Server) -> None:
        self._redis = redis_client(self.redis_url)
        servicer = RateLimitServicer(WindowCounter(self._redis), _safe_url(self.redis_url))
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(servicer, server)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest


def install(ext: Any, settings: Any) -> None:
    """Serve rate limits on the control plane's xDS gRPC server (``Extensions``, ``Settings``)."""
    service = RateLimitService(settings.redis_url)
    ext.grpc_services.append(service.register)
    ext.on_stop.append(service.close)
