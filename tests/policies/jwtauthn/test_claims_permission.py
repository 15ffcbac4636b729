"""TrafficPermission rules on JWT claims: RBAC reads jwt_authn's verified payload (dynamic
metadata), the real Envoy accepts it, and a bad claim name is refused."""

from __future__ import annotations

from pathlib import Path

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from meshline.testing.golden import load_resources, render_named
from meshline.testing.policy_kit import envoy_accepts, problems
from meshline.xds.snapshot import LISTENER

HERE = Path(__file__).parent
PERMISSION = """
---
kind: TrafficPermission
mesh: default
name: api-admins
spec:
  sources: [{match: {service: edge}}]
  destinations: [{match: {service: api}}]
  action: allow
  rules: [{claims: [{name: role, value: admin}]}, {claims: [{name: realm.groups, value: ops}]}]
"""


def test_claims_are_read_from_the_verified_payload(tmp_path: Path) -> None:
    result = render_named(load_resources((HERE / "mesh.input.yaml").read_text() + PERMISSION), "api-1")
    envoy_accepts(result, tmp_path, node="default.api-1", cluster="api")
    [packed] = result.snapshot.slot(LISTENER).resources.values()
    assert b"jwt_payload" in packed.any.value
    # jwt_authn runs before RBAC: the payload is there when the permission is checked
    lst = listener_pb2.Listener()
    packed.any.Unpack(lst)
    hcm = hcm_pb2.HttpConnectionManager()
    lst.filter_chains[0].filters[-1].typed_config.Unpack(hcm)
    names = [f.name for f in hcm.http_filters]
    assert names.index("envoy.filters.http.jwt_authn") < names.index("envoy.filters.http.rbac"), names


def test_a_bad_claim_name_is_refused() -> None:
    doc = PERMISSION.replace("name: role", "name: 'role admin'")
    found = problems((HERE / "mesh.input.yaml").read_text() + doc)
    assert any("spec.rules[0].claims[0].name" in p and "is not a claim name" in p for p in found), found
