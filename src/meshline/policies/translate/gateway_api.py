"""Gateway API documents for the ingress gateway, translated at ``meshline apply``:

* ``Gateway`` -> MeshGateway of the same name (the gateways started with
  ``meshline gateway --name <it>``). Listeners keep their names, ports, protocols and
  hostnames; ``tls.certificateRefs[].name`` names a certificate in the gateway's
  ``--certs-dir`` (``<name>/tls.crt``, ``tls.key``: how a Kubernetes TLS Secret is mounted).
* ``HTTPRoute``/``GRPCRoute`` whose ``parentRefs`` name Gateways (``kind: Gateway``, the Gateway
  API's default) and ``TLSRoute``/``TCPRoute`` -> MeshGatewayRoute: ``sectionName`` is the
  listener, the rules are translated as for mesh routes (gateway.py), each backendRef a service.

A route's parents are all Gateways or all Services (GAMMA, gateway.py); a mix is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshline.core.resource import KindRegistry, Resource
from meshline.policies.translate.common import KnownServices, Translation, as_list, as_mapping

GROUP = "gateway.networking.k8s.io"
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute")
_PROTOCOLS = {"HTTP", "HTTPS", "TLS", "TCP"}
# tls.options of a listener (the Gateway API's implementation-specific map): client certificates
CLIENT_CA_OPTION = "meshline.io/client-ca"  # PEM bundle the clients' certificates must chain to
CLIENT_OPTIONAL_OPTION = "meshline.io/client-certificate-optional"  # "true": a client may have none
_ROUTE_PROTOCOL = {"HTTPRoute": "http", "GRPCRoute": "grpc", "TLSRoute": "tls", "TCPRoute": "tcp"}


def _api_group(doc: Mapping[str, Any]) -> str:
    api = doc.get("apiVersion")
    return api.split("/", 1)[0] if isinstance(api, str) else ""


def is_gateway(doc: Mapping[str, Any]) -> bool:
    return _api_group(doc) == GROUP and doc.get("kind") == "Gateway"


def _parent_kinds(doc: Mapping[str, Any]) -> set[str]:
    spec = doc.get("spec")
    refs = spec.get("parentRefs") if isinstance(spec, Mapping) else None
    if not isinstance(refs, list):
        return set()
    return {str(r.get("kind", "Gateway")) if isinstance(r, Mapping) else "?" for r in refs}


def is_gateway_attached_route(doc: Mapping[str, Any]) -> bool:
    """A route for the ingress gateway: TLSRoute and TCPRoute always; HTTPRoute and GRPCRoute
    when a parentRef is a Gateway (a Service parent makes it a mesh route, GAMMA)."""
    if _api_group(doc) != GROUP or doc.get("kind") not in ROUTE_KINDS:
        return False
    return doc.get("kind") in ("TLSRoute", "TCPRoute") or "Gateway" in _parent_kinds(doc)


def _no_others(t: Translation, m: Mapping[str, Any], path: str, known: set[str], fix: str = "remove it") -> None:
    for key in sorted(set(m) - known):
        t.refuse(f"{path}.{key}", f"is not supported by Meshline's gateway translation; {fix}")


def _listener(t: Translation, value: Any, path: str) -> dict[str, Any]:
    lst = as_mapping(value, path, t)
    protocol = lst.get("protocol")
    if protocol not in _PROTOCOLS:
        t.refuse(f"{path}.protocol", f"'{protocol}' listeners are not supported; use HTTP, HTTPS, TLS or TCP")
    out: dict[str, Any] = {"name": lst.get("name"), "port": lst.get("port"), "protocol": protocol}
    if lst.get("hostname") is not None:
        out["hostname"] = lst["hostname"]
    if "tls" in lst:
        tls = as_mapping(lst["tls"], f"{path}.tls", t)
        native: dict[str, Any] = {"mode": tls.get("mode", "Terminate")}
        certs = []
        for k, ref in enumerate(as_list(tls.get("certificateRefs"), f"{path}.tls.certificateRefs", t)):
            rpath = f"{path}.tls.certificateRefs[{k}]"
            ref = as_mapping(ref, rpath, t)
            if ref.get("kind", "Secret") != "Secret" or ref.get("group", "") not in ("", "core"):
                t.refuse(f"{rpath}.kind", f"'{ref.get('kind')}' certificates are not supported; refer to a Secret"
                                          " (a directory of that name in the gateway's --certs-dir)")  # fmt: skip
            t.same_namespace(ref, rpath)
            certs.append(ref.get("name"))
        if certs:
            native["certificates"] = certs
        options = as_mapping(tls.get("options"), f"{path}.tls.options", t)
        if options.get(CLIENT_CA_OPTION):  # implementation-specific: Meshline validates clients
            native["clientValidation"] = {"ca": options[CLIENT_CA_OPTION],
                                          "optional": str(options.get(CLIENT_OPTIONAL_OPTION, "")).lower() == "true"}
        _no_others(t, tls, f"{path}.tls", {"mode", "certificateRefs", "options"})
        out["tls"] = native
    allowed = as_mapping(lst.get("allowedRoutes"), f"{path}.allowedRoutes", t)
    namespaces = as_mapping(allowed.get("namespaces"), f"{path}.allowedRoutes.namespaces", t)
    if namespaces.get("from", "Same") not in ("Same", "All"):
        t.refuse(f"{path}.allowedRoutes.namespaces.from", "only Same (the routes of this mesh) can be translated")
    _no_others(t, lst, path, {"name", "port", "protocol", "hostname", "tls", "allowedRoutes"})
    return out


def translate_gateway(doc: Mapping[str, Any], kinds: KindRegistry, known: KnownServices) -> list[Resource]:
    t = Translation(doc, known)
    t.read_metadata()
    spec = as_mapping(doc.get("spec"), "spec", t)
    listeners = [_listener(t, x, f"spec.listeners[{i}]") for i, x in enumerate(as_list(spec.get("listeners"), "spec.listeners", t))]
    if spec.get("addresses"):
        t.refuse("spec.addresses", "a gateway listens on its host's address (meshline gateway --address); remove addresses")
    _no_others(t, spec, "spec", {"gatewayClassName", "listeners", "addresses", "infrastructure"})
    native = {"kind": "MeshGateway", "mesh": t.mesh, "name": t.name, "spec": {"listeners": listeners}}
    return t.finish(kinds, native)


def _parents(t: Translation, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    parents = []
    refs = as_list(spec.get("parentRefs"), "spec.parentRefs", t)
    if not refs:
        t.refuse("spec.parentRefs", "is required: name the Gateway this route attaches to (kind: Gateway, name: edge)")
    for i, ref in enumerate(refs):
        path = f"spec.parentRefs[{i}]"
        ref = as_mapping(ref, path, t)
        kind, group = ref.get("kind", "Gateway"), ref.get("group", GROUP)
        if kind != "Gateway" or group != GROUP:
            t.refuse(f"{path}.kind", f"'{kind}' parents cannot be mixed with Gateway parents: a route either attaches"
                                     " to gateways (ingress) or to Services (inside the mesh); split it in two")  # fmt: skip
            continue
        if not t.same_namespace(ref, path):
            continue
        parent: dict[str, Any] = {"gateway": ref.get("name")}
        if ref.get("sectionName") is not None:
            parent["listener"] = ref["sectionName"]
        if ref.get("port") is not None:
            t.refuse(f"{path}.port", "attach by listener name (sectionName) instead of port")
        parents.append(parent)
    return parents


def _l4_backends(t: Translation, spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    from meshline.policies.translate.gateway import backend_ref

    rules = as_list(spec.get("rules"), "spec.rules", t)
    if len(rules) != 1:
        t.refuse("spec.rules", "give exactly one rule (its backendRefs are where connections go)")
    backends = []
    for i, rule in enumerate(rules[:1]):
        rule = as_mapping(rule, f"spec.rules[{i}]", t)
        for k, ref in enumerate(as_list(rule.get("backendRefs"), f"spec.rules[{i}].backendRefs", t)):
            b = backend_ref(t, ref, f"spec.rules[{i}].backendRefs[{k}]", [])
            if b is not None:
                b["weight"] = as_mapping(ref, "", t).get("weight", 1)
                backends.append(b)
        _no_others(t, rule, f"spec.rules[{i}]", {"backendRefs", "name"})
    return backends


_CORS_FIELDS = {"allowOrigins": "allowOrigins", "allowMethods": "allowMethods", "allowHeaders": "allowHeaders",
                "exposeHeaders": "exposeHeaders", "allowCredentials": "allowCredentials"}


def _without_cors(t: Translation, rule: Any, path: str, native_spec: dict[str, Any]) -> Any:
    """The rule without its CORS filter, which becomes the route's ``cors`` (one per route)."""
    if not isinstance(rule, Mapping) or not isinstance(rule.get("filters"), list):
        return rule
    kept = []
    for k, f in enumerate(rule["filters"]):
        if not isinstance(f, Mapping) or f.get("type") != "CORS":
            kept.append(f)
            continue
        body = as_mapping(f.get("cors"), f"{path}.filters[{k}].cors", t)
        cors: dict[str, Any] = {v: body[k2] for k2, v in _CORS_FIELDS.items() if k2 in body}
        if "maxAge" in body:
            cors["maxAge"] = f"{body['maxAge']}s"
        if native_spec.get("cors", cors) != cors:
            t.refuse(f"{path}.filters[{k}]", "differs from another rule's CORS filter; Meshline applies one CORS"
                                             " policy per route: give every rule the same one, or split the route")  # fmt: skip
        native_spec["cors"] = cors
    return {**rule, "filters": kept}


