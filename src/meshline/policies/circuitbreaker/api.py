"""CircuitBreaker: limits on what one caller sends to a service, and outlier detection.

    kind: CircuitBreaker
    mesh: default
    name: orders-breaker
    spec:
      destinations: [{match: {service: orders}}]
      conf:
        limits: {maxConnections: 100, maxPendingRequests: 50, maxRequests: 200, maxRetries: 5}
        outlierDetection:
          interval: 5s
          baseEjectionTime: 30s
          maxEjectionPercent: 50
          consecutive5xx: 5
          consecutiveGatewayFailures: 3
          successRate: {minimumHosts: 3, requestVolume: 50, standardDeviationFactor: 1.9}

Limits are per caller sidecar (each Envoy counts its own connections and requests).
Outlier detection runs only the detectors a policy lists; ``outlierDetection: {}`` means
``consecutive5xx: 5``. A Retry budget, when one applies, replaces ``maxRetries``.
"""

from __future__ import annotations

from pydantic import Field

from meshline.core.errors import FieldProblem
from meshline.core.resource import KindInfo, Resource, spec_as
from meshline.core.schema import Spec
from meshline.core.selectors import SelectorSpec
from meshline.policies.common.fields import PositiveInt, service_only_destinations, sets_something
from meshline.policies.common.outlier import OutlierDetection


class Limits(Spec):
    """Envoy's defaults when unset: 1024 connections, pending and requests, 3 retries in flight."""

    max_connections: PositiveInt | None = None
    max_pending_requests: PositiveInt | None = None
    max_requests: PositiveInt | None = None
    max_retries: int | None = Field(default=None, ge=0)  # retries in flight; 0 forbids retries


class CircuitBreakerConf(Spec):
    limits: Limits | None = None
    outlier_detection: OutlierDetection | None = None


class CircuitBreakerSpec(SelectorSpec):
    conf: CircuitBreakerConf


def _contradictions(res: Resource) -> list[FieldProblem]:
    spec = spec_as(res, CircuitBreakerSpec)
    conf = spec.conf
    problems = []
    limits_set = conf.limits is not None and sets_something(conf.limits.to_json())
    if not limits_set and conf.outlier_detection is None:
        problems.append(
            FieldProblem("spec.conf", "sets nothing; add limits (e.g. maxRequests: 100) or outlierDetection: {}")
        )
    od = conf.outlier_detection
    if od is None:
        return problems
    base = "spec.conf.outlierDetection"
    if od.consecutive_local_origin_failures is not None and not od.split_external_local_origin_errors:
        problems.append(
            FieldProblem(
                f"{base}.consecutiveLocalOriginFailures",
                "counts only when local-origin errors are kept apart;"
                " set splitExternalLocalOriginErrors: true or remove this field",
            )
        )
    if od.max_ejection_time is not None and od.max_ejection_time < od.base_ejection_time:
        problems.append(
            FieldProblem(
                f"{base}.maxEjectionTime",
                "is shorter than baseEjectionTime; raise maxEjectionTime or lower baseEjectionTime",
            )
        )
    return problems


def _limits_column(r: Resource) -> str:
    spec = spec_as(r, CircuitBreakerSpec)
    limits = spec.conf.limits
    return ",".join(f"{k}={v}" for k, v in limits.to_json().items()) if limits else "-"


def _outlier_column(r: Resource) -> str:
    spec = spec_as(r, CircuitBreakerSpec)
    return "on" if spec.conf.outlier_detection is not None else "off"


KIND = KindInfo(
    kind="CircuitBreaker",
    plural="circuitbreakers",
    spec=CircuitBreakerSpec,
    summary="Connection/request/retry limits and outlier detection (ejecting failing instances)",
    is_policy=True,
    aliases=("circuit-breaker", "circuit-breakers", "cb"),
    validators=(service_only_destinations, _contradictions),
    columns={"LIMITS": _limits_column, "OUTLIER-DETECTION": _outlier_column},
)
