"""HTTPRoute: L7 routing for calls to a service (weighted versions, matches, mirroring, rewrites...).

    kind: HTTPRoute
    mesh: default
    name: orders-canary
    spec:
      sources: [{match: {service: web}}]          # who calls (default: everyone)
      destinations: [{match: {service: orders}}]  # the service called
      rules:
        - matches: [{headers: [{name: x-canary, exact: "true"}]}]
          backends: [{tags: {version: v2}}]
        - backends:                               # no matches: every other request
            - {tags: {version: v1}, weight: 90}
            - {tags: {version: v2}, weight: 10}

The shape checks (one of ``exact``/``prefix``/``regex``...) live on the models; the checks
that need the whole route (regexes, unreachable rules, weights) are in :mod:`.checks`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from meshline.core.resource import Resource, spec_as
from meshline.core.schema import Duration, Name, Spec
from meshline.core.selectors import SelectorSpec
from meshline.policies.common.backends import Backend, backend_tags
from meshline.render.defaults import L7_PROTOCOLS

HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
MAX_DIRECT_BODY = 4096  # Envoy's default max_direct_response_body_size_bytes


def _exactly_one(model: Spec, fields: tuple[str, ...], what: str) -> None:
    given = [f for f in fields if getattr(model, f) is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(to_camel(f) for f in fields)} for {what}")


def _header_name(v: str) -> str:
    if v.startswith(":"):
        raise ValueError(f"'{v}' is a pseudo-header; match the method with 'method' and the path with 'path'")
    if not HEADER_NAME_RE.match(v):
        raise ValueError(f"'{v}' is not a valid HTTP header name (letters, digits and !#$%&'*+.^_`|~-)")
    return v.lower()


class PathMatch(Spec):
    """``exact``: the whole path; ``prefix``: whole path segments (``/api`` matches ``/api`` and
    ``/api/x``, not ``/apix``); ``regex``: RE2, must match the whole path. Query strings are ignored."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one(self) -> PathMatch:
        _exactly_one(self, ("exact", "prefix", "regex"), "a path match")
        for value in (self.exact, self.prefix):
            if value is not None and (not value.startswith("/") or "?" in value or "#" in value):
                raise ValueError(f"'{value}' must start with '/' and hold no '?' or '#' (query strings are not part of the path)")
        return self


class HeaderMatch(Spec):
    name: str
    exact: str | None = None
    regex: str | None = None
    present: bool | None = None  # true: the header is there (any value); false: it is absent

    _n = field_validator("name")(classmethod(lambda cls, v: _header_name(v)))

    @model_validator(mode="after")
    def _one(self) -> HeaderMatch:
        _exactly_one(self, ("exact", "regex", "present"), f"header '{self.name}'")
        return self


class QueryParamMatch(Spec):
    name: str = Field(min_length=1)
    exact: str | None = None
    regex: str | None = None
    present: Literal[True] | None = None

    @model_validator(mode="after")
    def _one(self) -> QueryParamMatch:
        _exactly_one(self, ("exact", "regex", "present"), f"query parameter '{self.name}'")
        return self


_GRPC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


class GrpcMatch(Spec):
    """gRPC calls by fully qualified service (``meshline.test.Echo``) and/or method (``Echo``)."""

    service: str | None = None
    method: str | None = None

    @model_validator(mode="after")
    def _some(self) -> GrpcMatch:
        if self.service is None and self.method is None:
            raise ValueError("give service, method or both")
        for value in (self.service, self.method):
            if value is not None and not _GRPC_NAME.match(value):
                raise ValueError(f"'{value}' is not a gRPC name (letters, digits, '_' and '.' in services)")
        if self.method is not None and "." in self.method:
            raise ValueError(f"method '{self.method}' holds a '.'; put the package and service in 'service'")
        return self


class RequestMatch(Spec):
    """All conditions given must hold (AND). A rule matches if any of its matches does (OR)."""

    path: PathMatch | None = None
    method: str | None = None
    headers: list[HeaderMatch] = Field(default_factory=list)
    query_params: list[QueryParamMatch] = Field(default_factory=list)
    grpc: GrpcMatch | None = None

    @field_validator("method")
    @classmethod
    def _method(cls, v: str | None) -> str | None:
        if v is not None and v.upper() not in METHODS:
            raise ValueError(f"'{v}' is not an HTTP method; use one of {', '.join(METHODS)}")
        return v.upper() if v else v

    @model_validator(mode="after")
    def _grpc_owns_path(self) -> RequestMatch:
        if self.grpc is not None and self.path is not None:
            raise ValueError("give either grpc or path: a gRPC match is a match on the path /<service>/<method>")
        return self


