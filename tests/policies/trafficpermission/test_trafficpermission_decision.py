"""The compiled RBAC config decides exactly what the decision model says.

Random permission sets (seeded) are compiled to Envoy RBAC protos; a small interpreter of the
principal trees (the subset Meshline emits, with Envoy's semantics) then evaluates each
(caller, request) pair and must agree with :func:`decision.decide`: which requests are refused,
by which policy (the name in the 403 body), and which would be refused by a dry-run policy.
"""

from __future__ import annotations

import random
import re

import pytest
from envoy.config.rbac.v3 import rbac_pb2
from envoy.type.matcher.v3 import string_pb2

from meshline.core.resource import Resource
from meshline.policies.trafficpermission.api import TrafficPermissionSpec
from meshline.policies.trafficpermission.decision import (
    ALLOW,
    DENY,
    Clause,
    Request,
    best_destination,
    clauses_for,
    decide,
    for_tcp,
)
from meshline.policies.trafficpermission.rbac import compile_clauses
from meshline.xds import names

ID = "spiffe://td/default/{}".format
DESTINATION = {"service": "orders", "version": "v1", "protocol": "http"}
CALLERS = ["web", "legacy", "batch", None]  # None: no certificate
REQUESTS = [
    Request("/", "GET"),
    Request("/admin/users", "POST"),
    Request("/admin/users", "GET", {"x-debug": "1"}),
    Request("/v2/admin/x", "DELETE", {"x-tenant": "acme-eu"}),
    Request("/api/items?x=1", "PUT", {"x-tenant": "other"}),
]
RULES = [
    {"paths": [{"prefix": "/admin/"}]},
    {"paths": [{"exact": "/"}], "methods": ["GET"]},
    {"paths": [{"regex": "/v[0-9]+/admin/.*"}], "methods": ["DELETE", "POST"]},
    {"headers": [{"name": "x-debug", "present": True}]},
    {"headers": [{"name": "x-tenant", "prefix": "acme"}], "methods": ["DELETE"]},
    {"headers": [{"name": "x-tenant", "exact": "other"}, {"name": "x-debug", "present": False}]},
]
DESTINATIONS = [
    {"service": "orders"},
    {"service": "orders", "version": "v1"},
    {"service": "*"},
    {"version": "v1"},
    {"service": "orders", "version": "v2"},  # does not match
]


# --- an interpreter of the principals Meshline emits (Envoy's semantics) ---------------------


def _string(m: string_pb2.StringMatcher, value: str | None) -> bool:
    if value is None:
        return False
    kind = m.WhichOneof("match_pattern")
    if kind == "exact":
        return value == m.exact
    if kind == "prefix":
        return value.startswith(m.prefix)
    if kind == "safe_regex":
        return re.fullmatch(m.safe_regex.regex, value) is not None
    raise AssertionError(f"unexpected matcher {kind}")


def principal_matches(p: rbac_pb2.Principal, caller: str | None, req: Request | None) -> bool:
    kind = p.WhichOneof("identifier")
    if kind == "any":
        return True
    if kind == "not_id":
        return not principal_matches(p.not_id, caller, req)
    if kind == "and_ids":
        return all(principal_matches(x, caller, req) for x in p.and_ids.ids)
    if kind == "or_ids":
        return any(principal_matches(x, caller, req) for x in p.or_ids.ids)
    if kind == "authenticated":
        if caller is None:
            return False
        return not p.authenticated.HasField("principal_name") or _string(
            p.authenticated.principal_name, ID(caller)
        )
    assert req is not None, f"{kind} principal on a TCP connection"
    if kind == "url_path":
        return _string(p.url_path.path, req.path.split("?", 1)[0])
    if kind == "header":
        h = p.header
        value = req.method if h.name == ":method" else req.headers.get(h.name)
        if h.WhichOneof("header_match_specifier") == "present_match":
            return (value is not None) == h.present_match
        return _string(h.string_match, value)
    raise AssertionError(f"unexpected principal {kind}")


def denied_by(rbac: rbac_pb2.RBAC | None, caller: str | None, req: Request | None) -> str | None:
    """The DENY policy that matches; the compiler makes them mutually exclusive."""
    if rbac is None:
        return None
    assert rbac.action == rbac_pb2.RBAC.DENY
    hits = [
        k
        for k, pol in rbac.policies.items()
        if any(principal_matches(p, caller, req) for p in pol.principals)
    ]
    assert len(hits) <= 1, f"several policies match at once: {hits}"
    return hits[0] if hits else None


# --- random permission sets ----------------------------------------------------------------------


