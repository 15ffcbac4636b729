"""Timeout validation: bad input is refused with its field path and a fix."""

from __future__ import annotations

from typing import Any

import pytest

from meshline.kinds import default_kinds
from meshline.testing.policy_kit import problems

KINDS = default_kinds()


def timeout(conf: Any, **spec: Any) -> dict[str, Any]:
    return {"kind": "Timeout", "mesh": "default", "name": "t", "spec": {"conf": conf, **spec}}


def test_a_full_policy_decodes_and_round_trips() -> None:
    doc = timeout({"connectTimeout": "1.5s", "idleTimeout": "1h", "http": {"requestTimeout": "0s",
                   "streamIdleTimeout": "1m30s", "maxStreamDuration": "10m"}, "tcp": {"maxConnectionDuration": 60}},
                  sources=[{"match": {"service": "web", "zone": "a"}}])
    res = KINDS.decode(doc)
    assert KINDS.decode({**doc, "spec": res.spec.to_json()}).spec == res.spec
    assert res.spec.to_json()["conf"]["tcp"] == {"maxConnectionDuration": "1m"}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (timeout({"connectTimeout": "soon"}), "spec.conf.connectTimeout: 'soon' is not a duration"),
        (timeout({"connectTimeout": "0s"}), "spec.conf.connectTimeout: must be longer than 0"),
        (timeout({"connectTimeout": -1}), "spec.conf.connectTimeout: must not be negative"),
        (timeout({"http": {"requestTimeout": "5 seconds"}}), "spec.conf.http.requestTimeout: '5 seconds' is not a duration"),
        (timeout({"http": {"requestTimeout": "30s", "maxStreamDuration": "10s"}}),
         "spec.conf.http.requestTimeout: 30s is longer than maxStreamDuration 10s, which ends every stream first;"
         " lower requestTimeout or raise maxStreamDuration"),
        (timeout({}), "spec.conf: sets no timeout; set at least one of connectTimeout"),
        (timeout({"http": {}}), "spec.conf: sets no timeout"),
        (timeout({"http": {"reqTimeout": "1s"}}), "spec.conf.http.reqTimeout: is not a known field"),
        ({"kind": "Timeout", "mesh": "default", "name": "t", "spec": {}}, "spec.conf: is required"),
        (timeout({"connectTimeout": "1s"}, destinations=[{"match": {"service": "orders", "version": "v2"}}]),
         "spec.destinations[0].match.version: Timeout selects destinations by service only; remove 'version'"),
    ],
)
def test_bad_timeouts_name_the_field_and_the_fix(doc: dict[str, Any], expected: str) -> None:
    found = problems(doc)
    assert any(p.startswith(expected) for p in found), found
