"""HTTPRoute rules -> Envoy routes (typed protos). Pure: the caller adds the clusters named here.

One Envoy route per (rule, match); a rule without matches is one route for every request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2

from meshline.policies.httproute.api import (
    Backend,
    HeaderMatch,
    HeaderModifier,
    Mirror,
    QueryParamMatch,
    Redirect,
    RequestMatch,
    Rule,
)
from meshline.policies.httproute.checks import CATCH_ALL, PathCondition, path_condition
from meshline.xds import names

# Makes (or finds) the cluster for a service or tag subset and returns its name.
ClusterFor = Callable[[str | None, Mapping[str, str]], str]

_REDIRECT_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}


def regex(pattern: str) -> regex_pb2.RegexMatcher:
    return regex_pb2.RegexMatcher(regex=pattern)  # engine: Envoy's default, RE2


def _string_match(item: HeaderMatch | QueryParamMatch) -> string_pb2.StringMatcher:
    if item.exact is not None:
        return string_pb2.StringMatcher(exact=item.exact)
    return string_pb2.StringMatcher(safe_regex=regex(item.regex or ""))


def _header(item: HeaderMatch) -> rc.HeaderMatcher:
    if item.present is not None:
        return rc.HeaderMatcher(name=item.name, present_match=item.present)
    return rc.HeaderMatcher(name=item.name, string_match=_string_match(item))


def _query(item: QueryParamMatch) -> rc.QueryParameterMatcher:
    if item.present:
        return rc.QueryParameterMatcher(name=item.name, present_match=True)
    return rc.QueryParameterMatcher(name=item.name, string_match=_string_match(item))


def route_match(match: RequestMatch) -> rc.RouteMatch:
    out = rc.RouteMatch()
    cond = path_condition(match) or PathCondition("prefix", "/")
    if cond.kind == "exact":
        out.path = cond.value
    elif cond.kind == "regex":
        out.safe_regex.CopyFrom(regex(cond.value))
    elif cond.value == "/":
        out.prefix = "/"
    else:
        out.path_separated_prefix = cond.value
    if match.grpc is not None:
        out.grpc.SetInParent()
    if match.method is not None:
        out.headers.append(rc.HeaderMatcher(name=":method", string_match=string_pb2.StringMatcher(exact=match.method)))
    out.headers.extend(_header(h) for h in match.headers)
    out.query_parameters.extend(_query(q) for q in match.query_params)
    return out


def _header_options(mod: HeaderModifier) -> list[base_pb2.HeaderValueOption]:
    out = [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=h.name, value=h.value),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
        for h in mod.set
    ]
    out.extend(
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=h.name, value=h.value),
            append_action=base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD,
        )
        for h in mod.add
    )
    return out


def _mirror(mirror: Mirror, cluster: str) -> rc.RouteAction.RequestMirrorPolicy:
    policy = rc.RouteAction.RequestMirrorPolicy(cluster=cluster)
    if mirror.percent < 100:
        policy.runtime_fraction.default_value.CopyFrom(
            percent_pb2.FractionalPercent(
                numerator=round(mirror.percent * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
            )
        )
    return policy


def _set_rewrite(action: rc.RouteAction, rule: Rule, cond: PathCondition) -> None:
    rw = rule.rewrite
    if rw is None:
        return
    if rw.host is not None:
        action.host_rewrite_literal = rw.host
    if rw.regex is not None:
        action.regex_rewrite.pattern.CopyFrom(regex(rw.regex.pattern))
        action.regex_rewrite.substitution = rw.regex.substitution
    elif rw.path is not None:
        action.regex_rewrite.pattern.CopyFrom(regex("^.*$"))
        action.regex_rewrite.substitution = rw.path.replace("\\", "\\\\")
    elif rw.prefix is not None:
        _replace_prefix(action, rw.prefix, cond)


def _replace_prefix(action: rc.RouteAction | rc.RedirectAction, prefix: str, cond: PathCondition) -> None:
    """Replace the matched prefix so segment boundaries survive (no ``//`` and no ``/v2x``)."""
    new = prefix.rstrip("/")
    if cond.kind == "exact":
        action.prefix_rewrite = prefix  # the whole path was matched
    elif cond.value == "/":
        # prefix "/" matched: "/x" -> "<new>/x"
        action.regex_rewrite.pattern.CopyFrom(regex("^/"))
        action.regex_rewrite.substitution = new.replace("\\", "\\\\") + "/"
    elif not new:
        # "/api" -> "/" and "/api/x" -> "/x"
        action.regex_rewrite.pattern.CopyFrom(regex("^" + re.escape(cond.value) + "/*"))
        action.regex_rewrite.substitution = "/"
    else:
        action.prefix_rewrite = new  # "/api" -> "/v2", "/api/x" -> "/v2/x"


def _redirect(redirect: Redirect, cond: PathCondition) -> rc.RedirectAction:
    out = rc.RedirectAction(response_code=_REDIRECT_CODES[redirect.status_code])
    if redirect.scheme is not None:
        out.scheme_redirect = redirect.scheme
    if redirect.host is not None:
        out.host_redirect = redirect.host
    if redirect.port is not None:
        out.port_redirect = redirect.port
    if redirect.path is not None:
        out.path_redirect = redirect.path
    elif redirect.prefix is not None:
        _replace_prefix(out, redirect.prefix, cond)
    return out


def _action(rule: Rule, cond: PathCondition, cluster_for: ClusterFor, template: rc.RouteAction) -> rc.RouteAction:
    action = rc.RouteAction()
    action.CopyFrom(template)  # the outbound's defaults (timeout, connect retries) hold unless the rule says otherwise
    action.ClearField("cluster")
    action.ClearField("weighted_clusters")
    backends = [b for b in (rule.backends or [Backend()]) if b.weight > 0]
    if len(backends) == 1:
        action.cluster = cluster_for(backends[0].service, backends[0].tags)
    else:
        for b in backends:
            action.weighted_clusters.clusters.append(
                rc.WeightedCluster.ClusterWeight(
                    name=cluster_for(b.service, b.tags), weight=wrappers_pb2.UInt32Value(value=b.weight)
                )
            )
    if rule.timeout is not None:
        action.timeout.FromTimedelta(rule.timeout)
    for m in rule.mirrors:
        action.request_mirror_policies.append(_mirror(m, cluster_for(m.service, m.tags)))
    _set_rewrite(action, rule, cond)
    return action


def rule_routes(
    policy: str, index: int, rule: Rule, cluster_for: ClusterFor, template: rc.RouteAction
) -> list[rc.Route]:
    """The Envoy routes of one rule, in order. ``template``: the outbound's default route action."""
    routes = []
    for j, match in enumerate(rule.matches or [CATCH_ALL]):
        cond = path_condition(match) or PathCondition("prefix", "/")
        route = rc.Route(name=names.route_rule(policy, index, j), match=route_match(match))
        if rule.redirect is not None:
            route.redirect.CopyFrom(_redirect(rule.redirect, cond))
        elif rule.direct_response is not None:
            route.direct_response.status = rule.direct_response.status
            if rule.direct_response.body is not None:
                route.direct_response.body.inline_string = rule.direct_response.body
        else:
            route.route.CopyFrom(_action(rule, cond, cluster_for, template))
        if rule.request_headers is not None:
            route.request_headers_to_add.extend(_header_options(rule.request_headers))
            route.request_headers_to_remove.extend(rule.request_headers.remove)
        if rule.response_headers is not None:
            route.response_headers_to_add.extend(_header_options(rule.response_headers))
            route.response_headers_to_remove.extend(rule.response_headers.remove)
        routes.append(route)
    return routes
