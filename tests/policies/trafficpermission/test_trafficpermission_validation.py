"""TrafficPermission input checks: every mistake names its field path and the fix; the examples
in docs/security-permissions.md are valid as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshline.core.errors import ValidationError
from meshline.kinds import default_kinds
from meshline.policies.trafficpermission.api import TrafficPermissionSpec

DOCS = Path(__file__).parents[3] / "docs" / "security-permissions.md"


def decode(spec: dict[str, Any]) -> Any:
    return default_kinds().decode({"kind": "TrafficPermission", "mesh": "default", "name": "p", "spec": spec})


def problems(spec: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as err:
        decode(spec)
    return {p.path: p.message for p in err.value.problems}


def test_minimal_policy_allows_every_caller_to_every_service() -> None:
    res = decode({"action": "allow"})
    spec = res.spec
    assert isinstance(spec, TrafficPermissionSpec)
    assert spec.mode == "enforce" and spec.rules == []
    assert [s.match for s in spec.sources] == [{"service": "*"}]


def test_action_is_required_and_checked() -> None:
    assert problems({})["spec.action"] == "is required"
    assert "spec.action" in problems({"action": "permit"})
    assert "spec.mode" in problems({"action": "deny", "mode": "shadow"})


def test_sources_select_by_service_identity_only() -> None:
    found = problems({"action": "allow", "sources": [{"match": {"service": "web", "version": "v2"}}]})
    msg = found["spec.sources[0].match.version"]
    assert "proves only their service" in msg and "remove 'version'" in msg
    found = problems({"action": "allow", "sources": [{"match": {"service": "Web_1"}}]})
    assert "is not a service name" in found["spec.sources[0].match.service"]


def test_destinations_may_use_any_tag() -> None:
    decode(
        {"action": "deny", "destinations": [{"match": {"service": "orders", "version": "v2", "zone": "*"}}]}
    )
    found = problems({"action": "deny", "destinations": [{"match": {"service": "orders", "bad tag": "x"}}]})
    assert "spec.destinations[0].match.bad tag" in found


@pytest.mark.parametrize(
    ("rule", "path", "needle"),
    [
        ({}, "spec.rules[0]", "set paths, methods, headers or claims"),
        ({"paths": [{"prefix": "api"}]}, "spec.rules[0].paths[0].prefix", "must start with '/'"),
        (
            {"paths": [{"exact": "/a", "prefix": "/b"}]},
            "spec.rules[0].paths[0]",
            "exactly one of exact, prefix or regex",
        ),
        ({"paths": [{}]}, "spec.rules[0].paths[0]", "exactly one of"),
        ({"paths": [{"regex": "/(?=admin)"}]}, "spec.rules[0].paths[0].regex", "lookahead"),
        ({"paths": [{"regex": "(a"}]}, "spec.rules[0].paths[0].regex", "not a valid RE2 regex"),
        ({"methods": ["GET", "G E T"]}, "spec.rules[0].methods", "is not an HTTP method"),
        (
            {"headers": [{"name": "x-a"}]},
            "spec.rules[0].headers[0]",
            "exactly one of exact, prefix, regex or present",
        ),
        (
            {"headers": [{"name": "x a", "exact": "1"}]},
            "spec.rules[0].headers[0].name",
            "is not an HTTP header name",
        ),
        ({"headers": [{"name": "x-a", "regex": "a\\1"}]}, "spec.rules[0].headers[0].regex", "backreferences"),
        ({"paths": [{"prefix": "/"}], "host": "x"}, "spec.rules[0].host", "is not a known field"),
    ],
)
def test_rule_mistakes_name_the_field(rule: dict[str, Any], path: str, needle: str) -> None:
    found = problems({"action": "deny", "rules": [rule]})
    assert path in found, found
    assert needle in found[path]


def test_methods_and_header_names_are_normalized() -> None:
    spec = decode(
        {
            "action": "deny",
            "rules": [{"methods": ["post"], "headers": [{"name": "X-Debug", "present": True}]}],
        }
    ).spec
    assert spec.rules[0].methods == ["POST"]
    assert spec.rules[0].headers[0].name == "x-debug"


def test_every_source_problem_is_reported_at_once() -> None:
    found = problems(
        {
            "action": "allow",
            "sources": [{"match": {"zone": "east"}}, {"match": {"service": "web", "team": "a"}}],
        }
    )
    assert set(found) == {"spec.sources[0].match.zone", "spec.sources[1].match.team"}


def test_documented_examples_are_valid() -> None:
    text = DOCS.read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    docs = [d for b in blocks for d in yaml.safe_load_all(b) if isinstance(d, dict) and "kind" in d]
    kinds = default_kinds()
    permissions = [kinds.decode(d) for d in docs if d["kind"] == "TrafficPermission"]
    assert len(permissions) >= 6
    for d in docs:
        if d["kind"] == "Mesh":
            kinds.decode(d)
