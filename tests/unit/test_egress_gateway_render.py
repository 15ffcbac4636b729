"""The egress gateway enforces TrafficPermissions whose destination is an ExternalService."""

from __future__ import annotations

from pathlib import Path

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2

from meshline.policies.trafficpermission.decision import connection_decision
from meshline.render.render import RenderResult
from meshline.telemetry.explain import ExplainContext, explain
from meshline.telemetry.record import LogRecord
from meshline.testing.golden import load_resources, render_named
from meshline.testing.policy_kit import envoy_accepts
from meshline.xds.snapshot import LISTENER

MESH = """
kind: Mesh
name: default
spec: {mtls: {mode: strict}, egress: {gateway: egress}, defaultPermission: allow}
---
kind: Dataplane
mesh: default
name: egress-1
spec:
  address: 127.0.0.5
  proxy: egress-gateway
  inbound: [{port: 10002, tags: {service: egress}}]
---
kind: Dataplane
mesh: default
name: web-1
spec:
  address: 127.0.0.1
  inbound: [{port: 18080, servicePort: 8080, tags: {service: web, protocol: http}}]
---
kind: ExternalService
mesh: default
name: httpbin
spec: {host: api.example.test, port: 443, protocol: tls}
---
kind: ExternalService
mesh: default
name: partner
spec: {host: api.partner.test, port: 443, protocol: tls}
"""
DENY = """
---
kind: TrafficPermission
mesh: default
name: no-httpbin-for-web
spec:
  sources: [{match: {service: web}}]
  destinations: [{match: {service: httpbin}}]
  action: deny
"""


def rendered(extra: str = "", mesh_text: str = MESH) -> RenderResult:
    return render_named(load_resources(mesh_text + extra), "egress-1")


def chain_rbac(result: RenderResult) -> dict[str, rbac_pb2.RBAC | None]:
    """ExternalService chain -> its network RBAC filter's config (None: no filter)."""
    (packed,) = result.snapshot.slots[LISTENER].resources.values()
    lst = listener_pb2.Listener()
    packed.any.Unpack(lst)
    out: dict[str, rbac_pb2.RBAC | None] = {}
    for chain in lst.filter_chains:
        rbac = next((f for f in chain.filters if f.name == "envoy.filters.network.rbac"), None)
        cfg = None
        if rbac is not None:
            cfg = rbac_pb2.RBAC()
            rbac.typed_config.Unpack(cfg)
        out[chain.name.rsplit("_", 1)[-1]] = cfg
    return out


def test_a_deny_on_an_external_service_guards_its_chain_on_the_egress_gateway(tmp_path: Path) -> None:
    assert chain_rbac(rendered()) == {"httpbin": None, "partner": None}  # nothing to deny: no filter
    result = rendered(DENY)
    rbac = chain_rbac(result)
    assert rbac["partner"] is None  # the other ExternalService is not touched
    guard = rbac["httpbin"]
    assert guard is not None and guard.rules.action == guard.rules.DENY
    (policy,) = guard.rules.policies.values()
    assert "spiffe://" in str(policy) and "/default/web" in str(policy)  # the caller's identity decides
    # inspect names the policy on the gateway
    assert any(a.kind == "TrafficPermission" and a.name == "no-httpbin-for-web" for a in result.applied)
    envoy_accepts(result, tmp_path, node="default.egress-1", cluster="egress")


def test_a_strict_mesh_lets_out_only_what_a_permission_allows() -> None:
    """Strict mTLS defaults to deny, for ExternalServices as for mesh services."""
    allow = DENY.replace("no-httpbin-for-web", "web-to-partner").replace("httpbin", "partner").replace(
        "action: deny", "action: allow")
    result = rendered(allow, MESH.replace(", defaultPermission: allow", ""))
    rbac = chain_rbac(result)
    httpbin, partner = rbac["httpbin"], rbac["partner"]
    assert httpbin is not None and httpbin.rules.action == httpbin.rules.DENY  # the mesh default refuses it
    assert set(httpbin.rules.policies) == {"mesh_default"}
    # refused unless the caller is web (compiled as: deny every principal but web's)
    assert partner is not None and set(partner.rules.policies) == {"mesh_default"}
    assert "not_id" in str(partner.rules) and "/default/web" in str(partner.rules)
    assert "/default/web" not in str(httpbin.rules)


def test_a_refused_call_through_the_gateway_is_explained_with_the_deciding_policy() -> None:
    resources = load_resources(MESH + DENY)
    policies = [r for r in resources if r.kind == "TrafficPermission"]
    assert connection_decision(policies, {"service": "httpbin"}, "allow", False, "web") == ("deny", "no-httpbin-for-web")
    assert connection_decision(policies, {"service": "httpbin"}, "allow", False, "orders") == ("allow", None)
    assert connection_decision(policies, {"service": "partner"}, "deny", False, "web") == ("deny", None)
    reset = LogRecord(time=0, mesh="default", dataplane="web-1", direction="outbound", source="web",
                      destination="httpbin", flags=["UC"], status=503, upstream_host="10.0.0.5:10002")  # fmt: skip
    via = ExplainContext(external="api.example.test:443", egress_gateway="egress",
                         egress_refused_by="TrafficPermission no-httpbin-for-web")  # fmt: skip
    assert explain(reset, via) == "refused by egress gateway egress: TrafficPermission no-httpbin-for-web denies web -> httpbin"
    # a reset nothing refuses stays what it was
    assert explain(reset, ExplainContext(egress_gateway="egress")) == "httpbin (10.0.0.5:10002) closed the connection before answering"
