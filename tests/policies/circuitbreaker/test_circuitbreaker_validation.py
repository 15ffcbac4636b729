"""CircuitBreaker validation: bad input is refused with its field path and a fix."""

from __future__ import annotations

from typing import Any

import pytest

from meshline.kinds import default_kinds
from meshline.testing.policy_kit import problems

KINDS = default_kinds()


def breaker(**conf: Any) -> dict[str, Any]:
    return {"kind": "CircuitBreaker", "mesh": "default", "name": "cb",
            "spec": {"destinations": [{"match": {"service": "orders"}}], "conf": conf}}


def test_aliases_find_the_kind() -> None:
    assert KINDS.get("cb").kind == KINDS.get("circuitbreakers").kind == "CircuitBreaker"


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (breaker(), "spec.conf: sets nothing; add limits"),
        (breaker(limits={}), "spec.conf: sets nothing; add limits"),
        (breaker(limits={"maxConnections": 0}), "spec.conf.limits.maxConnections: must be 1 or more"),
        (breaker(limits={"maxRequests": -5}), "spec.conf.limits.maxRequests: must be 1 or more"),
        (breaker(limits={"maxRetries": -1}), "spec.conf.limits.maxRetries: input should be greater than or equal to 0"),
        (breaker(limits={"maxPendingRequests": "lots"}), "spec.conf.limits.maxPendingRequests: must be an integer"),
        (breaker(outlierDetection={"interval": "0s"}), "spec.conf.outlierDetection.interval: must be longer than 0"),
        (breaker(outlierDetection={"baseEjectionTime": "half a minute"}),
         "spec.conf.outlierDetection.baseEjectionTime: 'half a minute' is not a duration"),
        (breaker(outlierDetection={"maxEjectionPercent": 101}),
         "spec.conf.outlierDetection.maxEjectionPercent: must be a percentage from 0 to 100"),
        (breaker(outlierDetection={"consecutive5xx": 0}), "spec.conf.outlierDetection.consecutive5xx: must be 1 or more"),
        (breaker(outlierDetection={"consecutiveLocalOriginFailures": 3}),
         "spec.conf.outlierDetection.consecutiveLocalOriginFailures: counts only when local-origin errors are kept"
         " apart; set splitExternalLocalOriginErrors: true or remove this field"),
        (breaker(outlierDetection={"baseEjectionTime": "1m", "maxEjectionTime": "30s"}),
         "spec.conf.outlierDetection.maxEjectionTime: is shorter than baseEjectionTime"),
        (breaker(outlierDetection={"successRate": {"standardDeviationFactor": 0}}),
         "spec.conf.outlierDetection.successRate.standardDeviationFactor: must be greater than 0"),
        (breaker(outlierDetection={"failurePercentage": {"threshold": 200}}),
         "spec.conf.outlierDetection.failurePercentage.threshold: must be a percentage from 0 to 100"),
    ],
)
def test_bad_breakers_name_the_field_and_the_fix(doc: dict[str, Any], expected: str) -> None:
    found = problems(doc)
    assert any(p.startswith(expected) for p in found), found
