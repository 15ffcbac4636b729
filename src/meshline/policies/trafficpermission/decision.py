"""What a TrafficPermission set decides for one caller and one request: the model Envoy's RBAC
config is compiled from (:mod:`.rbac`), written as plain Python so tests can check the
compiled config against it.

Precedence: **the most specific matching policy decides**, ranked by

1. destination specificity (:meth:`TagSelector.specificity`: ``service`` counts 100, other tags 1),
2. source specificity (a named service beats ``*``),
3. HTTP ``rules`` (a policy limited to some requests beats one for every request);

at equal rank **deny beats allow**; traffic no policy matches gets the mesh default
(:meth:`MeshSpec.effective_default_permission`). So ``deny * -> orders`` plus
``allow web -> orders`` lets only web in, and ``allow web -> orders`` plus
``deny web -> orders /admin`` keeps web out of /admin.

Identity: a caller with a mesh certificate is its service; a caller without one
(plaintext, in ``permissive`` or ``disabled`` meshes) is unknown. Policies for ``service: '*'``
match everyone; allow policies for named services never match an unknown caller; deny
policies for named services *do* (fail closed: the unknown caller may be that service).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from meshline.core.resource import Resource, spec_as
from meshline.core.selectors import ANY, TagSelector
from meshline.policies.trafficpermission.api import HttpRule, TrafficPermissionSpec

ALLOW = "allow"
DENY = "deny"


@dataclass(frozen=True)
class Clause:
    """One (policy, source selector group): what it matches, its action and its rank."""

    policy: str
    action: str
    dry_run: bool
    services: frozenset[str] | None  # callers it names; None: any caller, even an unknown one
    unauthenticated: bool  # also matches callers without a certificate (named-service denies)
    rules: tuple[HttpRule, ...]
    rank: tuple[int, int, int]

    @property
    def deny(self) -> bool:
        return self.action == DENY

    def order_key(self) -> tuple[int, int, int, int, str]:
        """Sorts the clause that decides first: higher rank, then deny, then name."""
        return (-self.rank[0], -self.rank[1], -self.rank[2], 0 if self.deny else 1, self.policy)


@dataclass(frozen=True)
class Request:
    """An HTTP request as RBAC sees it; ``None`` where a TCP connection is checked."""

    path: str = "/"
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)


def best_destination(spec: TrafficPermissionSpec, tags: Mapping[str, str]) -> TagSelector | None:
    best: TagSelector | None = None
    for sel in spec.destinations:
        if sel.matches(tags) and (best is None or sel.specificity() > best.specificity()):
            best = sel
    return best


def clauses_for(policy: Resource, destination: TagSelector, fail_closed: bool) -> list[Clause]:
    """The clauses of a policy whose destination matched: one per source specificity."""
    spec = spec_as(policy, TrafficPermissionSpec)
    named: set[str] = set()
    anyone = False
    for sel in spec.sources:
        service = sel.match.get("service", ANY)
        if service == ANY:
            anyone = True
        else:
            named.add(service)
    rules = tuple(spec.rules)
    base = Clause(
        policy=policy.name,
        action=spec.action,
        dry_run=spec.dry_run,
        services=None,
        unauthenticated=True,
        rules=rules,
        rank=(destination.specificity(), 0, 1 if rules else 0),
    )
    out = []
    if named:
        out.append(
            replace(
                base,
                services=frozenset(named),
                unauthenticated=fail_closed and spec.action == DENY,
                rank=(base.rank[0], 100, base.rank[2]),
            )
        )
    if anyone:
        out.append(base)
    return out


def for_tcp(clauses: Iterable[Clause]) -> list[Clause]:
    """A TCP connection has no requests: an allow limited to some requests never matches it,
    a deny limited to some requests refuses the whole connection (fail closed)."""
    out = []
    for c in clauses:
        if not c.rules:
            out.append(c)
        elif c.deny:
            out.append(replace(c, rules=()))
    return out


def ordered(clauses: Iterable[Clause]) -> list[Clause]:
    return sorted(clauses, key=Clause.order_key)


def _callers(services: frozenset[str] | None) -> str:
    return "every caller" if services is None else ", ".join(sorted(services))


def _why_first(winner: Clause, loser: Clause) -> str:
    if winner.rank[0] != loser.rank[0]:
        return "its destination is more specific"
    if winner.rank[1] != loser.rank[1]:
        return "its source is more specific"
    if winner.rank[2] != loser.rank[2]:
        return "it is limited to some requests"
    if winner.deny != loser.deny:
        return "deny wins at equal specificity"
    return "equal specificity; its name sorts first"


def precedence(clauses: Sequence[Clause]) -> dict[str, list[str]]:
    """policy -> sentences saying which other policy decides instead of it, or which it decides
    over, for which callers (what `meshline inspect` shows when two permissions match the same
    traffic). Dry-run policies decide nothing; a policy limited to some requests decides only
    those, so it overrides the other one for them and not for the rest."""
    out: dict[str, list[str]] = {}
    enforced = [c for c in clauses if not c.dry_run]
    for c in enforced:
        for e in enforced:
            if e.policy == c.policy or e.order_key() >= c.order_key():
                continue
            if e.services is None:
                callers = c.services
            elif c.services is None:
                callers = e.services
            else:
                callers = c.services & e.services or None
                if callers is None:
                    continue  # no caller in common
            which = " for the requests its rules match" if e.rules else ""
            why = _why_first(e, c)
            for policy, line in (
                (c.policy, f"for {_callers(callers)}: {e.policy} ({e.action}) decides instead{which}, {why}"),
                (e.policy, f"for {_callers(callers)}: decides over {c.policy} ({c.action}){which}, {why}"),
            ):
                lines = out.setdefault(policy, [])
                if line not in lines:
                    lines.append(line)
    return out


def _rule_matches(rule: HttpRule, req: Request) -> bool:
    def path_ok() -> bool:
        for p in rule.paths:
            path = req.path.split("?", 1)[0]
            if p.exact is not None and path == p.exact:
                return True
            if p.prefix is not None and path.startswith(p.prefix):
                return True
            if p.regex is not None and re.fullmatch(p.regex, path):
                return True
        return not rule.paths

    def headers_ok() -> bool:
        for h in rule.headers:
            value = req.headers.get(h.name)
            if h.present is not None:
                ok = (value is not None) == h.present
            elif value is None:
                ok = False
            elif h.exact is not None:
                ok = value == h.exact
            elif h.prefix is not None:
                ok = value.startswith(h.prefix)
            else:
                ok = re.fullmatch(h.regex or "", value) is not None
            if not ok:
                return False
        return True

    return path_ok() and (not rule.methods or req.method in rule.methods) and headers_ok()


def clause_matches(c: Clause, caller: str | None, req: Request | None) -> bool:
    if c.services is not None and not (c.unauthenticated if caller is None else caller in c.services):
        return False
    if not c.rules:
        return True
    return req is not None and any(_rule_matches(r, req) for r in c.rules)


def decide(
    clauses: Sequence[Clause], default: str, caller: str | None, req: Request | None, *, dry_run: bool = False
) -> tuple[str, str | None]:
    """(action, deciding policy or None for the mesh default). ``dry_run``: count dry-run policies too."""
    for c in ordered(c for c in clauses if dry_run or not c.dry_run):
        if clause_matches(c, caller, req):
            return c.action, c.policy
    return default, None


def connection_decision(policies: Iterable[Resource], destination: Mapping[str, str], default: str,
                        fail_closed: bool, caller: str | None) -> tuple[str, str | None]:  # fmt: skip
    """What the policies decide for a TCP connection from ``caller`` to ``destination`` (tags):
    (action, deciding policy or None for the mesh default), as the L4 RBAC filter would."""
    clauses: list[Clause] = []
    for policy in policies:
        spec = spec_as(policy, TrafficPermissionSpec)
        dest = best_destination(spec, destination)
        if dest is not None:
            clauses.extend(for_tcp(clauses_for(policy, dest, fail_closed)))
    return decide(clauses, default, caller, None)