class Mirror(Spec):
    """Copy ``percent`` of requests to a subset or another service; its answers are dropped."""

    service: Name | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    percent: float = Field(default=100.0, gt=0, le=100)

    _t = field_validator("tags")(classmethod(lambda cls, v: backend_tags(v)))

    @model_validator(mode="after")
    def _target(self) -> Mirror:
        if self.service is None and not self.tags:
            raise ValueError("give service or tags: mirroring the called service to itself doubles its load")
        return self


class Header(Spec):
    name: str
    value: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        v = _header_name(v)
        if v == "host":
            raise ValueError("the Host header is changed with rewrite.host")
        return v


class HeaderModifier(Spec):
    """``set`` replaces a header, ``add`` appends a value, ``remove`` drops it."""

    set: list[Header] = Field(default_factory=list)
    add: list[Header] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)

    @field_validator("remove")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        names = [_header_name(n) for n in v]
        if "host" in names:
            raise ValueError("the Host header cannot be removed; change it with rewrite.host")
        return names


class RegexRewrite(Spec):
    pattern: str
    substitution: str  # may use \1..\9 for the pattern's groups


class Rewrite(Spec):
    """Change the request before it is sent: one path rewrite and/or the Host header."""

    prefix: str | None = None  # replace the matched path prefix (use with prefix/exact path matches)
    path: str | None = None  # replace the whole path
    regex: RegexRewrite | None = None
    host: str | None = None

    @model_validator(mode="after")
    def _one_path(self) -> Rewrite:
        given = [f for f in ("prefix", "path", "regex") if getattr(self, f) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of prefix, path, regex (got {', '.join(given)})")
        if not given and self.host is None:
            raise ValueError("give prefix, path, regex or host")
        for value in (self.prefix, self.path):
            if value is not None and not value.startswith("/"):
                raise ValueError(f"'{value}' must start with '/'")
        return self


class Redirect(Spec):
    """Answer with a redirect; unset parts keep the request's own (scheme, host, port, path)."""

    scheme: Literal["http", "https"] | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    path: str | None = None  # replace the whole path
    prefix: str | None = None  # replace the matched prefix
    status_code: Literal[301, 302, 303, 307, 308] = 302

    @model_validator(mode="after")
    def _path(self) -> Redirect:
        if self.path is not None and self.prefix is not None:
            raise ValueError("give path or prefix, not both")
        for value in (self.path, self.prefix):
            if value is not None and not value.startswith("/"):
                raise ValueError(f"'{value}' must start with '/'")
        return self


class DirectResponse(Spec):
    status: int = Field(ge=200, le=599)
    body: str | None = Field(default=None, max_length=MAX_DIRECT_BODY)


class Rule(Spec):
    """Requests that fit ``matches`` go to ``backends`` (or are redirected / answered directly)."""

    matches: list[RequestMatch] = Field(default_factory=list)  # empty: every request
    backends: list[Backend] = Field(default_factory=list)  # empty: the service called
    mirrors: list[Mirror] = Field(default_factory=list)
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    rewrite: Rewrite | None = None
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    timeout: Duration | None = None  # whole request, all retries included; 0s: none

    @model_validator(mode="after")
    def _one_action(self) -> Rule:
        answers = [n for n, v in (("redirect", self.redirect), ("directResponse", self.direct_response)) if v]
        if len(answers) > 1 or (answers and self.backends):
            given = (["backends"] if self.backends else []) + answers
            raise ValueError(f"give one of backends, redirect, directResponse (got {', '.join(given)})")
        if answers:
            forwarding = [n for n, v in (("mirrors", self.mirrors), ("rewrite", self.rewrite),
                                         ("timeout", self.timeout)) if v]
            if forwarding:
                raise ValueError(
                    f"{', '.join(forwarding)} only apply to forwarded requests; {answers[0]} answers"
                    " without forwarding, so remove them or the " + answers[0]
                )
        return self


class HTTPRouteSpec(SelectorSpec):
    rules: list[Rule] = Field(min_length=1)

    # -- common.references.RouteSpec: what the apply-time reference check reads
    def route_targets(self) -> Iterator[tuple[str, str | None, Mapping[str, str]]]:
        for i, rule in enumerate(self.rules):
            for k, b in enumerate(rule.backends):
                yield f"spec.rules[{i}].backends[{k}]", b.service, b.tags
            for k, m in enumerate(rule.mirrors):
                yield f"spec.rules[{i}].mirrors[{k}]", m.service, m.tags

    def protocol_mismatch(self, service: str, protocol: str) -> str | None:
        if protocol in L7_PROTOCOLS:
            return None
        return (f"service '{service}' speaks {protocol}, so an HTTPRoute never applies to it;"
                " use a TCPRoute, or tag its instances protocol: http")


def rules_column(r: Resource) -> str:
    spec = spec_as(r, HTTPRouteSpec)
    return str(len(spec.rules))


def destinations_column(r: Resource) -> str:
    spec = spec_as(r, HTTPRouteSpec)
    return ",".join(d.describe() for d in spec.destinations)
