"""Retry: try a failed request again, a bounded number of times, within a retry budget.

    kind: Retry
    mesh: default
    name: orders-retries
    spec:
      destinations: [{match: {service: orders}}]
      conf:
        http:
          attempts: 4                 # tries in all, the first one included
          perTryTimeout: 1s
          retryOn: [5xx, reset, connect-failure, retriable-status-codes]
          retriableStatusCodes: [409]
          backoff: {baseInterval: 25ms, maxInterval: 250ms}
          budget: {percent: 20, minRetryConcurrency: 3}
        tcp:
          maxConnectAttempts: 3

``conf: {}`` retries with the defaults below. The budget is always on unless disabled: at
any moment, retries in flight may be at most ``percent`` of the requests in flight (or
``minRetryConcurrency``, whichever is larger), so a failing service is not hit by a
multiple of its normal load.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator

from meshline.core.errors import FieldProblem
from meshline.core.resource import KindInfo, Resource, spec_as
from meshline.core.schema import Spec, format_duration
from meshline.core.selectors import SelectorSpec
from meshline.policies.common.fields import Percent, PositiveDuration, PositiveInt, service_only_destinations

RetryCondition = Literal[
    # HTTP
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    # gRPC status codes (from the grpc-status trailer)
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
]
DEFAULT_HTTP_RETRY_ON: tuple[RetryCondition, ...] = ("5xx", "reset", "connect-failure", "refused-stream")
DEFAULT_GRPC_RETRY_ON: tuple[RetryCondition, ...] = ("unavailable", "reset", "connect-failure", "refused-stream")
STATUS_CODES_CONDITION = "retriable-status-codes"


class Backoff(Spec):
    """Envoy's fully jittered exponential backoff: the n-th wait is random in [0, base * 2^n), capped."""

    base_interval: PositiveDuration = timedelta(milliseconds=25)
    max_interval: PositiveDuration | None = None  # default: 10 x baseInterval


class Budget(Spec):
    percent: Percent = 20.0  # of the requests in flight to this service
    min_retry_concurrency: int = Field(default=3, ge=0)
    disabled: bool = False  # then only CircuitBreaker maxRetries (default 3 in flight) limits retries


class HttpRetry(Spec):
    attempts: PositiveInt = 3
    per_try_timeout: PositiveDuration | None = None  # default: each try may use the whole request timeout
    retry_on: list[RetryCondition] | None = None  # default: DEFAULT_HTTP/GRPC_RETRY_ON by protocol
    retriable_status_codes: list[int] = Field(default_factory=list)
    backoff: Backoff = Field(default_factory=Backoff)
    budget: Budget = Field(default_factory=Budget)

    @field_validator("retriable_status_codes")
    @classmethod
    def _codes(cls, codes: list[int]) -> list[int]:
        for code in codes:
            if not 100 <= code <= 599:
                raise ValueError(f"{code} is not an HTTP status code (100-599)")
        return codes


class TcpRetry(Spec):
    max_connect_attempts: PositiveInt = 3  # connection attempts in all, the first one included


class RetryConf(Spec):
    http: HttpRetry | None = None  # None: HttpRetry() defaults for HTTP/gRPC services
    tcp: TcpRetry | None = None  # None: TcpRetry() defaults for TCP services


class RetrySpec(SelectorSpec):
    conf: RetryConf = Field(default_factory=RetryConf)


def _contradictions(res: Resource) -> list[FieldProblem]:
    http = spec_as(res, RetrySpec).conf.http
    if http is None:
        return []
    problems = []
    base = "spec.conf.http"
    listed = http.retry_on is not None and STATUS_CODES_CONDITION in http.retry_on
    if listed and not http.retriable_status_codes:
        problems.append(
            FieldProblem(
                f"{base}.retriableStatusCodes",
                "is required when retryOn has 'retriable-status-codes'; list the codes, e.g. [503, 409]",
            )
        )
    if http.retriable_status_codes and http.retry_on is not None and not listed:
        problems.append(
            FieldProblem(
                f"{base}.retryOn",
                "does not include 'retriable-status-codes', so retriableStatusCodes would never be used;"
                " add it to retryOn or remove retriableStatusCodes",
            )
        )
    b = http.backoff
    if b.max_interval is not None and b.max_interval < b.base_interval:
        problems.append(
            FieldProblem(
                f"{base}.backoff.maxInterval",
                f"{format_duration(b.max_interval)} is shorter than baseInterval"
                f" {format_duration(b.base_interval)}; raise maxInterval or lower baseInterval",
            )
        )
    return problems


def _attempts_column(r: Resource) -> str:
    return str((spec_as(r, RetrySpec).conf.http or HttpRetry()).attempts)


def _budget_column(r: Resource) -> str:
    budget = (spec_as(r, RetrySpec).conf.http or HttpRetry()).budget
    return "off" if budget.disabled else f"{budget.percent:g}%"


KIND = KindInfo(
    kind="Retry",
    plural="retries",
    spec=RetrySpec,
    summary="Retries with backoff and a retry budget for HTTP/gRPC; connect retries for TCP",
    is_policy=True,
    validators=(service_only_destinations, _contradictions),
    columns={"ATTEMPTS": _attempts_column, "BUDGET": _budget_column},
)
