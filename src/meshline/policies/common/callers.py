"""Which policy applies to which caller, on the destination's inbound.

FaultInjection and RateLimit are enforced by the destination's sidecar (see the
docs for why). There the only trustworthy fact about a caller is its mTLS identity,
``spiffe://<trust domain>/<mesh>/<service>``, which Envoy puts into
``x-forwarded-client-cert`` (the inbound HCM sanitizes the header, so callers cannot
forge it). So these policies' ``sources`` name a service or ``*``, and rules are:

* one rule per caller service that some policy names and whose best policy (the
  shared precedence of :mod:`meshline.core.selectors`) names it;
* one fallback rule for every other caller: the best policy whose source is ``*``.

Without mTLS (mesh mode ``disabled``) callers cannot be told apart: only the fallback
rule exists. (Plaintext callers in ``permissive`` mode have no identity either, and
get the fallback.) This module is shared by the inbound policies; it is pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from meshline.core.errors import FieldProblem
from meshline.core.resource import Resource
from meshline.core.selectors import ANY, Match, SelectorSpec, TagSelector, best_policy
from meshline.render.mesh_snapshot import MeshSnapshot
from meshline.render.policy_kind import MeshCheck, MeshView, Resolved

XFCC = "x-forwarded-client-cert"
S = TypeVar("S", bound=SelectorSpec)


@dataclass(frozen=True)
class CallerRule(Generic[S]):
    match: Match
    spec: S  # the typed spec of match.policy
    # the caller service this rule is for; None for the fallback rule (every other caller)
    service: str | None
    # the caller services named by other rules (the fallback rule must not apply to them)
    others: tuple[str, ...] = ()

    @property
    def policy(self) -> Resource:
        return self.match.policy

    def identity_matcher(self, mesh: MeshSnapshot) -> route_components_pb2.HeaderMatcher | None:
        """Matches exactly the requests this rule is for; None when that is every request."""
        if self.service is not None:
            return identity_matcher(mesh, [self.service])
        if self.others:
            return identity_matcher(mesh, self.others, invert=True)
        return None


def identity_matcher(
    mesh: MeshSnapshot, services: Iterable[str], *, invert: bool = False
) -> route_components_pb2.HeaderMatcher:
    """Requests whose mTLS caller is one of ``services`` (or none of them, inverted).

    A request without the header (no client certificate) matches only when inverted.
    Envoy's regex must match the whole value (``By=...;Hash=...;URI=<caller>``), hence
    the optional elements around ``URI=``.
    """
    ids = "|".join(re.escape(mesh.identity(s)) for s in sorted(services))
    return route_components_pb2.HeaderMatcher(
        name=XFCC,
        string_match=string_pb2.StringMatcher(
            safe_regex=regex_pb2.RegexMatcher(regex=f"(?:.*[;,])?URI=(?:{ids})(?:[;,].*)?")
        ),
        invert_match=invert,
    )


def caller_rules(
    resolved: Resolved[S], destination_tags: Mapping[str, str], mesh: MeshSnapshot
) -> list[CallerRule[S]]:
    """The rules for one inbound: named callers first (sorted), then the fallback rule."""
    specs = {m.policy.key: m.spec for m in resolved.matches}
    policies = [m.policy for m in resolved.matches]
    named: list[CallerRule[S]] = []
    if mesh.spec.mtls.mode != "disabled":
        services = sorted({s for p in policies for s in _named_services(p)})
        for service in services:
            best = best_policy(policies, [{"service": service}], destination_tags)
            if best is not None and best.source.match.get("service", ANY) == service:
                named.append(CallerRule(best, specs[best.policy.key], service))
    rules = list(named)
    fallback = best_policy(policies, [{}], destination_tags)
    if fallback is not None:
        rules.append(CallerRule(fallback, specs[fallback.policy.key], None, tuple(r.service for r in named if r.service)))
    return rules


def _named_services(policy: Resource) -> list[str]:
    spec = policy.spec
    assert isinstance(spec, SelectorSpec)
    return [s for sel in spec.sources if (s := sel.match.get("service", ANY)) != ANY]


def source_problems(sources: Sequence[TagSelector]) -> list[FieldProblem]:
    """Inbound policies can only tell callers apart by service (their mTLS identity)."""
    problems = []
    for i, sel in enumerate(sources):
        for tag in sorted(sel.match):
            if tag != "service":
                problems.append(
                    FieldProblem(
                        f"spec.sources[{i}].match.{tag}",
                        "this policy is enforced by the destination, which knows a caller only by its"
                        " mTLS identity (its service); match on 'service' only, or use '*'",
                    )
                )
    return problems


def selector_key(selectors: Sequence[TagSelector]) -> frozenset[tuple[tuple[str, str], ...]]:
    """Order-free identity of a selector list ('*' tags dropped: they match anything)."""
    return frozenset(tuple(sorted((k, v) for k, v in sel.match.items() if v != ANY)) for sel in selectors)


def conflict_problems(res: Resource, others: Iterable[Resource]) -> list[FieldProblem]:
    """Another policy of the same kind selecting exactly the same traffic: only one would apply."""
    spec = res.spec
    assert isinstance(spec, SelectorSpec)
    mine = (selector_key(spec.sources), selector_key(spec.destinations))
    for other in sorted(others, key=lambda r: r.name):
        if other.kind != res.kind or other.mesh != res.mesh or other.name == res.name:
            continue
        theirs = other.spec
        assert isinstance(theirs, SelectorSpec)
        if (selector_key(theirs.sources), selector_key(theirs.destinations)) == mine:
            return [
                FieldProblem(
                    "spec.destinations",
                    f"{res.kind} '{other.name}' already selects the same sources and destinations, so only"
                    " one of the two would apply; merge them into one policy, or narrow the sources or"
                    " destinations of one of them",
                )
            ]
    return []


def _conflicts(res: Resource, view: MeshView) -> list[FieldProblem]:
    return conflict_problems(res, view.of_kind(res.kind))


# FaultInjection's and RateLimit's apply-time check: one policy per caller and service.
ONE_PER_CALLER = MeshCheck(_conflicts)
