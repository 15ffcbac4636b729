"""ExternalService and the mesh's passthrough settings: what `meshline apply` refuses (field
path and fix), the old boolean still read, the agent's DNS answering ExternalService hosts,
and a blocked connection explained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from meshline.agent.capture.dns_table import DnsTable
from meshline.agent.config import parse_upstreams
from meshline.core.mesh import MeshSpec
from meshline.telemetry.explain import explain
from meshline.telemetry.record import LogRecord
from meshline.testing.policy_kit import problems
from meshline.xds import names

INPUT = Path(__file__).parent.parent / "golden" / "egress" / "mesh.input.yaml"
PEM = next(d for d in yaml.safe_load_all(INPUT.read_text()) if d["name"] == "httpbin" and d["kind"] == "ExternalService")[
    "spec"]["tls"]["ca"]["pem"]  # fmt: skip


def es(**spec: Any) -> dict[str, Any]:
    return {"kind": "ExternalService", "mesh": "default", "name": "httpbin", "spec": spec}


def mesh(**tp: Any) -> dict[str, Any]:
    return {"kind": "Mesh", "name": "default", "spec": {"transparentProxy": tp}}


def test_a_host_with_tls_origination_is_accepted() -> None:
    assert problems(es(host="api.example.test", port=443, protocol="http", tls={"ca": {"pem": PEM}})) == []
    assert problems(es(address="203.0.113.0/24", port=443, protocol="tls")) == []
    assert problems(es(address="203.0.113.7", port=123)) == []


@pytest.mark.parametrize(("spec", "expected"), [
    ({"port": 443}, "spec.host: set exactly one of host (a DNS name) or address (an IP or CIDR)"),
    ({"host": "api.example.test", "address": "203.0.113.7", "port": 443}, "spec.host: set exactly one"),
    ({"host": "localhost", "port": 443}, "spec.host: 'localhost' is not a DNS name with a dot"),
    ({"host": "orders.mesh", "port": 80}, "spec.host: 'orders.mesh' is a mesh name (*.mesh)"),
    ({"address": "203.0.113.7/16", "port": 443}, "spec.address: '203.0.113.7/16' is not an IP address or CIDR"),
    ({"address": "0.0.0.0", "port": 443}, "spec.address: '0.0.0.0' is the unspecified address"),
    ({"host": "api.example.test", "port": 0}, "spec.port: must be 1-65535"),
    ({"host": "api.example.test", "port": 443, "protocol": "udp"}, "spec.protocol:"),
    ({"host": "api.example.test", "port": 443, "tls": {}}, "spec.tls.ca: "),
    ({"host": "api.example.test", "port": 443, "tls": {"ca": {}}}, "spec.tls.ca: set exactly one of pem"),
    ({"host": "api.example.test", "port": 443, "tls": {"ca": {"pem": "hello"}}}, "spec.tls.ca.pem: is not PEM certificates"),
    ({"host": "api.example.test", "port": 443, "tls": {"ca": {"file": "ca.pem"}}}, "spec.tls.ca.file: 'ca.pem' must be an absolute path"),
    ({"host": "api.example.test", "port": 443, "protocol": "tls", "tls": {"ca": {"file": "/ca.pem"}}},
     "spec.tls: protocol tls means the app speaks TLS itself"),
    ({"address": "203.0.113.7", "port": 443, "tls": {"ca": {"file": "/ca.pem"}}}, "spec.tls.serverName: is required with an address"),
    ({"host": "api.example.test", "port": 443, "tls": {"ca": {"file": "/ca.pem"}, "subjectAltNames": ["a b"]}},
     "spec.tls.subjectAltNames: 'a b' is not a DNS name"),
    ({"host": "api.example.test", "port": 443, "tsl": {}}, "spec.tsl: is not a known field; did you mean 'tls'?"),
])  # fmt: skip
def test_bad_external_services_are_refused_with_the_field_path(spec: dict[str, Any], expected: str) -> None:
    found = problems(es(**spec))
    assert any(p.startswith(expected) for p in found), found


def test_passthrough_modes_and_the_old_boolean() -> None:
    def read(**tp: Any) -> MeshSpec:
        return MeshSpec.model_validate({"transparentProxy": tp})

    assert read().transparent_proxy.passthrough == "all"
    assert read(passthrough=True).transparent_proxy.passthrough == "all"
    assert read(passthrough=False).transparent_proxy.passthrough == "declared"  # it refused what was not the mesh
    assert read(passthrough="none").transparent_proxy.passthrough == "none"
    ok = mesh(passthrough="declared", allow=[{"domain": "*.example.com"}, {"ip": "192.0.2.1", "port": 5432},
                                             {"cidr": "198.51.100.0/24"}])  # fmt: skip
    assert problems(ok) == []


@pytest.mark.parametrize(("tp", "expected"), [
    ({"passthrough": "some"}, "spec.transparentProxy.passthrough: "),
    ({"allow": [{"cidr": "10.0.0.0/8"}]}, "spec.transparentProxy: allow lists destinations let through with passthrough: "
                                          "declared; passthrough is all"),
    ({"passthrough": "declared", "allow": [{}]}, "spec.transparentProxy.allow[0]: set exactly one of domain, ip or cidr"),
    ({"passthrough": "declared", "allow": [{"cidr": "10.0.0.1/8"}]}, "spec.transparentProxy.allow[0].cidr: '10.0.0.1/8' is not a CIDR"),
    ({"passthrough": "declared", "allow": [{"domain": "*"}]}, "spec.transparentProxy.allow[0].domain: '*' is not a domain"),
    ({"passthrough": "declared", "allow": [{"ip": "10.0.0.0/8"}]}, "spec.transparentProxy.allow[0].ip: '10.0.0.0/8' is not an IP"),
    ({"passthrough": "declared", "allow": [{"ip": "10.0.0.1", "port": 70000}]}, "spec.transparentProxy.allow[0].port: must be"),
])  # fmt: skip
def test_bad_passthrough_settings_are_refused_with_the_field_path(tp: dict[str, Any], expected: str) -> None:
    found = problems(mesh(**tp))
    assert any(p.startswith(expected) for p in found), found


def test_an_upstream_may_name_an_external_service_by_host() -> None:
    assert [(u.service, u.port) for u in parse_upstreams(["api.example.test=15010", "httpbin=15011"])] == [
        ("api.example.test", 15010), ("httpbin", 15011)]  # fmt: skip


def test_mesh_dns_answers_an_external_services_host_with_its_vip() -> None:
    table = DnsTable()
    table.update('{"range": "240.240.0.0/16", "bare": true, "vips": {"httpbin": "240.240.0.20"},'
                 ' "hosts": {"api.example.test": "240.240.0.20"}}')  # fmt: skip
    assert table.lookup("API.example.test.") == (True, "240.240.0.20")
    assert table.lookup("httpbin.mesh") == (True, "240.240.0.20")
    assert table.lookup("other.example.test") == (False, None)


def test_a_blocked_connection_is_explained_with_where_it_was_going() -> None:
    section = f"sidecar/transparent-outbound/15001/{names.blocked_section('declared')}"
    r = LogRecord(time=0, mesh="default", dataplane="web-a", direction="outbound", protocol="tcp", flags=["UH"],
                  section=section, authority="203.0.113.9:443", destination=names.BLOCKED_DESTINATION)  # fmt: skip
    assert explain(r) == "blocked: 203.0.113.9:443 is not an ExternalService of mesh default and passthrough is declared"
    r.section = f"sidecar/transparent-outbound/15001/{names.blocked_section('none')}"
    assert explain(r).startswith("blocked: 203.0.113.9:443 is outside mesh default and passthrough is none")


def test_a_type_left_without_resources_is_not_waited_for() -> None:
    """An explicit sidecar whose one EDS cluster (an ExternalService via the egress gateway) turns
    into a DNS cluster watches no endpoints any more; Envoy takes the empty EDS response without an
    ACK, so `apply --wait` must not wait for one (seen in tests/e2e/test_egress.py)."""
    from envoy.config.cluster.v3 import cluster_pb2

    from meshline.xds.snapshot import CLUSTER, ENDPOINT, Snapshot, pack

    snap = Snapshot.build({CLUSTER: [pack("httpbin", cluster_pb2.Cluster(name="httpbin"))], ENDPOINT: []})
    assert set(snap.versions()) == {"CDS", "EDS"}
    assert set(snap.versions_to_ack()) == {"CDS"}


def test_a_ca_bundle_whose_certificates_all_expired_is_refused() -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old CA")])
    then = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(then).not_valid_after(then + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))  # fmt: skip
    old = cert.public_bytes(serialization.Encoding.PEM).decode()
    found = problems(es(host="api.example.test", port=443, tls={"ca": {"pem": old}}))
    assert found == ["spec.tls.ca.pem: every certificate in it has expired (the latest on 2020-01-31); paste a current"
                     " CA bundle"], found  # fmt: skip


def test_failures_to_an_external_service_say_what_to_check() -> None:
    from meshline.telemetry.explain import ExplainContext

    tls = LogRecord(time=0, mesh="default", dataplane="web-a", direction="outbound", destination="httpbin",
                    flags=["UF"], upstream_host="203.0.113.9:443",
                    transport_failure="TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED")  # fmt: skip
    ctx = ExplainContext(external="api.example.com")
    assert explain(tls, ctx).endswith("; check ExternalService httpbin's spec.tls (its CA bundle and the server name"
                                      " api.example.com must present)")  # fmt: skip
    assert "check ExternalService" not in explain(tls)  # a mesh service: no such hint
    none = LogRecord(time=0, mesh="default", dataplane="web-a", direction="outbound", destination="httpbin",
                     flags=["UH"], status=503)  # fmt: skip
    assert explain(none, ctx) == ("no address for ExternalService httpbin (api.example.com): its host did not resolve,"
                                  " or passthrough is none")  # fmt: skip
    via = ExplainContext(external="api.example.com", egress_gateway="egress")
    assert explain(none, via) == ("no healthy instance of httpbin: its traffic goes through egress gateway egress,"
                                  " which has no ready instance")  # fmt: skip
