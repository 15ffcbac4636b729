"""Egress rendering: ExternalServices (TLS originated by the sidecar, an address, a CIDR)
reached by a transparent and an explicit caller, and a mesh that lets through only what it
declares plus an allow list; goldens, and the real Envoy's verdict on each rendering."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshline.render.render import RenderResult
from meshline.testing.golden import check_golden, load_resources, render_named
from meshline.testing.policy_kit import envoy_accepts as kit_envoy_accepts
from meshline.xds import names
from meshline.xds.snapshot import CLUSTER, LISTENER, ROUTE

HERE = Path(__file__).parent
INPUT = HERE / "mesh.input.yaml"
DATAPLANES = ["web-1", "legacy-1", "egress-1"]


def _render(dataplane: str, text: str | None = None) -> RenderResult:
    return render_named(load_resources(text or INPUT.read_text()), dataplane)


def _listener(result: RenderResult, name: str) -> listener_pb2.Listener:
    lst = listener_pb2.Listener()
    result.snapshot.slots[LISTENER].resources[name].any.Unpack(lst)
    return lst


def _cluster(result: RenderResult, name: str) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster()
    result.snapshot.slots[CLUSTER].resources[name].any.Unpack(c)
    return c


@pytest.mark.parametrize("dataplane", DATAPLANES)
def test_golden(dataplane: str) -> None:
    check_golden(INPUT, dataplane, HERE / "golden" / f"{dataplane}.golden.yaml")


@pytest.mark.parametrize("dataplane", DATAPLANES)
def test_envoy_accepts(dataplane: str, tmp_path: Path) -> None:
    kit_envoy_accepts(_render(dataplane), tmp_path, node=names.node_id("default", "validate"), cluster="validate")


def test_the_sidecar_originates_tls_to_the_host_and_verifies_it_by_ca_and_san() -> None:
    c = _cluster(_render("web-1"), "httpbin")
    assert c.type == cluster_pb2.Cluster.STRICT_DNS
    address = c.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("api.example.test", 443)
    ctx = tls_pb2.UpstreamTlsContext()
    c.transport_socket.typed_config.Unpack(ctx)
    assert ctx.sni == "api.example.test"
    validation = ctx.common_tls_context.validation_context
    assert "BEGIN CERTIFICATE" in validation.trusted_ca.inline_string
    assert [m.matcher.exact for m in validation.match_typed_subject_alt_names] == ["api.example.test"]
    assert not ctx.common_tls_context.tls_certificate_sds_secret_configs  # no mesh identity shown outside


def test_transparent_chains_route_the_vip_the_address_and_the_cidr_and_block_the_rest() -> None:
    result = _render("web-1")
    lst = _listener(result, names.TRANSPARENT_OUTBOUND_LISTENER)
    chains = {c.name: c.filter_chain_match for c in lst.filter_chains}
    for port in (80, 443):  # http://api.example.test/ (the sidecar speaks TLS) and :443
        m = chains[f"outbound_httpbin_external_{port}"]
        assert [p.address_prefix for p in m.prefix_ranges] == ["240.240.0.20"] and m.destination_port.value == port
    ntp = chains["outbound_ntp_external_123"]
    assert (ntp.prefix_ranges[0].address_prefix, ntp.prefix_ranges[0].prefix_len.value) == ("203.0.113.7", 32)
    cidr = chains["outbound_partners_external_443"]
    assert (cidr.prefix_ranges[0].address_prefix, cidr.prefix_ranges[0].prefix_len.value) == ("203.0.113.64", 26)
    assert _cluster(result, "partners").type == cluster_pb2.Cluster.ORIGINAL_DST
    allowed = [chains[f"passthrough_allow_{i}"] for i in range(3)]
    assert allowed[0].prefix_ranges[0].prefix_len.value == 24
    assert allowed[1].destination_port.value == 5432
    assert list(allowed[2].server_names) == ["*.allowed.example"] and allowed[2].transport_protocol == "tls"
    # Envoy never falls back from a port with chains of its own: an entry without a port is
    # repeated on each (443 has the ExternalServices' chains)
    assert chains["passthrough_allow_2_443"].destination_port.value == 443
    assert "passthrough_allow_1_443" not in chains  # that one names its port
    assert lst.default_filter_chain.name == names.BLOCKED_LISTENER
    assert _cluster(result, names.BLOCKED_CLUSTER).load_assignment.endpoints == []
    assert "envoy.filters.listener.tls_inspector" in [f.name for f in lst.listener_filters]  # for the domain
    dns = lst.metadata.filter_metadata["meshline"]["dns"]
    assert '"hosts": {"api.example.test": "240.240.0.20"}' in dns
    kinds = {(a.kind, a.name) for a in result.applied}
    assert {("Timeout", "httpbin-timeout"), ("Retry", "httpbin-retry")} <= kinds


def test_an_explicit_outbound_by_host_reaches_the_external_service_with_its_policies() -> None:
    result = _render("legacy-1")
    assert "httpbin" in result.snapshot.slots[CLUSTER].resources
    route = result.snapshot.slots[ROUTE].resources[names.outbound_route(15010)]
    assert route.name == "outbound_15010"
    kinds = {(a.kind, a.name) for a in result.applied}
    assert {("Timeout", "httpbin-timeout"), ("Retry", "httpbin-retry")} <= kinds


@pytest.mark.parametrize(("mode", "chain"), [("all", names.PASSTHROUGH_CLUSTER), ("none", names.BLOCKED_LISTENER)])
def test_passthrough_all_passes_the_rest_and_none_blocks_external_services_too(mode: str, chain: str) -> None:
    text = INPUT.read_text().split("\n---\n", 1)[1]
    result = _render("web-1", f"kind: Mesh\nname: default\nspec: {{transparentProxy: {{passthrough: {mode}}}}}\n---\n{text}")
    lst = _listener(result, names.TRANSPARENT_OUTBOUND_LISTENER)
    assert lst.default_filter_chain.name == chain
    external = [c.name for c in lst.filter_chains if "_external_" in c.name]
    assert bool(external) == (mode == "all")


def _with_gateway() -> str:
    text = INPUT.read_text()
    return text.replace("spec:\n  transparentProxy:", "spec:\n  egress: {gateway: egress}\n  transparentProxy:", 1)


def test_with_an_egress_gateway_sidecars_send_external_traffic_to_it_over_mtls(tmp_path: Path) -> None:
    result = _render("web-1", _with_gateway())
    c = _cluster(result, "httpbin")
    assert c.type == cluster_pb2.Cluster.EDS  # the gateway's instances
    ctx = tls_pb2.UpstreamTlsContext()
    c.transport_socket.typed_config.Unpack(ctx)
    assert ctx.sni == "httpbin.default.external"
    sans = ctx.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names
    assert [m.matcher.exact for m in sans] == ["spiffe://meshline.local/default/egress"]
    assert _cluster(result, "partners").type == cluster_pb2.Cluster.ORIGINAL_DST  # a CIDR stays direct
    kit_envoy_accepts(result, tmp_path, node=names.node_id("default", "validate"), cluster="validate")


def test_the_egress_gateway_has_a_chain_per_external_service_and_originates_tls(tmp_path: Path) -> None:
    result = _render("egress-1", _with_gateway())
    lst = _listener(result, names.egress_gateway_listener(10002))
    chains = {c.name: c for c in lst.filter_chains}
    assert set(chains) == {"egress_10002_httpbin", "egress_10002_ntp"}
    chain = chains["egress_10002_httpbin"]
    assert list(chain.filter_chain_match.server_names) == ["httpbin.default.external"]
    down = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(down)
    assert down.require_client_certificate.value  # only the mesh's sidecars
    up = tls_pb2.UpstreamTlsContext()
    _cluster(result, "httpbin").transport_socket.typed_config.Unpack(up)
    assert up.sni == "api.example.test"  # the gateway is the one that talks to the outside
    kit_envoy_accepts(result, tmp_path, node=names.node_id("default", "validate"), cluster="validate")


def test_an_egress_gateway_of_a_mesh_without_external_services_is_valid(tmp_path: Path) -> None:
    text = "\n---\n".join(d for d in INPUT.read_text().split("\n---\n") if "kind: ExternalService" not in d)
    result = _render("egress-1", text)
    lst = _listener(result, names.egress_gateway_listener(10002))
    assert not lst.filter_chains and lst.default_filter_chain.name == names.BLOCKED_LISTENER
    kit_envoy_accepts(result, tmp_path, node=names.node_id("default", "validate"), cluster="validate")


def test_a_policy_change_reaches_an_outbound_named_by_host_when_rendering_incrementally() -> None:
    """A section carried into the next snapshot must not outlive a policy of its ExternalService."""
    from meshline.render.mesh_snapshot import MeshSnapshot
    from meshline.render.render import render
    from meshline.testing.golden import plugins

    resources = load_resources(INPUT.read_text())
    without = [r for r in resources if r.kind != "Timeout"]
    mesh = next(r for r in resources if r.kind == "Mesh")
    first = MeshSnapshot.build(mesh, [r for r in without if r.mesh], revision=1)
    before = render(first.dataplanes["legacy-1"], first, plugins())
    second = MeshSnapshot.build(mesh, [r for r in resources if r.mesh], revision=2, previous=first)
    after = render(second.dataplanes["legacy-1"], second, plugins(), previous=before)
    assert ("Timeout", "httpbin-timeout") in {(a.kind, a.name) for a in after.applied}
    assert after.snapshot.versions() == _render("legacy-1").snapshot.versions()
