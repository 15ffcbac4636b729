"""RateLimit: cap the requests (or connections) a service accepts.

kind: RateLimit
mesh: default
name: orders-limits
spec:
  sources: [{match: {service: '*'}}]         # or a caller service: its own limit
  destinations: [{match: {service: orders}}]
  conf:
    local:                                   # per sidecar (instance), no dependencies
      http: {requests: 100, interval: 1s}
      tcp: {connections: 20, interval: 1s}   # for tcp services
    global:                                  # one limit for all instances, kept in Redis
      requests: 300
      interval: 1s                           # 1s, 1m, 1h or 24h
      algorithm: fixed                       # or sliding
      perHeader: x-user-id                   # optional: a separate limit per header value
      perPath: false                         # optional: a separate limit per request path
      failureMode: open                      # Redis/RLS down: open = allow, closed = 503
      timeout: 200ms                         # how long a sidecar waits for a verdict
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator, model_validator

from meshline.core.errors import FieldProblem
from meshline.core.resource import KindInfo, Resource, spec_as
from meshline.core.schema import Duration, Spec, format_duration
from meshline.core.selectors import SelectorSpec
from meshline.policies.common.callers import source_problems
from meshline.policies.common.fields import HEADER_NAME_RE
from meshline.xds.rls_descriptor import window_name

# Envoy refills a token bucket at most every 50ms.
MIN_LOCAL_INTERVAL = timedelta(milliseconds=50)
MAX_COUNT = 1_000_000_000


def _count(v: int) -> int:
    if v < 1:
        raise ValueError("must be at least 1; to refuse all traffic use a TrafficPermission instead")
    if v > MAX_COUNT:
        raise ValueError(f"must be at most {MAX_COUNT}")
    return v


def _local_interval(v: timedelta) -> timedelta:
    if v < MIN_LOCAL_INTERVAL:
        raise ValueError("must be at least 50ms (e.g. 1s); Envoy refills token buckets at most every 50ms")
    if v > timedelta(days=1):
        raise ValueError("must be at most 24h")
    return v


class RequestRate(Spec):
    requests: int
    interval: Duration = timedelta(seconds=1)

    _c = field_validator("requests")(classmethod(lambda cls, v: _count(v)))
    _i = field_validator("interval")(classmethod(lambda cls, v: _local_interval(v)))


class ConnectionRate(Spec):
    connections: int
    interval: Duration = timedelta(seconds=1)

    _c = field_validator("connections")(classmethod(lambda cls, v: _count(v)))
    _i = field_validator("interval")(classmethod(lambda cls, v: _local_interval(v)))


class LocalConf(Spec):
    http: RequestRate | None = None
    tcp: ConnectionRate | None = None

    @model_validator(mode="after")
    def _something(self) -> LocalConf:
        if self.http is None and self.tcp is None:
            raise ValueError("set http (requests per interval), tcp (connections per interval), or both")
        return self


class GlobalConf(Spec):
    requests: int
    interval: Duration = timedelta(seconds=1)
    algorithm: Literal["fixed", "sliding"] = "fixed"
    per_header: str | None = None
    per_path: bool = False
    failure_mode: Literal["open", "closed"] = "open"
    timeout: Duration = timedelta(milliseconds=200)

    _c = field_validator("requests")(classmethod(lambda cls, v: _count(v)))

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: timedelta) -> timedelta:
        seconds = v.total_seconds()
        if not seconds.is_integer() or window_name(int(seconds)) is None:
            raise ValueError(
                f"'{format_duration(v)}' is not a window the global limiter supports; use one of"
                " 1s, 1m, 1h, 24h (e.g. 500 per 10s is 50 per 1s)"
            )
        return v

    @field_validator("per_header")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        if v is None:
            return v
        low = v.lower()
        if not HEADER_NAME_RE.match(low):
            raise ValueError(f"'{v}' is not an HTTP header name (e.g. x-user-id)")
        return low

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: timedelta) -> timedelta:
        if not timedelta(milliseconds=1) <= v <= timedelta(seconds=5):
            raise ValueError("must be from 1ms to 5s (e.g. 200ms): every request waits this long at most")
        return v

    @property
    def window_s(self) -> int:
        return int(self.interval.total_seconds())


class RateLimitConf(Spec):
    local: LocalConf | None = None
    global_: GlobalConf | None = Field(default=None, alias="global")

    @model_validator(mode="after")
    def _something(self) -> RateLimitConf:
        if self.local is None and self.global_ is None:
            raise ValueError("set local (per instance), global (shared by all instances), or both")
        return self


class RateLimitSpec(SelectorSpec):
    conf: RateLimitConf


def _checks(r: Resource) -> list[FieldProblem]:
    spec = spec_as(r, RateLimitSpec)
    return source_problems(spec.sources)


def _targets(r: Resource) -> str:
    spec = spec_as(r, RateLimitSpec)
    return " ".join(d.describe() for d in spec.destinations)


def _limits(r: Resource) -> str:
    spec = spec_as(r, RateLimitSpec)
    parts = []
    local, glob = spec.conf.local, spec.conf.global_
    if local is not None and local.http is not None:
        parts.append(f"local {local.http.requests}/{format_duration(local.http.interval)}")
    if local is not None and local.tcp is not None:
        parts.append(f"local {local.tcp.connections} conn/{format_duration(local.tcp.interval)}")
    if glob is not None:
        parts.append(f"global {glob.requests}/{format_duration(glob.interval)} ({glob.failure_mode})")
    return ", ".join(parts)


KIND = KindInfo(
    kind="RateLimit",
    plural="ratelimits",
    spec=RateLimitSpec,
    summary="Cap the requests or connections a service accepts, per instance (local) or in total (global)",
    is_policy=True,
    aliases=("rl",),
    validators=(_checks,),
    columns={"DESTINATIONS": _targets, "LIMITS": _limits},
)
