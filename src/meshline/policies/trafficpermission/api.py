"""TrafficPermission: which callers may reach which services, checked by the callee's sidecar.

    kind: TrafficPermission
    mesh: default
    name: web-to-orders
    spec:
      sources: [{match: {service: web}}]          # who calls: by service identity only
      destinations: [{match: {service: orders}}]  # who is called: any tags of its inbound
      action: allow                               # allow | deny
      mode: enforce                               # enforce | dry-run (record, never deny)
      rules:                                      # optional, HTTP only: which requests
        - paths: [{prefix: /api/}]
          methods: [GET]
          headers: [{name: x-tenant, exact: acme}]

A caller is known only by its mTLS certificate, whose one identity is
``spiffe://<trustDomain>/<mesh>/<service>``: it proves the caller's service and nothing else,
so ``sources`` may select by ``service`` alone (``*`` for any caller). Precedence, defaults and
the plaintext behaviour are in :mod:`.decision` and docs/security-permissions.md.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from meshline.core.dataplane import TAG_RE
from meshline.core.errors import FieldProblem
from meshline.core.resource import KindInfo, Resource, spec_as
from meshline.core.schema import NAME_HINT, NAME_RE, Spec
from meshline.core.selectors import ANY, SelectorSpec
from meshline.policies.common.regex import regex_problem

METHOD_RE = re.compile(r"^[A-Z][A-Z0-9_-]{0,31}$")
HEADER_NAME_RE = re.compile(r"^:?[a-z0-9!#$%&'*+.^_`|~-]{1,127}$")


def _regex(v: str | None) -> str | None:
    if v is not None and (problem := regex_problem(v)):
        raise ValueError(problem)
    return v


class PathMatch(Spec):
    """One of ``exact``, ``prefix`` or ``regex`` (RE2, must match the whole path).

    The path is matched without its query string, after Envoy normalized it
    (``/a/../b`` is ``/b``, ``//`` is ``/``).
    """

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @field_validator("exact", "prefix")
    @classmethod
    def _slash(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError(f"'{v}' must start with '/'")
        return v

    _r = field_validator("regex")(classmethod(lambda cls, v: _regex(v)))

    @model_validator(mode="after")
    def _one(self) -> PathMatch:
        if sum(v is not None for v in (self.exact, self.prefix, self.regex)) != 1:
            raise ValueError("set exactly one of exact, prefix or regex (e.g. {prefix: /api/})")
        return self


class HeaderMatch(Spec):
    """A request header: ``exact``, ``prefix``, ``regex`` (RE2, whole value) or ``present: true|false``."""

    name: str
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.strip().lower()
            if not HEADER_NAME_RE.match(v):
                raise ValueError(f"'{v}' is not an HTTP header name")
        return v

    _r = field_validator("regex")(classmethod(lambda cls, v: _regex(v)))

    @model_validator(mode="after")
    def _one(self) -> HeaderMatch:
        if sum(v is not None for v in (self.exact, self.prefix, self.regex, self.present)) != 1:
            raise ValueError(
                "set exactly one of exact, prefix, regex or present (e.g. {name: x-debug, present: true})"
            )
        return self


_CLAIM_RE = re.compile(r"^[A-Za-z0-9_:-]{1,64}(\.[A-Za-z0-9_:-]{1,64}){0,4}$")


class ClaimMatch(Spec):
    """A claim of the request's verified JWT (a JWTAuthentication on the same proxy checked it):
    ``name`` (nested claims as ``a.b``) equal to ``value``, or a list claim holding it."""

    name: str
    value: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _CLAIM_RE.match(v):
            raise ValueError(f"'{v}' is not a claim name (letters, digits, _:-; nested claims as a.b)")
        return v


class HttpRule(Spec):
    """Requests that match every field given; within a list, any entry matches (claims: all)."""

    paths: list[PathMatch] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=list)
    headers: list[HeaderMatch] = Field(default_factory=list)
    claims: list[ClaimMatch] = Field(default_factory=list)

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, v: object) -> object:
        if isinstance(v, list):
            out = []
            for m in v:
                if isinstance(m, str):
                    m = m.strip().upper()
                    if not METHOD_RE.match(m):
                        raise ValueError(f"'{m}' is not an HTTP method (e.g. GET, POST)")
                out.append(m)
            return out
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> HttpRule:
        if not (self.paths or self.methods or self.headers or self.claims):
            raise ValueError("set paths, methods, headers or claims; leave out `rules` to match every request")
        return self


class TrafficPermissionSpec(SelectorSpec):
    action: Literal["allow", "deny"]
    mode: Literal["enforce", "dry-run"] = "enforce"
    # Empty: every request (and every TCP connection). Otherwise the policy covers only the
    # HTTP requests that match one of these rules.
    rules: list[HttpRule] = Field(default_factory=list)

    @property
    def dry_run(self) -> bool:
        return self.mode == "dry-run"


def _source_problems(res: Resource) -> list[FieldProblem]:
    spec = spec_as(res, TrafficPermissionSpec)
    problems = []
    for i, sel in enumerate(spec.sources):
        for tag, value in sel.match.items():
            path = f"spec.sources[{i}].match.{tag}"
            if tag != "service":
                problems.append(
                    FieldProblem(
                        path,
                        "callers are identified by their mTLS certificate, which proves only their"
                        " service (spiffe://<trustDomain>/<mesh>/<service>); select callers by service,"
                        f" e.g. {{service: web}}, and remove '{tag}'",
                    )
                )
            elif value != ANY and not NAME_RE.match(value):
                problems.append(FieldProblem(path, f"'{value}' is not a service name: {NAME_HINT}, or '*'"))
    for i, sel in enumerate(spec.destinations):
        for tag, value in sel.match.items():
            if not TAG_RE.match(tag) or (value != ANY and not TAG_RE.match(value)):
                problems.append(
                    FieldProblem(
                        f"spec.destinations[{i}].match.{tag}",
                        "tag names and values are letters, digits, '.', '_', '/' or '-' (or '*' for any value)",
                    )
                )
    return problems


def _action_column(r: Resource) -> str:
    spec = spec_as(r, TrafficPermissionSpec)
    return spec.action


def _mode_column(r: Resource) -> str:
    spec = spec_as(r, TrafficPermissionSpec)
    return spec.mode


def _selectors(r: Resource, which: str) -> str:
    spec = spec_as(r, TrafficPermissionSpec)
    return " ".join(s.describe() for s in getattr(spec, which))


KIND = KindInfo(
    kind="TrafficPermission",
    plural="trafficpermissions",
    spec=TrafficPermissionSpec,
    summary="Allow or deny callers (by mTLS service identity) to services, at L4 and per HTTP request",
    is_policy=True,
    aliases=("trafficpermission", "tp", "permissions"),
    validators=(_source_problems,),
    columns={
        "FROM": lambda r: _selectors(r, "sources"),
        "TO": lambda r: _selectors(r, "destinations"),
        "ACTION": _action_column,
        "MODE": _mode_column,
    },
)
