"""FaultInjection documents: good ones decode; each bad one names the field path and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from meshline.kinds import default_kinds
from meshline.testing.policy_kit import problems

KINDS = default_kinds()


def fault(conf: Any = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "destinations": [{"match": {"service": "orders"}}],
        "conf": conf if conf is not None else {"faults": [{"abort": {"percentage": 50, "httpStatus": 503}}]},
    }
    body.update(spec)
    return {"kind": "FaultInjection", "mesh": "default", "name": "f", "spec": body}


def test_a_good_policy_decodes_and_round_trips() -> None:
    conf = {
        "faults": [
            {
                "match": {"headers": {"X-Meshline-Fault": "true"}},
                "delay": {"percentage": 100, "value": "200ms"},
            },
            {"abort": {"percentage": 0.5, "grpcStatus": 14}},
        ]
    }
    res = KINDS.decode(fault(conf, sources=[{"match": {"service": "web"}}]))
    out = res.spec.to_json()
    assert out["conf"]["faults"][0] == {
        "match": {"headers": {"x-meshline-fault": "true"}},
        "delay": {"percentage": 100.0, "value": "200ms"},
    }
    assert out["conf"]["faults"][1]["abort"] == {"percentage": 0.5, "grpcStatus": 14}


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        ({"faults": []}, "spec.conf.faults: list should have at least 1 item"),
        ({"faults": [{}]}, "spec.conf.faults[0]: a fault needs a delay, an abort, or both"),
        (
            {"faults": [{"delay": {"percentage": 150, "value": "1s"}}]},
            "spec.conf.faults[0].delay.percentage: must be a percentage from 0 to 100",
        ),
        (
            {"faults": [{"delay": {"percentage": -1, "value": "1s"}}]},
            "spec.conf.faults[0].delay.percentage: must be a percentage from 0 to 100",
        ),
        (
            {"faults": [{"delay": {"percentage": 10, "value": "soon"}}]},
            "spec.conf.faults[0].delay.value: 'soon' is not a duration",
        ),
        (
            {"faults": [{"delay": {"percentage": 10, "value": "0s"}}]},
            "spec.conf.faults[0].delay.value: must be longer than 0",
        ),
        (
            {"faults": [{"abort": {"percentage": 10}}]},
            "spec.conf.faults[0].abort: set exactly one of httpStatus (e.g. 503) or grpcStatus",
        ),
        (
            {"faults": [{"abort": {"percentage": 10, "httpStatus": 503, "grpcStatus": 14}}]},
            "spec.conf.faults[0].abort: set exactly one of httpStatus",
        ),
        (
            {"faults": [{"abort": {"percentage": 10, "httpStatus": 99}}]},
            "spec.conf.faults[0].abort.httpStatus: must be an HTTP status from 200 to 599",
        ),
        (
            {"faults": [{"abort": {"percentage": 10, "grpcStatus": 0}}]},
            "spec.conf.faults[0].abort.grpcStatus: must be a gRPC status code from 1 to 16",
        ),
        (
            {
                "faults": [
                    {"match": {"headers": {":path": "/x"}}, "abort": {"percentage": 1, "httpStatus": 503}}
                ]
            },
            "spec.conf.faults[0].match.headers: ':path' is not an HTTP header name",
        ),
        (
            {"faults": [{"abort": {"percentage": 1, "httpStatus": 503, "bogus": 1}}]},
            "spec.conf.faults[0].abort.bogus: is not a known field",
        ),
    ],
)
def test_bad_faults_name_the_field(conf: Any, expected: str) -> None:
    found = problems(fault(conf))
    assert any(p.startswith(expected) for p in found), found


def test_sources_may_only_name_a_service() -> None:
    found = problems(fault(sources=[{"match": {"service": "web", "version": "v1"}}]))
    assert any(
        p.startswith("spec.sources[0].match.version: this policy is enforced by the destination")
        for p in found
    ), found
