"""Resource validation: good documents pass; each bad one names the field and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from meshline.core.errors import ValidationError
from meshline.kinds import default_kinds

KINDS = default_kinds()


def dp(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"address": "10.0.0.5", "inbound": [{"port": 18080, "servicePort": 8080,
                                                               "tags": {"service": "orders", "version": "v1"}}]}
    base.update(spec)
    return {"kind": "Dataplane", "mesh": "default", "name": "orders-1", "spec": base}


def problems(doc: Any) -> list[str]:
    with pytest.raises(ValidationError) as info:
        KINDS.decode(doc)
    return [str(p) for p in info.value.problems]


def test_a_good_dataplane_decodes() -> None:
    res = KINDS.decode(dp(outbound=[{"port": 15001, "service": "inventory"}]))
    assert res.key.name == "orders-1" and res.mesh == "default"
    assert res.spec.services() == ["orders"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (dp(inbound=[{"port": 70000, "servicePort": 8080, "tags": {"service": "a"}}]),
         "spec.inbound[0].port: must be 1-65535"),
        (dp(inbound=[{"port": 1, "tags": {"version": "v1"}}]), "spec.inbound[0].tags: must include 'service'"),
        (dp(address="not-an-ip"), "spec.address: 'not-an-ip' is not an IP address"),
        (dp(inbound=[]), "spec.inbound: list should have at least 1 item"),
        (dp(outbound=[{"port": 18080, "service": "x", "address": "10.0.0.5"}]),
         "spec.outbound[0].port: port 18080 on 10.0.0.5 is already used by spec.inbound[0].port"),
        (dp(inbound=[{"port": 1, "servicePort": 2, "tags": {"service": "a", "protocol": "smtp"}}]),
         "spec.inbound[0].tags: tag protocol 'smtp' must be one of http, http2, grpc, tcp"),
        (dp(bogus=1), "spec.bogus: is not a known field"),
        ({"kind": "Dataplane", "name": "x", "spec": {}}, "mesh: is required for Dataplane"),
        ({"kind": "Mesh", "name": "Bad_Name"}, "name: must be 1-63 lowercase letters"),
        ({"kind": "Mesh", "name": "m", "spec": {"mtls": {"mode": "sometimes"}}}, "spec.mtls.mode: input should be"),
        ({"kind": "Mesh", "name": "m", "spec": {"mtls": {"certLifetime": "soon"}}},
         "spec.mtls.certLifetime: 'soon' is not a duration"),
        ({"kind": "Mesh", "name": "m", "spec": {"mtls": {"certLifetime": "10s"}}},
         "spec.mtls.certLifetime: must be at least 1m"),
    ],
)
def test_bad_documents_name_the_field(doc: Any, expected: str) -> None:
    found = problems(doc)
    assert any(p.startswith(expected) for p in found), found


def test_unknown_kind_lists_known_kinds() -> None:
    found = problems({"kind": "Gizmo", "name": "x"})
    assert "unknown kind 'Gizmo'" in found[0] and "Dataplane" in found[0]


def test_every_problem_is_reported_at_once() -> None:
    doc = dp(address="nope", inbound=[{"port": 0, "tags": {}}])
    assert len(problems(doc)) >= 3
