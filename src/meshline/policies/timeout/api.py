"""Timeout: how long a connection, a request and an idle stream may take.

    kind: Timeout
    mesh: default
    name: orders-timeouts
    spec:
      sources: [{match: {service: web}}]
      destinations: [{match: {service: orders}}]
      conf:
        connectTimeout: 2s
        idleTimeout: 30m
        http: {requestTimeout: 5s, streamIdleTimeout: 1m, maxStreamDuration: 10m}
        tcp: {maxConnectionDuration: 1h}

Fields a policy leaves out keep the defaults of ``meshline.render.defaults`` (defined
once: the base generators render them, and tests/policies/timeout checks the rendered
config says the same). ``0`` turns a timeout off,
except ``connectTimeout``, which must be positive.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import model_validator

from meshline.core.errors import FieldProblem
from meshline.core.resource import KindInfo, Resource, spec_as
from meshline.core.schema import Duration, Spec, format_duration
from meshline.core.selectors import SelectorSpec
from meshline.policies.common.fields import PositiveDuration, service_only_destinations, sets_something


class HttpTimeouts(Spec):
    request_timeout: Duration | None = None  # the whole request incl. retries (route timeout)
    stream_idle_timeout: Duration | None = None  # no bytes either way on one request/stream
    max_stream_duration: Duration | None = None  # hard cap on one stream's lifetime


class TcpTimeouts(Spec):
    max_connection_duration: Duration | None = None


class TimeoutConf(Spec):
    connect_timeout: PositiveDuration | None = None
    idle_timeout: Duration | None = None
    http: HttpTimeouts | None = None
    tcp: TcpTimeouts | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> TimeoutConf:
        if not sets_something(self.model_dump(exclude_none=True)):
            raise ValueError(
                "sets no timeout; set at least one of connectTimeout, idleTimeout, http.requestTimeout,"
                " http.streamIdleTimeout, http.maxStreamDuration, tcp.maxConnectionDuration"
            )
        return self


class TimeoutSpec(SelectorSpec):
    conf: TimeoutConf

    def request_timeout(self) -> timedelta | None:
        """(common.timeouts.SetsRequestTimeout) what Retry's apply-time check compares with."""
        return self.conf.http.request_timeout if self.conf.http else None


def _contradictions(res: Resource) -> list[FieldProblem]:
    spec = spec_as(res, TimeoutSpec)
    http = spec.conf.http
    if http is None or not http.request_timeout or not http.max_stream_duration:
        return []
    if http.request_timeout > http.max_stream_duration:
        return [
            FieldProblem(
                "spec.conf.http.requestTimeout",
                f"{format_duration(http.request_timeout)} is longer than maxStreamDuration"
                f" {format_duration(http.max_stream_duration)}, which ends every stream first;"
                " lower requestTimeout or raise maxStreamDuration",
            )
        ]
    return []


def _request_column(r: Resource) -> str:
    spec = spec_as(r, TimeoutSpec)
    http = spec.conf.http
    return format_duration(http.request_timeout) if http and http.request_timeout is not None else "-"


def _connect_column(r: Resource) -> str:
    spec = spec_as(r, TimeoutSpec)
    value = spec.conf.connect_timeout
    return format_duration(value) if value is not None else "-"


KIND = KindInfo(
    kind="Timeout",
    plural="timeouts",
    spec=TimeoutSpec,
    summary="Connect, request, idle and per-stream timeouts for outbound HTTP and TCP traffic",
    is_policy=True,
    validators=(service_only_destinations, _contradictions),
    columns={"CONNECT": _connect_column, "REQUEST": _request_column},
)
