"""Which protocol a service is rendered with (MeshSnapshot.service_protocol): its instances',
else the one they last said, else the one every outbound to it declares, else tcp."""

from __future__ import annotations

from typing import Any

from meshline.kinds import default_kinds
from meshline.render.mesh_snapshot import MeshSnapshot

KINDS = default_kinds()
MESH = KINDS.decode({"kind": "Mesh", "name": "default", "spec": {}})


def dp(name: str, service: str, protocol: str | None = None, outbound: list[dict[str, Any]] | None = None) -> Any:
    tags = {"service": service, **({"protocol": protocol} if protocol else {})}
    return KINDS.decode({"kind": "Dataplane", "mesh": "default", "name": name, "spec": {
        "address": "127.0.0.1", "inbound": [{"port": 1, "servicePort": 2, "tags": tags}], "outbound": outbound or []}})


def protocol(service: str, *dataplanes: Any, known: dict[str, str] | None = None) -> str:
    return MeshSnapshot.build(MESH, list(dataplanes), 1, known_protocols=known).service_protocol(service)


def test_instances_decide_and_disagreeing_ones_mean_tcp() -> None:
    declared = dp("web-1", "web", outbound=[{"port": 9, "service": "orders", "protocol": "grpc"}])
    assert protocol("orders", dp("o-1", "orders", "http"), declared, known={"orders": "http2"}) == "http"
    assert protocol("orders", dp("o-1", "orders", "http"), dp("o-2", "orders", "grpc")) == "tcp"


def test_without_instances_the_last_known_then_the_declared_protocol() -> None:
    declared = dp("web-1", "web", outbound=[{"port": 9, "service": "orders", "protocol": "http"}])
    assert protocol("orders", declared, known={"orders": "grpc"}) == "grpc"
    assert protocol("orders", declared) == "http"
    undeclared = dp("cli-1", "cli", outbound=[{"port": 9, "service": "orders"}])
    assert protocol("orders", declared, undeclared) == "tcp"  # callers do not agree
    assert protocol("ghost", declared) == "tcp"


def test_a_changed_declaration_is_a_change_of_the_service() -> None:
    before = MeshSnapshot.build(MESH, [dp("web-1", "web", outbound=[{"port": 9, "service": "orders"}])], 1)
    web = KINDS.decode({"kind": "Dataplane", "mesh": "default", "name": "web-1", "spec": {
        "address": "127.0.0.1", "inbound": [{"port": 1, "servicePort": 2, "tags": {"service": "web"}}],
        "outbound": [{"port": 9, "service": "orders", "protocol": "http"}]}}).with_version(2)
    after = MeshSnapshot.build(MESH, [web], 2, previous=before)
    assert after.since_previous is not None and "orders" in after.since_previous.services
