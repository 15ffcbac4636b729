"""Gateway API ``HTTPRoute`` and ``GRPCRoute`` (GAMMA: ``parentRefs`` to a Service) -> HTTPRoute.

One native rule per Gateway API rule, one native match per match, so rule and match
indices in error messages are the same in both documents. What has no Meshline
equivalent is refused with its field path, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshline.core.resource import KindRegistry, Resource
from meshline.policies.translate.common import KnownServices, Translation, as_list, as_mapping

GROUP = "gateway.networking.k8s.io"
KINDS = ("HTTPRoute", "GRPCRoute")
_PATH_TYPES = {"Exact": "exact", "PathPrefix": "prefix", "RegularExpression": "regex"}
_VALUE_TYPES = {"Exact": "exact", "RegularExpression": "regex"}
_UNSUPPORTED_RULE_FIELDS = {
    "retry": "use a Meshline Retry policy",
    "sessionPersistence": "Meshline has no session persistence yet",
}


def is_gateway_route(doc: Mapping[str, Any]) -> bool:
    api = doc.get("apiVersion")
    return isinstance(api, str) and api.startswith(GROUP + "/") and doc.get("kind") in KINDS


def _parents(t: Translation, spec: Mapping[str, Any]) -> list[str]:
    parents: list[str] = []
    refs = as_list(spec.get("parentRefs"), "spec.parentRefs", t)
    if not refs:
        t.refuse("spec.parentRefs", "is required: name the Service this route applies to (kind: Service, name: orders)")
    for i, ref in enumerate(refs):
        path = f"spec.parentRefs[{i}]"
        ref = as_mapping(ref, path, t)
        kind, group = ref.get("kind", "Gateway"), ref.get("group", GROUP)
        if kind != "Service" or group not in ("", "core"):
            t.refuse(
                f"{path}.kind",
                f"'{kind}' parents are not supported: Meshline routes traffic inside the mesh (GAMMA);"
                " attach the route to a Service (group: \"\", kind: Service)",
            )
            continue
        if t.same_namespace(ref, path) and (name := t.service_name(ref.get("name"), f"{path}.name")):
            parents.append(name)
    return parents


def _value_match(t: Translation, item: Any, path: str, what: str) -> dict[str, Any] | None:
    item = as_mapping(item, path, t)
    kind = item.get("type", "Exact")
    if kind not in _VALUE_TYPES:
        t.refuse(f"{path}.type", f"{what} match type '{kind}' is not supported; use Exact or RegularExpression")
        return None
    return {"name": item.get("name"), _VALUE_TYPES[kind]: item.get("value")}


def _http_match(t: Translation, m: Any, path: str) -> dict[str, Any]:
    m = as_mapping(m, path, t)
    out: dict[str, Any] = {}
    if "path" in m:
        p = as_mapping(m["path"], f"{path}.path", t)
        kind = p.get("type", "PathPrefix")
        if kind not in _PATH_TYPES:
            t.refuse(f"{path}.path.type", f"'{kind}' is not a path match type; use Exact, PathPrefix or RegularExpression")
        else:
            out["path"] = {_PATH_TYPES[kind]: p.get("value", "/")}
    if "method" in m:
        out["method"] = m["method"]
    headers = [_value_match(t, h, f"{path}.headers[{k}]", "header") for k, h in enumerate(as_list(m.get("headers"), f"{path}.headers", t))]
    if any(headers):
        out["headers"] = [h for h in headers if h]
    query = [_value_match(t, q, f"{path}.queryParams[{k}]", "query") for k, q in enumerate(as_list(m.get("queryParams"), f"{path}.queryParams", t))]
    if any(query):
        out["queryParams"] = [q for q in query if q]
    _no_others(t, m, path, {"path", "method", "headers", "queryParams"})
    return out


def _grpc_match(t: Translation, m: Any, path: str) -> dict[str, Any]:
    m = as_mapping(m, path, t)
    out: dict[str, Any] = {}
    if "method" in m:
        method = as_mapping(m["method"], f"{path}.method", t)
        kind, svc, name = method.get("type", "Exact"), method.get("service"), method.get("method")
        if kind == "Exact":
            out["grpc"] = {k: v for k, v in (("service", svc), ("method", name)) if v is not None}
        elif kind == "RegularExpression":
            out["path"] = {"regex": f"/({svc or '[^/]+'})/({name or '[^/]+'})"}
        else:
            t.refuse(f"{path}.method.type", f"'{kind}' is not a gRPC method match type; use Exact or RegularExpression")
    headers = [_value_match(t, h, f"{path}.headers[{k}]", "header") for k, h in enumerate(as_list(m.get("headers"), f"{path}.headers", t))]
    if any(headers):
        out["headers"] = [h for h in headers if h]
    _no_others(t, m, path, {"method", "headers"})
    return out


def _no_others(t: Translation, m: Mapping[str, Any], path: str, known: set[str]) -> None:
    for key in sorted(set(m) - known):
        t.refuse(f"{path}.{key}", "is not supported by Meshline's translation; remove it")


def backend_ref(t: Translation, ref: Any, path: str, parents: list[str]) -> dict[str, Any] | None:
    ref = as_mapping(ref, path, t)
    if ref.get("kind", "Service") != "Service" or ref.get("group", "") not in ("", "core"):
        t.refuse(f"{path}.kind", f"'{ref.get('kind')}' backends are not supported; refer to a Service")
        return None
    if ref.get("filters"):
        t.refuse(f"{path}.filters", "filters on a single backend are not supported; put them on the rule")
        return None
    if not t.same_namespace(ref, path):
        return None
    name = t.service_name(ref.get("name"), f"{path}.name")
    if name is None:
        return None
    service, tags = t.backend(name, parents)
    out: dict[str, Any] = {"service": service}
    if tags:
        out["tags"] = tags
    return out


def _modifier(t: Translation, value: Any, path: str) -> dict[str, Any]:
    mod = as_mapping(value, path, t)
    _no_others(t, mod, path, {"set", "add", "remove"})
    return {k: mod[k] for k in ("set", "add", "remove") if mod.get(k)}


def _path_modifier(t: Translation, value: Any, path: str) -> dict[str, Any]:
    p = as_mapping(value, path, t)
    kind = p.get("type")
    if kind == "ReplaceFullPath":
        return {"path": p.get("replaceFullPath")}
    if kind == "ReplacePrefixMatch":
        return {"prefix": p.get("replacePrefixMatch")}
    t.refuse(f"{path}.type", f"'{kind}' is not a path modifier type; use ReplaceFullPath or ReplacePrefixMatch")
    return {}


def _mirror(t: Translation, value: Any, path: str, parents: list[str]) -> dict[str, Any] | None:
    m = as_mapping(value, path, t)
    target = backend_ref(t, m.get("backendRef"), f"{path}.backendRef", parents)
    if target is None:
        return None
    percent: float = 100.0
    if "percent" in m:
        percent = float(m["percent"])
    elif "fraction" in m:
        frac = as_mapping(m["fraction"], f"{path}.fraction", t)
        percent = 100.0 * float(frac.get("numerator", 0)) / float(frac.get("denominator", 100) or 100)
    if percent <= 0:
        return None  # mirrors nothing
    return {**target, "percent": percent}


_FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
}


def _filters(t: Translation, filters: list[Any], path: str, rule: dict[str, Any], parents: list[str], grpc: bool) -> None:
    allowed = {"RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror"}
    if not grpc:
        allowed |= {"RequestRedirect", "URLRewrite"}
    seen: set[str] = set()
    for k, f in enumerate(filters):
        fpath = f"{path}[{k}]"
        f = as_mapping(f, fpath, t)
        kind = f.get("type")
        if kind not in allowed:
            t.refuse(f"{fpath}.type", f"filter type '{kind}' cannot be translated; supported: {', '.join(sorted(allowed))}")
            continue
        if kind in seen and kind != "RequestMirror":
            t.refuse(f"{fpath}.type", f"{kind} appears twice in one rule; merge the two filters")
            continue
        seen.add(kind)
        body, bpath = f.get(_FILTER_FIELDS[kind]), f"{fpath}.{_FILTER_FIELDS[kind]}"
        if kind == "RequestHeaderModifier":
            rule["requestHeaders"] = _modifier(t, body, bpath)
        elif kind == "ResponseHeaderModifier":
            rule["responseHeaders"] = _modifier(t, body, bpath)
        elif kind == "RequestMirror":
            if (mirror := _mirror(t, body, bpath, parents)) is not None:
                rule.setdefault("mirrors", []).append(mirror)
        elif kind == "RequestRedirect":
            r = as_mapping(body, bpath, t)
            redirect: dict[str, Any] = {k2: r[k1] for k1, k2 in (("scheme", "scheme"), ("hostname", "host"),
                                                                 ("port", "port"), ("statusCode", "statusCode")) if k1 in r}
            if "path" in r:
                redirect.update(_path_modifier(t, r["path"], f"{bpath}.path"))
            rule["redirect"] = redirect
        else:
            r = as_mapping(body, bpath, t)
            rewrite: dict[str, Any] = {"host": r["hostname"]} if "hostname" in r else {}
            if "path" in r:
                rewrite.update(_path_modifier(t, r["path"], f"{bpath}.path"))
            rule["rewrite"] = rewrite


def _timeouts(t: Translation, value: Any, path: str, rule: dict[str, Any]) -> None:
    timeouts = as_mapping(value, path, t)
    if "request" in timeouts:
        rule["timeout"] = timeouts["request"]
    if "backendRequest" in timeouts:
        t.refuse(f"{path}.backendRequest", "per-attempt timeouts are not translated; use a Meshline Retry/Timeout policy")


def rule(t: Translation, r: Any, path: str, parents: list[str], grpc: bool) -> dict[str, Any]:
    r = as_mapping(r, path, t)
    for key, fix in _UNSUPPORTED_RULE_FIELDS.items():
        if key in r:
            t.refuse(f"{path}.{key}", f"cannot be translated; {fix}")
    rule: dict[str, Any] = {}
    match_of = _grpc_match if grpc else _http_match
    matches = [match_of(t, m, f"{path}.matches[{j}]") for j, m in enumerate(as_list(r.get("matches"), f"{path}.matches", t))]
    if matches and not all(m == {} for m in matches):
        rule["matches"] = matches
    _filters(t, as_list(r.get("filters"), f"{path}.filters", t), f"{path}.filters", rule, parents, grpc)
    if "timeouts" in r:
        _timeouts(t, r["timeouts"], f"{path}.timeouts", rule)
    backends = []
    for k, ref in enumerate(as_list(r.get("backendRefs"), f"{path}.backendRefs", t)):
        b = backend_ref(t, ref, f"{path}.backendRefs[{k}]", parents)
        if b is not None:
            b["weight"] = as_mapping(ref, "", t).get("weight", 1)
            backends.append(b)
    if backends:
        rule["backends"] = backends
    elif "redirect" not in rule:
        # Gateway API: a rule with nowhere to send requests answers 500.
        if rule.get("mirrors") or rule.get("rewrite"):
            t.refuse(f"{path}.backendRefs", "is empty, so there is nothing to mirror or rewrite for; add a backendRef")
        rule["directResponse"] = {"status": 500}
    return rule


def translate_gateway_route(doc: Mapping[str, Any], kinds: KindRegistry, known: KnownServices) -> list[Resource]:
    t = Translation(doc, known)
    t.read_metadata()
    spec = as_mapping(doc.get("spec"), "spec", t)
    grpc = doc.get("kind") == "GRPCRoute"
    if spec.get("hostnames"):
        t.refuse("spec.hostnames", "routes inside the mesh apply to a Service, not to hostnames; remove hostnames")
    parents = _parents(t, spec)
    rules = [rule(t, r, f"spec.rules[{i}]", parents, grpc) for i, r in enumerate(as_list(spec.get("rules"), "spec.rules", t))]
    if not rules:
        rules = [{"backends": [{"service": p} for p in parents]}] if parents else []
    for key in sorted(set(spec) - {"parentRefs", "hostnames", "rules"}):
        t.refuse(f"spec.{key}", "is not supported by Meshline's translation; remove it")
    native = {
        "kind": "HTTPRoute",
        "mesh": t.mesh,
        "name": t.name,
        "spec": {"destinations": [{"match": {"service": p}} for p in parents], "rules": rules},
    }
    return t.finish(kinds, native)
