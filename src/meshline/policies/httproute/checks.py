"""Checks that need a whole HTTPRoute: regexes Envoy would reject, rules that can never be
reached, contradictions and weights. Each problem names its field path and the fix.

Only clear mistakes are refused. "Unreachable" is decided conservatively: a match is
reported only when an earlier one provably takes every request it could take (a regex is
compared by its text, so two different regexes never shadow each other here).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from meshline.core.errors import FieldProblem
from meshline.core.resource import Resource, spec_as
from meshline.policies.common.backends import backend_problems, destination_problems
from meshline.policies.common.regex import group_count, regex_problem
from meshline.policies.httproute.api import (
    HeaderMatch,
    HeaderModifier,
    HTTPRouteSpec,
    QueryParamMatch,
    RequestMatch,
    Rule,
)


@dataclass(frozen=True)
class PathCondition:
    """A path match as Envoy sees it: kind is exact, prefix (whole segments) or regex."""

    kind: str
    value: str

    def covers(self, other: PathCondition) -> bool:
        if self.kind == "prefix":
            if self.value == "/":
                return True
            if other.kind == "regex":
                return False
            return other.value == self.value or other.value.startswith(self.value + "/")
        return self == other


def normalized_prefix(prefix: str) -> str:
    """``/api/`` and ``/api`` mean the same segment prefix; ``/`` stays ``/``."""
    return prefix.rstrip("/") or "/"


def path_condition(match: RequestMatch) -> PathCondition | None:
    if match.grpc is not None:
        service, method = match.grpc.service, match.grpc.method
        if service and method:
            return PathCondition("exact", f"/{service}/{method}")
        if service:
            return PathCondition("prefix", f"/{service}")
        return PathCondition("regex", f"/[^/]+/{re.escape(method or '')}")
    path = match.path
    if path is None:
        return None
    if path.exact is not None:
        return PathCondition("exact", path.exact)
    if path.prefix is not None:
        return PathCondition("prefix", normalized_prefix(path.prefix))
    return PathCondition("regex", path.regex or "")


def _value_covers(a: HeaderMatch | QueryParamMatch, b: HeaderMatch | QueryParamMatch) -> bool:
    if a.present is True:
        return b.present is not False
    return (a.exact, a.regex, a.present) == (b.exact, b.regex, b.present)


def _conditions_cover(
    mine: list[HeaderMatch] | list[QueryParamMatch], theirs: list[HeaderMatch] | list[QueryParamMatch]
) -> bool:
    by_name = {c.name: c for c in theirs}
    return all(c.name in by_name and _value_covers(c, by_name[c.name]) for c in mine)


def covers(a: RequestMatch, b: RequestMatch) -> bool:
    """True when every request ``b`` matches is also matched by ``a`` (so ``a`` first hides ``b``)."""
    pa, pb = path_condition(a), path_condition(b)
    if pa is not None and (pb is None or not pa.covers(pb)):
        return False
    if a.grpc is not None and b.grpc is None:
        return False  # a also requires a gRPC content type
    if a.method is not None and a.method != b.method:
        return False
    return _conditions_cover(a.headers, b.headers) and _conditions_cover(a.query_params, b.query_params)


CATCH_ALL = RequestMatch()


def _effective_matches(rule: Rule) -> list[RequestMatch]:
    return rule.matches or [CATCH_ALL]


def _unreachable(spec: HTTPRouteSpec) -> Iterator[FieldProblem]:
    earlier: list[tuple[str, RequestMatch]] = []
    for i, rule in enumerate(spec.rules):
        own: list[tuple[str, RequestMatch]] = []
        for j, match in enumerate(_effective_matches(rule)):
            path = f"spec.rules[{i}].matches[{j}]" if rule.matches else f"spec.rules[{i}]"
            hidden_by = next((where for where, prior in earlier if covers(prior, match)), None)
            same_rule = next((where for where, prior in own if covers(prior, match)), None)
            if hidden_by is not None:
                yield FieldProblem(
                    path,
                    f"can never be reached: {hidden_by} above already takes every request it would match;"
                    " move this rule up or narrow the earlier one",
                )
            elif same_rule is not None:
                yield FieldProblem(path, f"adds nothing: {same_rule} of the same rule already matches these requests; remove it")
            own.append((path, match))
        earlier.extend(own)


def _match_problems(path: str, match: RequestMatch) -> Iterator[FieldProblem]:
    if match.path is not None and match.path.regex is not None and (why := regex_problem(match.path.regex)):
        yield FieldProblem(f"{path}.path.regex", why)
    if match.grpc is not None and match.method not in (None, "POST"):
        yield FieldProblem(f"{path}.method", f"gRPC calls are always POST, so {match.method} never matches; remove method")
    groups: list[tuple[str, list[HeaderMatch | QueryParamMatch]]] = [
        ("headers", list(match.headers)), ("queryParams", list(match.query_params))
    ]
    for group, items in groups:
        seen: dict[str, int] = {}
        for k, item in enumerate(items):
            if item.regex is not None and (why := regex_problem(item.regex)):
                yield FieldProblem(f"{path}.{group}[{k}].regex", why)
            if item.name in seen:
                yield FieldProblem(
                    f"{path}.{group}[{k}].name",
                    f"'{item.name}' is already matched by {group}[{seen[item.name]}]; combine the two"
                    " (one condition per name; use a regex for alternatives)",
                )
            seen.setdefault(item.name, k)


def _modifier_problems(path: str, mod: HeaderModifier) -> Iterator[FieldProblem]:
    owner: dict[str, str] = {}
    for group, names in (("set", [h.name for h in mod.set]), ("add", [h.name for h in mod.add]),
                         ("remove", list(mod.remove))):
        for k, name in enumerate(names):
            where = f"{group}[{k}]"
            prior = owner.get(name)
            if prior is not None and not (group == "add" and prior.startswith("add")):
                yield FieldProblem(
                    f"{path}.{where}",
                    f"header '{name}' is also changed by {prior}; keep one change per header",
                )
            owner.setdefault(name, where)


_GROUP_REF = re.compile(r"\\(\d)")


def _prefix_problem(path: str, rule: Rule, alternative: str) -> Iterator[FieldProblem]:
    for j, m in enumerate(rule.matches):
        if (m.path is not None and m.path.regex is not None) or m.grpc is not None:
            yield FieldProblem(
                path,
                f"replacing a prefix needs prefix or exact path matches, but matches[{j}] is a"
                f" {'gRPC' if m.grpc else 'regex'} match; use {alternative}",
            )
            return


def _rewrite_problems(base: str, rule: Rule) -> Iterator[FieldProblem]:
    if rule.redirect is not None and rule.redirect.prefix is not None:
        yield from _prefix_problem(f"{base}.redirect.prefix", rule, "redirect.path")
    rw = rule.rewrite
    if rw is None:
        return
    path = f"{base}.rewrite"
    if rw.prefix is not None:
        yield from _prefix_problem(f"{path}.prefix", rule, "rewrite.regex or rewrite.path")
    if rw.regex is not None:
        why = regex_problem(rw.regex.pattern)
        if why:
            yield FieldProblem(f"{path}.regex.pattern", why)
        else:
            groups = group_count(rw.regex.pattern)
            for ref in _GROUP_REF.findall(rw.regex.substitution):
                if int(ref) > groups:
                    yield FieldProblem(
                        f"{path}.regex.substitution",
                        f"refers to group \\{ref} but the pattern has {groups} group(s); add ( ) around what to keep",
                    )
                    break


def route_problems(res: Resource) -> list[FieldProblem]:
    spec = spec_as(res, HTTPRouteSpec)
    problems = list(destination_problems(spec))
    for i, rule in enumerate(spec.rules):
        base = f"spec.rules[{i}]"
        for j, match in enumerate(rule.matches):
            problems.extend(_match_problems(f"{base}.matches[{j}]", match))
        problems.extend(backend_problems(f"{base}.backends", rule.backends))
        problems.extend(_rewrite_problems(base, rule))
        for name, mod in (("requestHeaders", rule.request_headers), ("responseHeaders", rule.response_headers)):
            if mod is not None:
                problems.extend(_modifier_problems(f"{base}.{name}", mod))
    problems.extend(_unreachable(spec))
    return problems
