"""Compile the decision model (:mod:`.decision`) into one Envoy RBAC filter with action DENY.

Each Envoy RBAC policy is one boolean tree of principals (identities, and for HTTP the path,
method and headers), so "the most specific policy decides" becomes, for clause ``c`` in
decision order, ``matches(c) and not (matches of every clause before c)``:

* ``rules`` (enforced), one Envoy policy per deny TrafficPermission, named after it:
  the requests it decides; plus ``mesh_default`` when the mesh default is deny: the requests
  no enforced policy matches. Envoy's ``rbac_access_denied_matched_policy[<name>]`` then names
  the deciding policy, which the local reply mapper turns into the 403 body.
* ``shadow_rules``, one per dry-run deny TrafficPermission: the requests it would decide
  with the dry-run policies enforced too, *and* that are allowed today. ``rbac.shadow_denied``
  therefore counts exactly the would-be new denials, and ``shadow_effective_policy_id``
  names the dry-run policy responsible. (Enforcing an allow can only let more through, so
  dry-run allows need no shadow of their own; they take part in the shadow decision.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.rbac.v3.rbac_pb2 import Principal
from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, regex_pb2, string_pb2, value_pb2

from meshline.policies.common.fields import JWT_FILTER, JWT_PAYLOAD_KEY
from meshline.policies.trafficpermission.api import ClaimMatch, HeaderMatch, HttpRule, PathMatch
from meshline.policies.trafficpermission.decision import Clause, ordered
from meshline.xds import names

# --- a small boolean algebra over principals, simplified as it is built --------------------


@dataclass(frozen=True)
class Expr:
    """``op`` is "true", "false", "leaf", "and", "or" or "not"."""

    op: str
    leaf: Principal | None = None
    args: tuple[Expr, ...] = ()


TRUE = Expr("true")
FALSE = Expr("false")


def leaf(p: Principal) -> Expr:
    return Expr("leaf", leaf=p)


def any_of(items: Iterable[Expr]) -> Expr:
    flat: list[Expr] = []
    for e in items:
        if e.op == "true":
            return TRUE
        if e.op == "or":
            flat.extend(e.args)
        elif e.op != "false" and e not in flat:
            flat.append(e)
    # absorption: (a and b) or a == a; keeps "web, or web on /admin" from repeating itself
    flat = [e for e in flat if not (e.op == "and" and any(x in e.args for x in flat if x is not e))]
    return FALSE if not flat else flat[0] if len(flat) == 1 else Expr("or", args=tuple(flat))


def all_of(items: Iterable[Expr]) -> Expr:
    flat: list[Expr] = []
    for e in items:
        if e.op == "false":
            return FALSE
        if e.op == "and":
            flat.extend(e.args)
        elif e.op != "true" and e not in flat:
            flat.append(e)
    return TRUE if not flat else flat[0] if len(flat) == 1 else Expr("and", args=tuple(flat))


def negate(e: Expr) -> Expr:
    if e.op == "true":
        return FALSE
    if e.op == "false":
        return TRUE
    if e.op == "not":
        return e.args[0]
    return Expr("not", args=(e,))


def to_principal(e: Expr) -> Principal:
    if e.op == "true":
        return Principal(any=True)
    if e.op == "false":
        return Principal(not_id=Principal(any=True))
    if e.op == "leaf":
        assert e.leaf is not None
        return e.leaf
    if e.op == "not":
        return Principal(not_id=to_principal(e.args[0]))
    ids = Principal.Set(ids=[to_principal(a) for a in e.args])
    return Principal(and_ids=ids) if e.op == "and" else Principal(or_ids=ids)


# --- leaves ------------------------------------------------------------------------------------


def _string(
    exact: str | None = None, prefix: str | None = None, regex: str | None = None
) -> string_pb2.StringMatcher:
    if exact is not None:
        return string_pb2.StringMatcher(exact=exact)
    if prefix is not None:
        return string_pb2.StringMatcher(prefix=prefix)
    assert regex is not None
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=regex))


def identity(spiffe_id: str) -> Expr:
    return leaf(Principal(authenticated=Principal.Authenticated(principal_name=_string(exact=spiffe_id))))


UNAUTHENTICATED = Expr("not", args=(leaf(Principal(authenticated=Principal.Authenticated())),))


def _path(p: PathMatch) -> Expr:
    return leaf(Principal(url_path=path_pb2.PathMatcher(path=_string(p.exact, p.prefix, p.regex))))


def _header(name: str, h: HeaderMatch | None = None, exact: str | None = None) -> Expr:
    m = route_components_pb2.HeaderMatcher(name=name)
    if h is not None and h.present is not None:
        m.present_match = h.present
    elif h is not None:
        m.string_match.CopyFrom(_string(h.exact, h.prefix, h.regex))
    else:
        m.string_match.CopyFrom(_string(exact=exact))
    return leaf(Principal(header=m))


def _claim(c: ClaimMatch) -> Expr:
    """The verified token's claim (jwt_authn's payload in dynamic metadata): a string equal to the
    value, or a list holding it. A request without a verified token has no payload: no match."""
    path = [metadata_pb2.MetadataMatcher.PathSegment(key=k) for k in (JWT_PAYLOAD_KEY, *c.name.split("."))]

    def on(value: value_pb2.ValueMatcher) -> Expr:
        return leaf(Principal(metadata=metadata_pb2.MetadataMatcher(filter=JWT_FILTER, path=path, value=value)))

    exact = value_pb2.ValueMatcher(string_match=_string(exact=c.value))
    return any_of([on(exact), on(value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=exact)))])


def _rule(rule: HttpRule) -> Expr:
    return all_of(
        [
            any_of(_path(p) for p in rule.paths) if rule.paths else TRUE,
            any_of(_header(":method", exact=m) for m in rule.methods) if rule.methods else TRUE,
            *(_header(h.name, h) for h in rule.headers),
            *(_claim(c) for c in rule.claims),
        ]
    )


# --- compile ---------------------------------------------------------------------------------


class Compiler:
    def __init__(self, identity_of: Callable[[str], str]) -> None:
        self._identity_of = identity_of
        self._memo: dict[int, Expr] = {}  # by id(): clauses hold lists, so are unhashable

    def matches(self, c: Clause) -> Expr:
        if id(c) not in self._memo:
            caller = TRUE
            if c.services is not None:
                caller = any_of(
                    [*(identity(self._identity_of(s)) for s in sorted(c.services))]
                    + ([UNAUTHENTICATED] if c.unauthenticated else [])
                )
            requests = any_of(_rule(r) for r in c.rules) if c.rules else TRUE
            self._memo[id(c)] = all_of([caller, requests])
        return self._memo[id(c)]

    def decides(self, seq: Sequence[Clause]) -> list[tuple[Clause, Expr]]:
        """For each clause in decision order: the traffic it decides (it matches, nothing before it does)."""
        out = []
        before: list[Expr] = []
        for c in seq:
            m = self.matches(c)
            out.append((c, all_of([m, negate(any_of(before))])))
            before.append(m)
        return out


def _by_policy(pairs: Iterable[tuple[Clause, Expr]], want: Callable[[Clause], bool]) -> dict[str, Expr]:
    grouped: dict[str, list[Expr]] = {}
    for c, e in pairs:
        if want(c):
            grouped.setdefault(c.policy, []).append(e)
    return {name: any_of(es) for name, es in grouped.items()}


@dataclass(frozen=True)
class Compiled:
    rules: rbac_pb2.RBAC | None  # enforced DENY policies; None: nothing is denied
    shadow: rbac_pb2.RBAC | None  # dry-run DENY policies; None: no dry-run denies
    denying: tuple[str, ...]  # Envoy policy names of `rules` (for the 403 bodies)


def _rbac(policies: dict[str, Expr]) -> rbac_pb2.RBAC | None:
    kept = {k: e for k, e in policies.items() if e.op != "false"}
    if not kept:
        return None
    out = rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY)
    for key in sorted(kept):
        out.policies[key].CopyFrom(
            rbac_pb2.Policy(principals=[to_principal(kept[key])], permissions=[rbac_pb2.Permission(any=True)])
        )
    return out


def compile_clauses(
    clauses: Sequence[Clause], default_deny: bool, identity_of: Callable[[str], str]
) -> Compiled:
    comp = Compiler(identity_of)
    enforced = ordered(c for c in clauses if not c.dry_run)
    everything = ordered(clauses)
    denied = {
        names.permission_policy(k): e for k, e in _by_policy(comp.decides(enforced), lambda c: c.deny).items()
    }
    if default_deny:
        denied[names.DEFAULT_PERMISSION_POLICY] = negate(any_of(comp.matches(c) for c in enforced))
    denied = {k: e for k, e in denied.items() if e.op != "false"}
    allowed_today = negate(any_of(denied.values()))
    would_deny = _by_policy(comp.decides(everything), lambda c: c.deny and c.dry_run)
    shadow = {names.permission_policy(k): all_of([e, allowed_today]) for k, e in would_deny.items()}
    return Compiled(_rbac(denied), _rbac(shadow), tuple(sorted(denied)))
