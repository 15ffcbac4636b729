"""Apply-time checks against the mesh's dataplanes: refuse clear mistakes, accept services not deployed yet."""

from __future__ import annotations

from typing import Any

from meshline.core.errors import FieldProblem
from meshline.core.resource import Resource
from meshline.kinds import default_kinds
from meshline.policies.common.references import ROUTE_REFERENCES
from meshline.render.policy_kind import MeshView

KINDS = default_kinds()


def dp(name: str, service: str, protocol: str = "http", mesh: str = "default", **tags: str) -> Resource:
    return KINDS.decode({"kind": "Dataplane", "mesh": mesh, "name": name, "spec": {
        "address": "10.0.0.1", "inbound": [{"port": 18080, "servicePort": 8080,
                                           "tags": {"service": service, "protocol": protocol, **tags}}]}})


STORED = [dp("orders-v1", "orders", version="v1"), dp("orders-v2", "orders", version="v2", zone="east"),
          dp("payments-1", "payments", protocol="tcp", version="v1"), dp("shop-orders", "orders", mesh="shop", version="v9")]


def problems(res: Resource, pending: list[Resource] | None = None) -> list[FieldProblem]:
    """What the control plane's apply finds: the check over the stored mesh with the apply over it."""
    return ROUTE_REFERENCES.check(res, MeshView.build(res.mesh, STORED, [res, *(pending or [])]))


def http_route(*rules: dict[str, Any], service: str = "orders") -> Resource:
    return KINDS.decode({"kind": "HTTPRoute", "mesh": "default", "name": "r",
                         "spec": {"destinations": [{"match": {"service": service}}], "rules": list(rules)}})


def tcp_route(service: str, *backends: dict[str, Any]) -> Resource:
    return KINDS.decode({"kind": "TCPRoute", "mesh": "default", "name": "t",
                         "spec": {"destinations": [{"match": {"service": service}}], "backends": list(backends)}})


def refused(res: Resource, pending: list[Resource] | None = None) -> list[str]:
    found = problems(res, pending)
    assert found, f"{res.key} was accepted"
    return [str(p) for p in found]


def test_a_subset_no_instance_of_an_existing_service_has_is_refused() -> None:
    found = refused(http_route({"backends": [{"tags": {"version": "v1"}}, {"tags": {"version": "v3"}}]}))
    assert found == ["spec.rules[0].backends[1].tags: no instance of service 'orders' has version=v3"
                     " (its instances have version=v1,v2); fix the tags or start such an instance first"]


def test_mirror_subsets_are_checked_too() -> None:
    found = refused(http_route({"mirrors": [{"tags": {"version": "v2", "zone": "west"}}]}))
    assert found[0].startswith("spec.rules[0].mirrors[0].tags: no instance of service 'orders' has version=v2, zone=west")


def test_services_that_do_not_exist_yet_are_accepted() -> None:
    assert problems(http_route({"backends": [{"tags": {"version": "v2"}}]}, service="checkout")) == []
    assert problems(http_route({"backends": [{"service": "orders-next", "tags": {"version": "v1"}}]})) == []


def test_instances_in_the_same_apply_count() -> None:
    route = http_route({"backends": [{"tags": {"version": "v3"}}]})
    assert problems(route, [dp("orders-v3", "orders", version="v3")]) == []
    # ... but only in the route's own mesh
    assert refused(route, [dp("orders-v3", "orders", mesh="shop", version="v3")])


def test_a_route_kind_that_can_never_apply_to_the_service_protocol_is_refused() -> None:
    assert refused(http_route({"backends": [{"tags": {"version": "v1"}}]}, service="payments"))[0].startswith(
        "spec.destinations[0]: service 'payments' speaks tcp, so an HTTPRoute never applies to it; use a TCPRoute")
    assert refused(tcp_route("orders", {"tags": {"version": "v1"}}))[0].startswith(
        "spec.destinations[0]: service 'orders' speaks http, so a TCPRoute never applies to it")
    assert problems(tcp_route("payments", {"tags": {"version": "v1"}})) == []


def test_other_kinds_are_not_checked() -> None:
    assert problems(STORED[0]) == []
