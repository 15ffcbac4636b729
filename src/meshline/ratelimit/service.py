"""``envoy.service.ratelimit.v3.RateLimitService`` on the control plane's gRPC server.

Who may count what: every call is authenticated by the xDS port's interceptor (the same
dataplane credential as ADS). A call is refused, before Redis is touched, when its domain is
not the caller's mesh, when a descriptor is not one a global RateLimit policy of that mesh
makes sidecars send for the caller's own service (:mod:`.allowed`), or when it asks for more
than :data:`MAX_HITS_ADDEND` hit(s) (one call must not drain a day's limit) or more than
:data:`MAX_DESCRIPTORS` descriptors. The sidecar then applies the policy's ``failureMode``.

Failure handling: when Redis cannot be reached the call ends at once with
UNAVAILABLE, and the sidecar's filter applies the policy's ``failureMode``
(``failure_mode_deny``). Redis timeouts are short and never retried, and the filter has
its own timeout, so a request never waits on a dead Redis.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from redis import asyncio as redis_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from meshline.core.ratelog import RateLimitedLog
from meshline.ratelimit.allowed import AllowedDescriptors, SnapshotOf
from meshline.ratelimit.counter import Count, WindowCounter, counter_key
from meshline.xds import names
from meshline.xds.rls_descriptor import LIMIT_KEY, POLICY_KEY, Limit
from meshline.xds.server import Caller, current_caller

if TYPE_CHECKING:
    from meshline.controlplane.settings import Settings
    from meshline.extensions import Extensions

log = logging.getLogger("meshline.ratelimit")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Short: a dead Redis must turn into an error quickly, not into piled-up waits. Sidecars
# wait at most their policy's ``timeout`` anyway (200ms by default).
REDIS_TIMEOUT_S = 0.25

Code = rls_pb2.RateLimitResponse.Code
# Meshline's filters count one hit per request; more in one call is an attempt to drain a limit.
MAX_HITS_ADDEND = 1
# One rate_limits entry per filter: one descriptor per call (a few of headroom).
MAX_DESCRIPTORS = 4


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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


def _hits(request: rls_pb2.RateLimitRequest, descriptor: ratelimit_pb2.RateLimitDescriptor) -> int:
    """A descriptor's own hits_addend overrides the request's; 0 or unset counts one."""
    if descriptor.HasField("hits_addend"):
        return int(descriptor.hits_addend.value) or 1
    return int(request.hits_addend) or 1


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, counter: WindowCounter, allowed: AllowedDescriptors, redis_url: str = "") -> None:
        self.counter = counter
        self.allowed = allowed
        self.redis_url = redis_url
        self._down_since = 0.0
        self._log = RateLimitedLog(log)
        self.refused = 0

    def check(self, request: rls_pb2.RateLimitRequest, caller: Caller | None) -> list[tuple[Limit, int]]:
        """The limit and hits of each descriptor; :class:`Refused` for anything a sidecar of
        ``caller`` (None: no authentication, the local demo) would not send."""
        mesh = names.ratelimit_domain_mesh(request.domain)
        if mesh is None:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"domain '{request.domain}' is not a Meshline mesh's")
        if caller is not None and caller.mesh is not None and caller.mesh != mesh:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"{caller.describe()} cannot count in mesh '{mesh}'")
        if not 1 <= len(request.descriptors) <= MAX_DESCRIPTORS:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(request.descriptors)} descriptors; a Meshline sidecar sends 1 to {MAX_DESCRIPTORS}",
            )
        out = []
        for i, descriptor in enumerate(request.descriptors):
            hits = _hits(request, descriptor)
            if hits > MAX_HITS_ADDEND:
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"descriptors[{i}]: hits_addend {hits} is more than the {MAX_HITS_ADDEND} a Meshline"
                    " sidecar adds per request",
                )
            entries = [(e.key, e.value) for e in descriptor.entries]
            policy = entries[0][1] if entries and entries[0][0] == POLICY_KEY else ""
            shapes = self.allowed.shapes(mesh, policy) if policy else []
            if not shapes:
                raise Refused(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"descriptors[{i}]: no RateLimit{f' {policy!r}' if policy else ''} with a global limit"
                    f" in mesh '{mesh}' sends it",
                )
            problems = [shape.problem(entries, caller.service if caller else None) for shape in shapes]
            if all(problems):
                raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"descriptors[{i}]: {problems[0]}")
            limit = Limit.decode(entries[-1][1]) if entries[-1][0] == LIMIT_KEY else None
            assert limit is not None, "a shape's limit is always a valid one"
            out.append((limit, hits))
        return out

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        caller = current_caller()
        try:
            counted = self.check(request, caller)
        except Refused as refused:
            self.refused += 1
            who = caller.describe() if caller else context.peer()
            self._log.warning("refused", "rate-limit call from %s refused: %s", who, refused.message)
            await context.abort(refused.code, refused.message)
        response = rls_pb2.RateLimitResponse(overall_code=Code.OK)
        reset_ms = 0
        for descriptor, (limit, hits) in zip(request.descriptors, counted, strict=True):
            entries = [(e.key, e.value) for e in descriptor.entries]
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
    """Adds the servicer to a gRPC server; the Redis client is made on first use (in the server's
    loop). ``snapshot`` gives a mesh's current snapshot (its policies), see :meth:`bind`."""

    def __init__(self, redis_url: str = DEFAULT_REDIS_URL, snapshot: SnapshotOf | None = None) -> None:
        self.redis_url = redis_url or DEFAULT_REDIS_URL
        self.snapshot = snapshot
        self._redis: Any = None
        self.servicer: RateLimitServicer | None = None

    def bind(self, ctx: Any) -> None:
        """``Extensions.on_start``: policies come from the reconciler's snapshots."""
        self.snapshot = ctx.reconciler.mesh_snapshot

    def register(self, server: grpc.aio.Server) -> None:
        assert self.snapshot is not None, "bind() (on start) before the server is built"
        self._redis = redis_client(self.redis_url)
        self.servicer = RateLimitServicer(
            WindowCounter(self._redis), AllowedDescriptors(self.snapshot), _safe_url(self.redis_url)
        )
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(self.servicer, server)

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


def install(ext: Extensions, settings: Settings) -> None:
    """Serve rate limits on the control plane's xDS gRPC server."""
    service = RateLimitService(settings.redis_url)
    ext.on_start.append(service.bind)
    ext.grpc_services.append(service.register)
    ext.on_stop.append(service.close)
