"""HTTPRoute validation: every bad input is refused with its field path and a fix."""

from __future__ import annotations

from typing import Any

import pytest

from meshline.kinds import default_kinds
from meshline.testing.policy_kit import problems

KINDS = default_kinds()


def route(*rules: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"kind": "HTTPRoute", "mesh": "default", "name": "r",
            "spec": {"destinations": [{"match": {"service": "orders"}}], "rules": list(rules), **spec}}


def v2(**rule: Any) -> dict[str, Any]:
    return {"backends": [{"tags": {"version": "v2"}}], **rule}


def test_every_feature_together_decodes() -> None:
    KINDS.decode(route(
        v2(matches=[{"path": {"regex": "/orders/[0-9]+"}, "method": "get",
                     "headers": [{"name": "X-A", "regex": "a|b"}], "queryParams": [{"name": "q", "present": True}]}],
           mirrors=[{"service": "orders-shadow", "percent": 0.5}], timeout="1.5s",
           requestHeaders={"set": [{"name": "x-a", "value": "1"}]}, rewrite={"host": "orders.internal"}),
        {"matches": [{"grpc": {"service": "pkg.Svc"}}], "backends": [{"service": "inventory", "weight": 3}]},
        {"matches": [{"path": {"prefix": "/old"}}], "redirect": {"prefix": "/new", "statusCode": 308}},
        {"directResponse": {"status": 404, "body": "none"}},
    ))


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        # weights and backends
        (route({"backends": [{"tags": {"version": "v1"}, "weight": 0}, {"tags": {"version": "v2"}, "weight": 0}]}),
         "spec.rules[0].backends: weights add up to 0"),
        (route({"backends": [{"tags": {"version": "v1"}}, {"tags": {"version": "v1"}, "weight": 3}]}),
         "spec.rules[0].backends[1]: is the same backend as backends[0]"),
        (route({"backends": [{"tags": {"version": "v1"}, "weight": -1}]}),
         "spec.rules[0].backends[0].weight: input should be greater than or equal to 0"),
        (route({"backends": [{"tags": {"service": "x"}}]}),
         "spec.rules[0].backends[0].tags: name the service with 'service'"),
        # shapes
        (route(v2(matches=[{"path": {"exact": "/a", "prefix": "/b"}}])),
         "spec.rules[0].matches[0].path: give exactly one of exact, prefix, regex"),
        (route(v2(matches=[{"path": {"prefix": "api"}}])), "spec.rules[0].matches[0].path: 'api' must start with '/'"),
        (route(v2(matches=[{"headers": [{"name": "x-a"}]}])),
         "spec.rules[0].matches[0].headers[0]: give exactly one of exact, regex, present"),
        (route(v2(matches=[{"headers": [{"name": ":path", "exact": "/"}]}])),
         "spec.rules[0].matches[0].headers[0].name: ':path' is a pseudo-header"),
        (route(v2(matches=[{"method": "FETCH"}])), "spec.rules[0].matches[0].method: 'FETCH' is not an HTTP method"),
        (route(v2(matches=[{"grpc": {"service": "a.B"}, "path": {"prefix": "/x"}}])),
         "spec.rules[0].matches[0]: give either grpc or path"),
        (route(v2(matches=[{"grpc": {"service": "a.B"}, "method": "GET"}])),
         "spec.rules[0].matches[0].method: gRPC calls are always POST"),
        (route(v2(matches=[{"grpc": {"method": "pkg.Get"}}])), "spec.rules[0].matches[0].grpc: method 'pkg.Get' holds a '.'"),
        (route({"backends": [{"tags": {"version": "v1"}}], "redirect": {"path": "/x"}}),
         "spec.rules[0]: give one of backends, redirect, directResponse"),
        (route({"redirect": {"path": "/x"}, "mirrors": [{"service": "s"}]}),
         "spec.rules[0]: mirrors only apply to forwarded requests"),
        (route({"directResponse": {"status": 700}}), "spec.rules[0].directResponse.status: input should be less than or equal to 599"),
        (route({"directResponse": {"status": 200, "body": "x" * 5000}}), "spec.rules[0].directResponse.body"),
        (route({"redirect": {"statusCode": 304}}), "spec.rules[0].redirect.statusCode"),
        (route({"mirrors": [{"percent": 10}]}), "spec.rules[0].mirrors[0]: give service or tags"),
        (route({"mirrors": [{"service": "s", "percent": 150}]}), "spec.rules[0].mirrors[0].percent"),
        (route({"requestHeaders": {"set": [{"name": "host", "value": "x"}]}}),
         "spec.rules[0].requestHeaders.set[0].name: the Host header is changed with rewrite.host"),
        (route({"requestHeaders": {"set": [{"name": "x-a", "value": "1"}], "remove": ["X-A"]}}),
         "spec.rules[0].requestHeaders.remove[0]: header 'x-a' is also changed by set[0]"),
        (route({"rewrite": {"prefix": "/a", "path": "/b"}}), "spec.rules[0].rewrite: give at most one of prefix, path, regex"),
        (route({"matches": [{"path": {"regex": "/a.*"}}], "rewrite": {"prefix": "/b"}}),
         "spec.rules[0].rewrite.prefix: replacing a prefix needs prefix or exact path matches"),
        (route({"rewrite": {"regex": {"pattern": "^/a$", "substitution": "/b/\\1"}}}),
         "spec.rules[0].rewrite.regex.substitution: refers to group \\1 but the pattern has 0 group(s)"),
        # durations
        (route(v2(timeout="soon")), "spec.rules[0].timeout: 'soon' is not a duration"),
        (route(v2(timeout="5 seconds")), "spec.rules[0].timeout: '5 seconds' is not a duration"),
        # regexes Envoy (RE2) rejects
        (route(v2(matches=[{"path": {"regex": "/(?!admin).*"}}])),
         "spec.rules[0].matches[0].path.regex: is not a valid RE2 regex (invalid perl operator: (?!); RE2 (Envoy's regex engine) has no lookahead"),
        (route(v2(matches=[{"headers": [{"name": "x", "regex": "(a)\\1"}]}])),
         "spec.rules[0].matches[0].headers[0].regex: is not a valid RE2 regex (invalid escape sequence: \\1); RE2 (Envoy's regex engine) has no backreferences"),
        (route(v2(matches=[{"queryParams": [{"name": "q", "regex": "[a-"}]}])),
         "spec.rules[0].matches[0].queryParams[0].regex: is not a valid RE2 regex"),
        (route(v2(matches=[{"path": {"regex": "(" + "[^/]+/" * 25 + ")"}}])),
         "spec.rules[0].matches[0].path.regex: is too complex for Envoy (RE2 program size"),
        # contradictions and unreachable rules
        (route(v2(matches=[{"headers": [{"name": "x-a", "exact": "1"}, {"name": "X-A", "exact": "2"}]}])),
         "spec.rules[0].matches[0].headers[1].name: 'x-a' is already matched by headers[0]"),
        (route(v2(), {"backends": [{"tags": {"version": "v1"}}]}),
         "spec.rules[1]: can never be reached: spec.rules[0] above already takes every request"),
        (route(v2(matches=[{"path": {"prefix": "/api"}}]), v2(matches=[{"path": {"prefix": "/api/v1"}, "method": "GET"}])),
         "spec.rules[1].matches[0]: can never be reached: spec.rules[0].matches[0] above"),
        (route(v2(matches=[{"headers": [{"name": "x-a", "present": True}]}]),
               v2(matches=[{"headers": [{"name": "x-a", "exact": "1"}, {"name": "x-b", "exact": "2"}]}])),
         "spec.rules[1].matches[0]: can never be reached"),
        (route(v2(matches=[{"path": {"exact": "/a"}}, {"path": {"exact": "/a"}}])),
         "spec.rules[0].matches[1]: adds nothing: spec.rules[0].matches[0] of the same rule"),
        (route(v2(), destinations=[{"match": {"service": "orders", "version": "v2"}}]),
         "spec.destinations[0].match.version: a route's destination is a whole service"),
        (route(), "spec.rules: list should have at least 1 item"),
    ],
)
def test_bad_routes_name_the_field(doc: dict[str, Any], expected: str) -> None:
    found = problems(doc)
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(
    "rules",
    [
        # a narrower rule before a wider one is the usual, valid order
        [v2(matches=[{"path": {"prefix": "/api/v2"}}]), v2(matches=[{"path": {"prefix": "/api"}}])],
        # /api does not cover /apix (prefixes are whole segments)
        [v2(matches=[{"path": {"prefix": "/api"}}]), v2(matches=[{"path": {"prefix": "/apix"}}])],
        # different header values, different methods, grpc vs plain
        [v2(matches=[{"headers": [{"name": "x", "exact": "1"}]}]), v2(matches=[{"headers": [{"name": "x", "exact": "2"}]}])],
        [v2(matches=[{"method": "GET"}]), v2(matches=[{"method": "POST"}])],
        [v2(matches=[{"grpc": {"service": "a.B"}}]), v2(matches=[{"path": {"prefix": "/a.B"}}])],
        # a header must be absent vs present: neither covers the other
        [v2(matches=[{"headers": [{"name": "x", "present": False}]}]), v2(matches=[{"headers": [{"name": "x", "present": True}]}])],
    ],
)
def test_rules_that_can_all_be_reached_are_accepted(rules: list[dict[str, Any]]) -> None:
    KINDS.decode(route(*rules))


def test_all_problems_are_reported_at_once() -> None:
    doc = route({"backends": [{"weight": 0}]}, v2(matches=[{"path": {"regex": "(?=x)"}}]))
    assert len(problems(doc)) >= 2
