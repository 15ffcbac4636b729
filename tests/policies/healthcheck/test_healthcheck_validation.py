"""HealthCheck validation: bad input is refused with its field path and a fix."""

from __future__ import annotations

from typing import Any

import pytest

from meshline.kinds import default_kinds
from meshline.policies.healthcheck.api import parse_status
from meshline.testing.policy_kit import problems

KINDS = default_kinds()


def check(**conf: Any) -> dict[str, Any]:
    return {"kind": "HealthCheck", "mesh": "default", "name": "hc",
            "spec": {"destinations": [{"match": {"service": "orders"}}], "conf": conf}}


def test_status_ranges_are_inclusive_in_yaml_and_half_open_for_envoy() -> None:
    assert parse_status(200) == (200, 201)
    assert parse_status("200-299") == (200, 300)
    assert parse_status("204") == (204, 205)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (check(interval="0s"), "spec.conf.interval: must be longer than 0"),
        (check(timeout="fast"), "spec.conf.timeout: 'fast' is not a duration"),
        (check(unhealthyThreshold=0), "spec.conf.unhealthyThreshold: must be 1 or more"),
        (check(healthyThreshold=-1), "spec.conf.healthyThreshold: must be 1 or more"),
        (check(http={"path": "health"}), "spec.conf.http.path: must start with '/' (e.g. '/health')"),
        (check(http={"expectedStatuses": []}), "spec.conf.http.expectedStatuses: must list at least one status"),
        (check(http={"expectedStatuses": ["2xx"]}),
         "spec.conf.http.expectedStatuses: '2xx' is not a status code or a range like '200-299'"),
        (check(http={"expectedStatuses": ["300-200"]}),
         "spec.conf.http.expectedStatuses: '300-200' must be status codes from 100 to 599, low to high"),
        (check(http={"expectedStatuses": [99]}), "spec.conf.http.expectedStatuses: '99' must be status codes"),
        (check(http={}, tcp={}), "spec.conf.tcp: a health check is one of http, tcp or grpc, and http is set too"),
        (check(tcp={"expect": ["PONG"]}), "spec.conf.tcp.send: is required with expect"),
        (check(initialJitter="20s"), "spec.conf.initialJitter: is longer than interval 10s"),
        (check(passive={"unhealthyThreshold": 0}), "spec.conf.passive.unhealthyThreshold: must be 1 or more"),
        (check(passive={"penaltyInterval": "0s"}), "spec.conf.passive.penaltyInterval: must be longer than 0"),
    ],
)
def test_bad_checks_name_the_field_and_the_fix(doc: dict[str, Any], expected: str) -> None:
    found = problems(doc)
    assert any(p.startswith(expected) for p in found), found
