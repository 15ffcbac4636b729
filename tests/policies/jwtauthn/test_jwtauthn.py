"""JWTAuthentication: the jwt_authn filter on a gateway's entry listener and on a sidecar's
inbound (goldens per section shaped; the real Envoy accepts each), and bad input refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshline.testing.golden import load_resources, render_named
from meshline.testing.policy_kit import check_policy_goldens, envoy_accepts, problems

HERE = Path(__file__).parent
KINDS = frozenset({"JWTAuthentication"})


@pytest.mark.parametrize(("dataplane", "service"), [("edge-1", "edge"), ("api-1", "api")])
def test_golden_and_envoy_accepts(dataplane: str, service: str, tmp_path: Path) -> None:
    resources = load_resources((HERE / "mesh.input.yaml").read_text())
    result = render_named(resources, dataplane)
    baseline = render_named([r for r in resources if r.kind not in KINDS], dataplane)
    check_policy_goldens(result, baseline, KINDS, HERE / "golden", dataplane)
    envoy_accepts(result, tmp_path / "envoy", node=f"default.{dataplane}", cluster=service)


def _doc(**conf: object) -> dict[str, object]:
    return {"kind": "JWTAuthentication", "mesh": "default", "name": "j", "spec": {
        "destinations": [{"match": {"service": "web"}}], "conf": {"issuer": "https://i.test", **conf}}}  # fmt: skip


@pytest.mark.parametrize(("conf", "expected"), [
    ({"jwks": {}}, "spec.conf.jwks: give exactly one of inline"),
    ({"jwks": {"inline": "{}"}}, "spec.conf.jwks: inline must be a JWKS document"),
    ({"jwks": {"uri": "http://i.test/jwks"}}, "spec.conf.jwks: 'http://i.test/jwks' must be an https:// URL"),
    ({"jwks": {"file": "jwks.json"}}, "spec.conf.jwks: file must be an absolute path"),
    ({"jwks": {"file": "/j.json"}, "claimToHeaders": [{"claim": "sub", "header": "authorization"}]},
     "spec.conf.claimToHeaders[0].header: 'authorization' cannot carry a claim"),
])  # fmt: skip
def test_bad_input_is_refused_with_the_field(conf: dict[str, object], expected: str) -> None:
    found = problems(_doc(**conf))
    assert any(p.startswith(expected) for p in found), found


def test_a_jwks_uri_on_a_gateway_with_two_ports_renders(tmp_path: Path) -> None:
    """Each entry listener gets its own JWKS cluster (their metadata differ per section)."""
    text = (HERE / "mesh.input.yaml").read_text()
    text = text.replace("inbound: [{port: 8443, tags: {service: edge}}]",
                        "inbound: [{port: 8443, tags: {service: edge}}, {port: 8080, tags: {service: edge}}]")
    text = text.replace("    - {name: web, port: 8443,", "    - {name: http, port: 8080, protocol: HTTP}\n    - {name: web, port: 8443,")
    text = text.replace("destinations: [{match: {service: api}}]", "destinations: [{match: {service: edge}}]")
    text = text.replace("  destinations: [{match: {service: edge}}]\n  conf:\n    issuer: https://login.example.test\n"
                        "    audiences: [web]", "  destinations: [{match: {service: web}}]\n  conf:\n"
                        "    issuer: https://login.example.test\n    audiences: [web]")  # fmt: skip
    result = render_named(load_resources(text), "edge-1")
    clusters = set(result.snapshot.slot("type.googleapis.com/envoy.config.cluster.v3.Cluster").resources)
    assert {"jwks_api-users_8080", "jwks_api-users_8443"} <= clusters, clusters
    envoy_accepts(result, tmp_path / "envoy", node="default.edge-1", cluster="edge")
