"""Gateway API HTTPRoute/GRPCRoute and SMI TrafficSplit documents -> native routes, and refusals."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshline.core.errors import ValidationError
from meshline.core.resource import Resource
from meshline.kinds import default_kinds
from meshline.policies.translate import translators
from meshline.testing.golden import load_resources, render_named

KINDS = default_kinds()
KNOWN = {"default": {"orders": "http", "orders-shadow": "http", "inventory": "http", "payments": "tcp", "web": "http"},
         "shop": {"orders": "http"}}
HERE = Path(__file__).parent


def translate(doc: dict[str, Any], known: Mapping[str, Mapping[str, str]] = KNOWN) -> list[Resource]:
    for t in translators(KINDS, lambda mesh: known.get(mesh, {})):
        out = t(doc)
        if out is not None:
            return out
    raise AssertionError("no translator took the document")


def native(doc: dict[str, Any]) -> dict[str, Any]:
    [res] = translate(doc)
    return res.to_json()


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        translate(doc)
    return [str(p) for p in info.value.problems]


def gateway(rules: list[dict[str, Any]], kind: str = "HTTPRoute", **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": kind,
            "metadata": {"name": "orders-route", "namespace": "default", **meta},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "orders", "port": 8080}], "rules": rules}}


CANARY = [{"backendRefs": [{"name": "orders-v1", "port": 8080, "weight": 90},
                           {"name": "orders-v2", "port": 8080, "weight": 10}]}]


def test_gamma_canary_becomes_a_weighted_split_over_version_subsets() -> None:
    assert native(gateway(CANARY)) == {
        "kind": "HTTPRoute", "mesh": "default", "name": "orders-route",
        "spec": {"sources": [{"match": {"service": "*"}}], "destinations": [{"match": {"service": "orders"}}],
                 "rules": [{"backends": [{"service": "orders", "tags": {"version": "v1"}, "weight": 90},
                                         {"service": "orders", "tags": {"version": "v2"}, "weight": 10}],
                            "matches": [], "mirrors": []}]},
    }


def test_translated_canary_renders_like_the_native_one(tmp_path: Path) -> None:
    mesh = (HERE / "httproute" / "mesh.input.yaml").read_text()
    [translated] = translate(gateway(CANARY))
    native_split = yaml.safe_load((HERE / "httproute" / "features" / "split.yaml").read_text())
    native_split["spec"].pop("sources")  # Gateway API routes apply to every caller
    ours = render_named([*load_resources(mesh), translated], "web-1")
    theirs = render_named([*load_resources(mesh), KINDS.decode(native_split)], "web-1")
    # same listeners, clusters and endpoints; routes differ only in the route's name
    assert {k: v for k, v in ours.snapshot.versions().items() if k != "RDS"} == \
        {k: v for k, v in theirs.snapshot.versions().items() if k != "RDS"}
    assert first_route(ours) == first_route(theirs)


def first_route(result: Any) -> Any:
    from envoy.config.route.v3 import route_pb2

    slot = result.snapshot.slots[next(t for t in result.snapshot.slots if t.endswith("RouteConfiguration"))]
    table = route_pb2.RouteConfiguration()
    slot.resources["outbound_15001"].any.Unpack(table)
    route = table.virtual_hosts[0].routes[0]
    route.ClearField("name")
    return route


def test_matches_and_filters_translate_field_by_field() -> None:
    out = native(gateway([
        {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET",
                      "headers": [{"name": "x-canary", "value": "true"}],
                      "queryParams": [{"type": "RegularExpression", "name": "id", "value": "[0-9]+"}]},
                     {"path": {"type": "Exact", "value": "/healthz"}},
                     {"path": {"type": "RegularExpression", "value": "/orders/[0-9]+"}}],
         "filters": [
             {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}],
                                                                        "remove": ["x-b"]}},
             {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "x-c", "value": "2"}]}},
             {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "orders-v2"}, "percent": 20}},
             {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "orders-shadow"},
                                                         "fraction": {"numerator": 1, "denominator": 4}}},
             {"type": "URLRewrite", "urlRewrite": {"hostname": "orders.internal",
                                                   "path": {"type": "ReplaceFullPath", "replaceFullPath": "/v1/orders"}}},
         ],
         "backendRefs": [{"name": "orders", "port": 8080}],
         "timeouts": {"request": "3s"}},
        {"matches": [{"path": {"value": "/old"}}],
         "filters": [{"type": "RequestRedirect", "requestRedirect": {
             "scheme": "https", "hostname": "shop.example.com", "statusCode": 301,
             "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}}]},
        {"matches": [{"path": {"value": "/gone"}}]},
    ]))
    r0, r1, r2 = out["spec"]["rules"]
    assert r0["matches"][0] == {"path": {"prefix": "/api"}, "method": "GET",
                                "headers": [{"name": "x-canary", "exact": "true"}],
                                "queryParams": [{"name": "id", "regex": "[0-9]+"}]}
    assert r0["matches"][1:] == [{"path": {"exact": "/healthz"}, "headers": [], "queryParams": []},
                                 {"path": {"regex": "/orders/[0-9]+"}, "headers": [], "queryParams": []}]
    assert r0["requestHeaders"] == {"set": [{"name": "x-a", "value": "1"}], "add": [], "remove": ["x-b"]}
    assert r0["responseHeaders"]["add"] == [{"name": "x-c", "value": "2"}]
    assert r0["mirrors"] == [{"service": "orders", "tags": {"version": "v2"}, "percent": 20.0},
                             {"service": "orders-shadow", "tags": {}, "percent": 25.0}]
    assert r0["rewrite"] == {"path": "/v1/orders", "host": "orders.internal"}
    assert r0["timeout"] == "3s"
    assert r0["backends"] == [{"service": "orders", "tags": {}, "weight": 1}]
    assert r1["redirect"] == {"scheme": "https", "host": "shop.example.com", "path": "/new", "statusCode": 301}
    assert r2["directResponse"] == {"status": 500}  # Gateway API: a rule with no backend answers 500


def test_grpc_route_methods_become_grpc_and_regex_matches() -> None:
    out = native(gateway([
        {"matches": [{"method": {"service": "meshline.test.Echo", "method": "Echo"},
                      "headers": [{"name": "x-canary", "value": "1"}]}],
         "backendRefs": [{"name": "orders-v2"}]},
        {"matches": [{"method": {"type": "RegularExpression", "service": "meshline\\..*", "method": "Get.*"}}],
         "backendRefs": [{"name": "orders-v1"}]},
    ], kind="GRPCRoute"))
    r0, r1 = out["spec"]["rules"]
    assert r0["matches"][0]["grpc"] == {"service": "meshline.test.Echo", "method": "Echo"}
    assert r0["backends"] == [{"service": "orders", "tags": {"version": "v2"}, "weight": 1}]
    assert r1["matches"][0]["path"] == {"regex": "/(meshline\\..*)/(Get.*)"}


@pytest.mark.parametrize(
    ("meta", "mesh"),
    [({"namespace": "shop"}, "shop"), ({"namespace": "shop", "annotations": {"meshline.io/mesh": "default"}}, "default"),
     ({"namespace": None}, "default")],
)
def test_mesh_comes_from_annotation_then_namespace_then_default(meta: dict[str, Any], mesh: str) -> None:
    doc = gateway(CANARY)
    doc["metadata"].update(meta)
    assert native(doc)["mesh"] == mesh


def test_backend_name_convention() -> None:
    known = {"default": {"orders": "http", "orders-v2": "http"}}
    [res] = translate(gateway([{"backendRefs": [{"name": "orders-v2"}, {"name": "orders-beta"}, {"name": "billing"}]}]),
                      known)
    backends = res.to_json()["spec"]["rules"][0]["backends"]
    assert [(b["service"], b["tags"]) for b in backends] == [
        ("orders-v2", {}),  # a service of its own: not a subset
        ("orders", {"version": "beta"}),
        ("billing", {}),  # another service, maybe not deployed yet
    ]
    doc = gateway([{"backendRefs": [{"name": "orders-blue"}]}], annotations={"meshline.io/subset-tag": "track"})
    assert native(doc)["spec"]["rules"][0]["backends"][0]["tags"] == {"track": "blue"}
    doc = gateway([{"backendRefs": [{"name": "orders-next"}]}], annotations={"meshline.io/subset-tag": "none"})
    assert native(doc)["spec"]["rules"][0]["backends"][0] == {"service": "orders-next", "tags": {}, "weight": 1}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["spec"]["parentRefs"].append({"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "edge"}),
         "spec.parentRefs[0].kind: 'Service' parents cannot be mixed with Gateway parents"),
        (lambda d: d["spec"].update(parentRefs=[]), "spec.parentRefs: is required"),
        (lambda d: d["spec"]["parentRefs"][0].update(namespace="other"),
         "spec.parentRefs[0].namespace: refers to namespace 'other'"),
        (lambda d: d["spec"]["rules"][0]["backendRefs"][0].update(namespace="billing"),
         "spec.rules[0].backendRefs[0].namespace: refers to namespace 'billing'"),
        (lambda d: d["spec"]["rules"][0]["backendRefs"][0].update(kind="ServiceImport", group="multicluster.x-k8s.io"),
         "spec.rules[0].backendRefs[0].kind: 'ServiceImport' backends are not supported"),
        (lambda d: d["spec"]["rules"][0].update(filters=[{"type": "ExtensionRef", "extensionRef": {"name": "x"}}]),
         "spec.rules[0].filters[0].type: filter type 'ExtensionRef' cannot be translated"),
        (lambda d: d["spec"]["rules"][0].update(filters=[{"type": "CORS", "cors": {}}]),
         "spec.rules[0].filters[0].type: filter type 'CORS' cannot be translated"),
        (lambda d: d["spec"]["rules"][0].update(retry={"attempts": 2}), "spec.rules[0].retry: cannot be translated"),
        (lambda d: d["spec"]["rules"][0].update(timeouts={"backendRequest": "1s"}),
         "spec.rules[0].timeouts.backendRequest: per-attempt timeouts are not translated"),
        (lambda d: d["spec"]["rules"][0].update(timeouts={"request": "soon"}),
         "spec.rules[0].timeout: 'soon' is not a duration"),
        (lambda d: d["spec"].update(hostnames=["orders.example.com"]), "spec.hostnames: routes inside the mesh"),
        (lambda d: d["metadata"].update(name="orders.canary"), "metadata.name: 'orders.canary' cannot be a Meshline name"),
        (lambda d: d["spec"]["rules"][0].update(matches=[{"path": {"type": "Glob", "value": "/x"}}]),
         "spec.rules[0].matches[0].path.type: 'Glob' is not a path match type"),
        (lambda d: d["spec"]["rules"][0].update(matches=[{"path": {"type": "RegularExpression", "value": "/(?!a)"}}]),
         "spec.rules[0].matches[0].path.regex: is not a valid RE2 regex"),
        (lambda d: d["spec"]["rules"][0]["backendRefs"][0].update(filters=[{"type": "RequestHeaderModifier"}]),
         "spec.rules[0].backendRefs[0].filters: filters on a single backend are not supported"),
        (lambda d: d["spec"]["rules"][0]["backendRefs"][0].update(weight=0) or
         d["spec"]["rules"][0]["backendRefs"][1].update(weight=0),
         "spec.rules[0].backends: weights add up to 0"),
    ],
)
def test_what_cannot_be_translated_is_refused_with_its_path(change: Any, expected: str) -> None:
    doc = gateway([dict(r) for r in CANARY])
    doc["spec"]["rules"][0]["backendRefs"] = [dict(b) for b in CANARY[0]["backendRefs"]]
    change(doc)
    found = problems(doc)
    assert any(p.startswith(expected) for p in found), found


def split(api: str = "split.smi-spec.io/v1alpha4", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": api, "kind": "TrafficSplit", "metadata": {"name": "orders-split", "namespace": "default"},
            "spec": {"service": "orders", "backends": [{"service": "orders-v1", "weight": 90},
                                                     {"service": "orders-v2", "weight": 10}], **spec}}


def test_smi_split_becomes_an_http_route_over_subsets() -> None:
    out = native(split())
    assert out["kind"] == "HTTPRoute"
    assert out["spec"]["destinations"] == [{"match": {"service": "orders"}}]
    assert out["spec"]["rules"][0]["backends"] == [{"service": "orders", "tags": {"version": "v1"}, "weight": 90},
                                                   {"service": "orders", "tags": {"version": "v2"}, "weight": 10}]


def test_smi_v1alpha1_quantities_keep_their_ratio() -> None:
    doc = split("split.smi-spec.io/v1alpha1", backends=[{"service": "orders-v1", "weight": "900m"},
                                                       {"service": "orders-v2", "weight": "100m"}])
    assert [b["weight"] for b in native(doc)["spec"]["rules"][0]["backends"]] == [900, 100]
    doc = split("split.smi-spec.io/v1alpha1", backends=[{"service": "orders-v1", "weight": 1},
                                                       {"service": "orders-v2", "weight": "500m"}])
    assert [b["weight"] for b in native(doc)["spec"]["rules"][0]["backends"]] == [1000, 500]


def test_smi_split_of_a_tcp_service_becomes_a_tcp_route() -> None:
    out = native(split(service="payments", backends=[{"service": "payments-v1", "weight": 1},
                                                     {"service": "payments-v2", "weight": 1}]))
    assert out["kind"] == "TCPRoute"
    assert out["spec"]["backends"][1] == {"service": "payments", "tags": {"version": "v2"}, "weight": 1}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (split(matches=[{"kind": "HTTPRouteGroup", "name": "ab"}]), "spec.matches: HTTPRouteGroup/TCPRoute references"),
        (split(backends=[{"service": "orders-v1", "weight": "lots"}]), "spec.backends[0].weight: 'lots' is not a weight"),
        (split(backends=[]), "spec.backends: is required"),
        (split(service="Orders.default.svc"), "spec.service: 'Orders.default.svc' cannot be a Meshline service name"),
        (split(backends=[{"service": "orders-v1", "weight": 0}]), "spec.rules[0].backends: weights add up to 0"),
    ],
)
def test_smi_refusals(doc: dict[str, Any], expected: str) -> None:
    found = problems(doc)
    assert any(p.startswith(expected) for p in found), found


def test_native_documents_are_left_to_the_kind_registry() -> None:
    for t in translators(KINDS, lambda mesh: {}):
        assert t({"kind": "HTTPRoute", "mesh": "default", "name": "x", "spec": {}}) is None


@pytest.mark.parametrize(
    "doc",
    [{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "gw"}},
     {"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup", "metadata": {"name": "g"}}],
)
def test_other_gateway_api_and_smi_kinds_are_refused_by_name(doc: dict[str, Any]) -> None:
    found = problems(doc)
    assert found[0].startswith("kind: ") and "cannot be translated; Meshline accepts" in found[0], found
