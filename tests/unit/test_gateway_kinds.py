"""MeshGateway and MeshGatewayRoute refused with the field path and a fix (nothing Envoy would reject is stored)."""

from __future__ import annotations

from meshline.policies.gateway.api import effective_hostnames, hostname_matches
from meshline.testing.policy_kit import problems

GATEWAY = """
kind: MeshGateway
mesh: default
name: edge
spec:
  listeners:
    - {name: http, port: 8080, protocol: HTTP}
    - {name: web, port: 8443, protocol: HTTPS, hostname: web.example.test, tls: {certificates: [web]}}
"""


def _route(spec: str) -> str:
    return GATEWAY + "---\nkind: MeshGatewayRoute\nmesh: default\nname: r\nspec:\n" + spec


def test_a_good_gateway_and_route_pass() -> None:
    assert problems(_route("  parents: [{gateway: edge}]\n  rules: [{backends: [{service: web}]}]\n")) == []


def test_conflicting_protocols_on_one_port() -> None:
    found = problems("""
kind: MeshGateway
mesh: default
name: edge
spec:
  listeners:
    - {name: a, port: 8080, protocol: HTTP}
    - {name: b, port: 8080, protocol: TCP}
""")
    assert any(p.startswith("spec.listeners[1].protocol: port 8080 is also listeners[0] (HTTP)") for p in found), found


def test_same_hostname_twice_on_a_port_and_https_without_certificates() -> None:
    found = problems("""
kind: MeshGateway
mesh: default
name: edge
spec:
  listeners:
    - {name: a, port: 8443, protocol: HTTPS, hostname: a.test, tls: {certificates: [a]}}
    - {name: b, port: 8443, protocol: HTTPS, hostname: a.test}
""")
    assert any(p.startswith("spec.listeners[1].hostname: listeners[0] on port 8443 serves the same hostname") for p in found)
    assert any(p.startswith("spec.listeners[1].tls.certificates: an HTTPS listener terminates TLS") for p in found)


def test_a_parent_naming_no_gateway_or_no_listener() -> None:
    found = problems(_route("  parents: [{gateway: egde}]\n  rules: [{backends: [{service: web}]}]\n"))
    assert found == ["spec.parents[0].gateway: no MeshGateway (or Gateway) 'egde' in mesh default (known: edge);"
                     " apply the gateway first, or fix the name"]
    found = problems(_route("  parents: [{gateway: edge, listener: https}]\n  rules: [{backends: [{service: web}]}]\n"))
    assert found == ["spec.parents[0].listener: gateway 'edge' has no listener 'https' (its listeners: http, web)"]


def test_a_hostname_the_listener_does_not_serve() -> None:
    found = problems(_route("  parents: [{gateway: edge, listener: web}]\n  hostnames: [api.example.test]\n"
                            "  rules: [{backends: [{service: web}]}]\n"))
    assert found == ["spec.parents[0].listener: listener 'web' serves only web.example.test, none of the route's"
                     " hostnames (api.example.test); attach the route to another listener"]


def test_a_tcp_route_on_an_http_listener_and_a_backend_without_service() -> None:
    found = problems(_route("  parents: [{gateway: edge, listener: http}]\n  protocol: tcp\n  backends: [{weight: 1}]\n"))
    assert "spec.backends[0].service: name the service" in found
    found = problems(_route("  parents: [{gateway: edge, listener: http}]\n  protocol: tcp\n  backends: [{service: db}]\n"))
    assert any(p.startswith("spec.parents[0].listener: listener 'http' is HTTP and a tcp route needs TCP") for p in found)


def test_hostname_matching() -> None:
    assert hostname_matches("*.example.test", "web.example.test")
    assert not hostname_matches("*.example.test", "example.test")
    assert effective_hostnames("*.example.test", ["web.example.test", "other.test"]) == ["web.example.test"]
    assert effective_hostnames("web.example.test", ["*.example.test"]) == ["web.example.test"]
    assert effective_hostnames(None, []) == ["*"]


def test_client_validation_needs_a_ca_and_a_terminating_listener() -> None:
    found = problems("""
kind: MeshGateway
mesh: default
name: edge
spec:
  listeners:
    - {name: a, port: 8443, protocol: HTTPS, tls: {certificates: [a], clientValidation: {ca: junk}}}
""")
    assert any(p.startswith("spec.listeners[0].tls.clientValidation.ca: holds no PEM certificate") for p in found), found
    from meshline.testing.tls_certs import TestCA

    pem = TestCA.make().pem.decode().replace("\n", "\\n")
    found = problems(f"""
kind: MeshGateway
mesh: default
name: edge
spec:
  listeners:
    - {{name: p, port: 8443, protocol: TLS, tls: {{mode: Passthrough, clientValidation: {{ca: "{pem}"}}}}}}
""")
    assert any(p.startswith("spec.listeners[0].tls.clientValidation: a passthrough listener never sees") for p in found)