def translate_attached_route(doc: Mapping[str, Any], kinds: KindRegistry, known: KnownServices) -> list[Resource]:
    from meshline.policies.translate.gateway import rule as http_rule

    t = Translation(doc, known)
    t.read_metadata()
    spec = as_mapping(doc.get("spec"), "spec", t)
    kind = str(doc.get("kind"))
    protocol = _ROUTE_PROTOCOL[kind]
    native_spec: dict[str, Any] = {"parents": _parents(t, spec), "protocol": protocol}
    if spec.get("hostnames"):
        native_spec["hostnames"] = list(as_list(spec.get("hostnames"), "spec.hostnames", t))
    if protocol in ("http", "grpc"):
        raw = [_without_cors(t, r, f"spec.rules[{i}]", native_spec) for i, r in enumerate(as_list(spec.get("rules"), "spec.rules", t))]
        rules = [http_rule(t, r, f"spec.rules[{i}]", [], protocol == "grpc") for i, r in enumerate(raw)]
        native_spec["rules"] = rules or [{"directResponse": {"status": 404}}]
    else:
        native_spec["backends"] = _l4_backends(t, spec)
    _no_others(t, spec, "spec", {"parentRefs", "hostnames", "rules"})
    native = {"kind": "MeshGatewayRoute", "mesh": t.mesh, "name": t.name, "spec": native_spec}
    return t.finish(kinds, native)