def random_policies(rng: random.Random, count: int) -> list[Resource]:
    out = []
    for i in range(count):
        sources = rng.choice(
            [
                [],
                [{"match": {"service": "*"}}],
                [{"match": {"service": "web"}}],
                [{"match": {"service": "legacy"}}, {"match": {"service": "web"}}],
                [{"match": {"service": "batch"}}, {"match": {"service": "*"}}],
            ]
        )
        doc = {
            "destinations": [{"match": rng.choice(DESTINATIONS)}],
            "action": rng.choice([ALLOW, DENY]),
            "mode": rng.choice(["enforce", "enforce", "dry-run"]),
            "rules": rng.sample(RULES, rng.choice([0, 0, 1, 2])),
        }
        if sources:
            doc["sources"] = sources
        out.append(
            Resource(
                "TrafficPermission",
                f"p{i}-{rng.randrange(100)}",
                TrafficPermissionSpec.model_validate(doc),
                "default",
            )
        )
    return out


def clauses(policies: list[Resource], fail_closed: bool, l7: bool) -> list[Clause]:
    out: list[Clause] = []
    for p in policies:
        assert isinstance(p.spec, TrafficPermissionSpec)
        dst = best_destination(p.spec, DESTINATION)
        if dst is not None:
            mine = clauses_for(p, dst, fail_closed)
            out.extend(mine if l7 else for_tcp(mine))
    return out


@pytest.mark.parametrize("seed", range(60))
def test_compiled_rbac_agrees_with_the_model(seed: int) -> None:
    rng = random.Random(seed)
    policies = random_policies(rng, rng.randint(0, 7))
    default = rng.choice([ALLOW, DENY])
    fail_closed = rng.random() < 0.5
    for l7 in (True, False):
        cs = clauses(policies, fail_closed, l7)
        compiled = compile_clauses(cs, default == DENY, ID)
        for caller in CALLERS:
            for req in REQUESTS if l7 else [None]:
                now, by = decide(cs, default, caller, req)
                then, then_by = decide(cs, default, caller, req, dry_run=True)
                where = f"seed {seed}, l7={l7}, caller {caller}, {req}"
                expected = None if now == ALLOW else (by or names.DEFAULT_PERMISSION_POLICY)
                assert denied_by(compiled.rules, caller, req) == expected, where
                would = then_by if now == ALLOW and then == DENY else None
                assert denied_by(compiled.shadow, caller, req) == would, where


def _policy(name: str, **spec: object) -> Resource:
    return Resource("TrafficPermission", name, TrafficPermissionSpec.model_validate(spec), "default")


def _decide(
    policies: list[Resource], default: str, caller: str | None, req: Request | None = None
) -> tuple[str, str | None]:
    return decide(clauses(policies, fail_closed=True, l7=True), default, caller, req or Request())


def test_most_specific_wins_deny_wins_ties() -> None:
    deny_all = _policy("deny-all", destinations=[{"match": {"service": "orders"}}], action="deny")
    allow_web = _policy(
        "allow-web",
        sources=[{"match": {"service": "web"}}],
        destinations=[{"match": {"service": "orders"}}],
        action="allow",
    )
    # a named source is more specific than '*': only web gets in
    assert _decide([deny_all, allow_web], ALLOW, "web") == (ALLOW, "allow-web")
    assert _decide([deny_all, allow_web], ALLOW, "legacy") == (DENY, "deny-all")
    # same rank: deny wins
    deny_web = _policy(
        "a-deny-web",
        sources=[{"match": {"service": "web"}}],
        destinations=[{"match": {"service": "orders"}}],
        action="deny",
    )
    assert _decide([allow_web, deny_web], ALLOW, "web") == (DENY, "a-deny-web")
    # a more specific destination beats a more specific source
    allow_any_v1 = _policy(
        "allow-v1", destinations=[{"match": {"service": "orders", "version": "v1"}}], action="allow"
    )
    assert _decide([deny_web, allow_any_v1], DENY, "web") == (ALLOW, "allow-v1")
    # HTTP rules beat no rules at the same selectors
    admin = _policy(
        "deny-admin",
        sources=[{"match": {"service": "web"}}],
        destinations=[{"match": {"service": "orders"}}],
        action="deny",
        rules=[{"paths": [{"prefix": "/admin/"}]}],
    )
    assert _decide([allow_web, admin], DENY, "web", Request("/admin/x")) == (DENY, "deny-admin")
    assert _decide([allow_web, admin], DENY, "web", Request("/shop")) == (ALLOW, "allow-web")


def test_unknown_callers_match_only_any_allows_and_every_deny() -> None:
    allow_web = _policy(
        "allow-web",
        sources=[{"match": {"service": "web"}}],
        destinations=[{"match": {"service": "orders"}}],
        action="allow",
    )
    allow_any = _policy("allow-any", destinations=[{"match": {"service": "orders"}}], action="allow")
    deny_legacy = _policy(
        "deny-legacy",
        sources=[{"match": {"service": "legacy"}}],
        destinations=[{"match": {"service": "orders"}}],
        action="deny",
    )
    assert _decide([allow_web], DENY, None) == (DENY, None)
    assert _decide([allow_any], DENY, None) == (ALLOW, "allow-any")
    assert _decide([allow_any, deny_legacy], ALLOW, None) == (DENY, "deny-legacy")  # fail closed
    assert _decide([allow_any, deny_legacy], ALLOW, "web") == (ALLOW, "allow-any")
