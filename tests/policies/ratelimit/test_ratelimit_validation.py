"""RateLimit documents: good ones decode; each bad one names the field path and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from meshline.kinds import default_kinds
from meshline.testing.policy_kit import problems

KINDS = default_kinds()


def limit(conf: Any, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"destinations": [{"match": {"service": "orders"}}], "conf": conf}
    body.update(spec)
    return {"kind": "RateLimit", "mesh": "default", "name": "rl", "spec": body}


def test_a_good_policy_decodes_with_defaults() -> None:
    res = KINDS.decode(
        limit({"local": {"http": {"requests": 10}}, "global": {"requests": 100, "perHeader": "X-User"}})
    )
    out = res.spec.to_json()["conf"]
    assert out["local"] == {"http": {"requests": 10, "interval": "1s"}}
    assert out["global"] == {
        "requests": 100,
        "interval": "1s",
        "algorithm": "fixed",
        "perHeader": "x-user",
        "perPath": False,
        "failureMode": "open",
        "timeout": "200ms",
    }


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        ({}, "spec.conf: set local (per instance), global (shared by all instances), or both"),
        ({"local": {}}, "spec.conf.local: set http (requests per interval), tcp (connections per interval)"),
        ({"local": {"http": {"requests": 0}}}, "spec.conf.local.http.requests: must be at least 1"),
        ({"local": {"http": {"requests": -5}}}, "spec.conf.local.http.requests: must be at least 1"),
        ({"local": {"http": {"requests": "many"}}}, "spec.conf.local.http.requests: must be an integer"),
        (
            {"local": {"http": {"requests": 5, "interval": "every now and then"}}},
            "spec.conf.local.http.interval: 'every now and then' is not a duration",
        ),
        (
            {"local": {"http": {"requests": 5, "interval": "10ms"}}},
            "spec.conf.local.http.interval: must be at least 50ms",
        ),
        (
            {"local": {"tcp": {"connections": 0, "interval": "1s"}}},
            "spec.conf.local.tcp.connections: must be at least 1",
        ),
        ({"global": {"requests": 0}}, "spec.conf.global.requests: must be at least 1"),
        (
            {"global": {"requests": 10, "interval": "10s"}},
            "spec.conf.global.interval: '10s' is not a window the global limiter supports; use one of 1s, 1m, 1h, 24h",
        ),
        ({"global": {"requests": 10, "interval": "1x"}}, "spec.conf.global.interval: '1x' is not a duration"),
        (
            {"global": {"requests": 10, "failureMode": "maybe"}},
            "spec.conf.global.failureMode: input should be",
        ),
        ({"global": {"requests": 10, "algorithm": "leaky"}}, "spec.conf.global.algorithm: input should be"),
        ({"global": {"requests": 10, "timeout": "0s"}}, "spec.conf.global.timeout: must be from 1ms to 5s"),
        ({"global": {"requests": 10, "timeout": "1m"}}, "spec.conf.global.timeout: must be from 1ms to 5s"),
        (
            {"global": {"requests": 10, "perHeader": "x user"}},
            "spec.conf.global.perHeader: 'x user' is not an HTTP header name",
        ),
        ({"gloabl": {"requests": 10}}, "spec.conf.gloabl: is not a known field"),
    ],
)
def test_bad_limits_name_the_field(conf: Any, expected: str) -> None:
    found = problems(limit(conf))
    assert any(p.startswith(expected) for p in found), found


def test_sources_may_only_name_a_service() -> None:
    found = problems(limit({"local": {"http": {"requests": 1}}}, sources=[{"match": {"zone": "east"}}]))
    assert any(
        p.startswith("spec.sources[0].match.zone: this policy is enforced by the destination") for p in found
    )
